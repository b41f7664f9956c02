//! A stream's [`State`] in a file, so that it outlives the process: a
//! monitor killed between two hours resumes every bed where it was, instead
//! of scoring the next hour as a fresh admission (silently wrong).
//!
//! The file is safetensors: `h` `[L·D, B, Hout]` and, for an LSTM, `c`
//! `[L·D, B, H]`, in the state's own dtype (a round trip is bit-exact);
//! the metadata names the model (`rnn_kernels.model`, its configuration in
//! words, and `rnn_kernels.weights`, a fingerprint of every parameter), so
//! that a state is never resumed on another model, and may hold the
//! caller's own tensors and keys beside it (a ward's beds, say). It is
//! written as the crate writes every file: a synced temporary renamed over
//! the old file, so a crash leaves the previous state or the new one,
//! never a torn one.

use crate::element::Element;
use crate::error::{Error, Result};
use crate::sequence::{c_shape, h_shape, State};
use crate::tensor_file::{self, OwnedTensor, StoredDtype, TensorFile};
use crate::weights::{describe, Weights};
use std::collections::HashMap;
use std::path::Path;

const FORMAT_KEY: &str = "rnn_kernels.format";
const FORMAT: &str = "state/1";
const MODEL_KEY: &str = "rnn_kernels.model";
const WEIGHTS_KEY: &str = "rnn_kernels.weights";

/// What a caller keeps beside a state in its file.
#[derive(Default)]
pub struct Extra {
    /// Tensors (any name but `h` and `c`).
    pub tensors: Vec<(String, OwnedTensor)>,
    /// Metadata (any key not starting `rnn_kernels.`).
    pub metadata: HashMap<String, String>,
}

impl<T: Element> State<T> {
    /// Writes the state of a model with `weights` to `path` (whole or not
    /// at all), with `extra` beside it.
    pub fn save<W: Element>(&self, path: impl AsRef<Path>, weights: &Weights<W>, extra: Extra) -> Result<()> {
        let path = path.as_ref();
        let config = weights.config();
        let batch = self.h.shape().get(1).copied().unwrap_or(0);
        check_shape("h", self.h.shape(), &h_shape(config, batch))?;
        match (&self.c, config.has_cell_state()) {
            (Some(c), true) => check_shape("c", c.shape(), &c_shape(config, batch))?,
            (None, false) => {}
            (Some(_), false) => return Err(Error::invalid("state.c", "a state of this cell has no c")),
            (None, true) => return Err(Error::invalid("state.c", "an LSTM's state needs c")),
        }
        let dtype = stored_dtype::<T>();
        let mut tensors = vec![("h".to_string(), OwnedTensor::try_float("h", &self.h, dtype)?)];
        if let Some(c) = &self.c {
            tensors.push(("c".to_string(), OwnedTensor::try_float("c", c, dtype)?));
        }
        for (name, tensor) in extra.tensors {
            if name == "h" || name == "c" {
                return Err(Error::invalid(
                    name,
                    "is the state's own tensor; give yours another name",
                ));
            }
            tensors.push((name, tensor));
        }
        let mut metadata = HashMap::from([
            (FORMAT_KEY.to_string(), FORMAT.to_string()),
            (MODEL_KEY.to_string(), describe(config)),
            (WEIGHTS_KEY.to_string(), fingerprint(weights)),
        ]);
        for (key, value) in extra.metadata {
            if key.starts_with("rnn_kernels.") {
                return Err(Error::invalid(
                    key,
                    "keys starting rnn_kernels. are the state file's own",
                ));
            }
            metadata.insert(key, value);
        }
        tensor_file::write(path, &tensors, metadata)
    }

    /// Reads a state that [`State::save`] wrote for the model with
    /// `weights`; the file comes back too, for the caller's own tensors and
    /// metadata. A file of another model (another configuration, or other
    /// weights) is an error that says whose it is.
    pub fn load<W: Element>(path: impl AsRef<Path>, weights: &Weights<W>) -> Result<(State<T>, TensorFile)> {
        let path = path.as_ref();
        let file = TensorFile::open(path)?;
        let metadata = file.metadata()?;
        if metadata.get(FORMAT_KEY).map(String::as_str) != Some(FORMAT) {
            return Err(Error::file(
                path,
                "is not a state file of rnn-kernels (no rnn_kernels.format = state/1)",
            ));
        }
        let config = weights.config();
        let model = describe(config);
        let saved_model = metadata.get(MODEL_KEY).cloned().unwrap_or_default();
        if saved_model != model {
            return Err(Error::file(
                path,
                format!("holds the state of {saved_model}, not of this model ({model})"),
            ));
        }
        if metadata.get(WEIGHTS_KEY) != Some(&fingerprint(weights)) {
            return Err(Error::file(
                path,
                format!("holds the state of a {model} with other weights (another model file, or retrained)"),
            ));
        }
        let read = |name: &str| {
            file.float::<T>(name)?.ok_or_else(|| Error::Missing {
                tensor: name.into(),
                context: format!("{} is a state file without it", path.display()),
            })
        };
        let h = read("h")?;
        let batch = h.shape().get(1).copied().unwrap_or(0);
        check_shape("h", h.shape(), &h_shape(config, batch))?;
        let c = match config.has_cell_state() {
            true => {
                let c = read("c")?;
                check_shape("c", c.shape(), &c_shape(config, batch))?;
                Some(c)
            }
            false => None,
        };
        Ok((State { h, c }, file))
    }
}

fn check_shape(name: &str, found: &[usize], expected: &[usize]) -> Result<()> {
    if found != expected {
        return Err(Error::shape(
            format!("state.{name}"),
            format!("{expected:?}"),
            found,
        ));
    }
    Ok(())
}

fn stored_dtype<T: Element>() -> StoredDtype {
    if std::mem::size_of::<T>() == 8 {
        StoredDtype::F64
    } else {
        StoredDtype::F32
    }
}

/// A fingerprint of a model: its configuration and every parameter's name,
/// shape and values (rounded to f32, so that the same file loaded in f32 or
/// f64 gives the same), FNV-1a over them, in hex.
pub fn fingerprint<W: Element>(weights: &Weights<W>) -> String {
    const PRIME: u64 = 0x0000_0100_0000_01B3;
    let mut hash: u64 = 0xCBF2_9CE4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            hash = (hash ^ u64::from(b)).wrapping_mul(PRIME);
        }
    };
    let config = weights.config();
    eat(describe(config).as_bytes());
    eat(&[u8::from(config.gru_linear_before_reset)]);
    for (name, tensor) in weights.named_parameters() {
        eat(name.as_bytes());
        for &d in tensor.shape() {
            eat(&(d as u64).to_le_bytes());
        }
        for v in tensor.data() {
            eat(&(v.as_f64() as f32).to_bits().to_le_bytes());
        }
    }
    format!("{hash:016x}")
}
