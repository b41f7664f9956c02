//! `rnn_kernels._native`: the crate's models for Python, on numpy arrays.
//!
//! Thin by design: arrays in, the crate's calls, arrays out. Every check and
//! message is the crate's; this file only converts. Inputs are copied while
//! the GIL is held (a borrowed numpy buffer is not safe to read once other
//! Python threads may run), the crate computes with the GIL released, and
//! outputs move into numpy without a copy.

use numpy::ndarray::{ArrayD, IxDyn};
use numpy::{
    IntoPyArray, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::{
    PyFileNotFoundError, PyIsADirectoryError, PyMemoryError, PyOSError, PyPermissionError, PyRuntimeError,
    PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use rnn_kernels::backend::{Backend, Device, TrainingState};
use rnn_kernels::cpu::OpenMp;
use rnn_kernels::facts::{load_weights, Assumed, ModelFacts};
use rnn_kernels::tensor_file::{OwnedTensor, StoredDtype};
use rnn_kernels::weights::describe;
use rnn_kernels::{
    CellKind, Error, ForwardInput, ForwardOutput, GradOutputs, Precision, RnnConfig, State, Tensor,
    TensorFile, Weights,
};
use std::collections::HashMap;
use std::io::ErrorKind;
use std::sync::{Mutex, MutexGuard};

/// See Cargo.toml: large buffers are reused across calls, not faulted in anew.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The crate's error as the Python exception a Python user expects, with
/// the crate's one-line message.
fn py_err(e: Error) -> PyErr {
    let message = e.to_string();
    match e {
        Error::File { io: Some(kind), .. } => match kind {
            ErrorKind::NotFound => PyFileNotFoundError::new_err(message),
            ErrorKind::PermissionDenied => PyPermissionError::new_err(message),
            ErrorKind::IsADirectory => PyIsADirectoryError::new_err(message),
            _ => PyOSError::new_err(message),
        },
        Error::OutOfMemory { .. } => PyMemoryError::new_err(message),
        Error::Cuda(_) | Error::Unsupported(_) => PyRuntimeError::new_err(message),
        Error::Config(_)
        | Error::Shape { .. }
        | Error::Missing { .. }
        | Error::Invalid { .. }
        | Error::File { .. } => PyValueError::new_err(message),
    }
}

/// A `state_dict` key as a parameter name.
fn state_dict_name(key: &Bound<'_, PyAny>) -> PyResult<String> {
    key.extract()
        .map_err(|_| PyTypeError::new_err(format!("state_dict: keys must be strings, found {key}")))
}

/// `obj` (a numpy array, or anything `numpy.asarray` takes) as an f32
/// tensor: floating dtypes only (float16/32/64), in C order, copied.
fn float_tensor(name: &str, obj: &Bound<'_, PyAny>) -> PyResult<Tensor<f32>> {
    let py = obj.py();
    let array = match obj.cast::<PyUntypedArray>() {
        Ok(array) => array.clone(),
        Err(_) => py
            .import("numpy")?
            .call_method1("asarray", (obj,))?
            .cast_into::<PyUntypedArray>()?,
    };
    if array.dtype().kind() != b'f' {
        return Err(PyTypeError::new_err(format!(
            "{name}: expected an array of floats, found dtype {}",
            array.dtype()
        )));
    }
    let array = match array.cast::<PyArrayDyn<f32>>() {
        Ok(array) => array.clone(),
        Err(_) => array
            .call_method1("astype", ("float32",))?
            .cast_into::<PyArrayDyn<f32>>()?,
    };
    let shape = array.shape().to_vec();
    let view = array.readonly();
    let data: Vec<f32> = match view.as_slice() {
        Ok(contiguous) => contiguous.to_vec(),
        Err(_) => view.as_array().iter().copied().collect(),
    };
    Tensor::new(shape, data).map_err(py_err)
}

/// Sequence lengths: non-negative integers (a list, a tuple or an integer
/// array).
fn lengths_arg(obj: &Bound<'_, PyAny>) -> PyResult<Vec<usize>> {
    let values: Vec<i64> = obj
        .extract()
        .map_err(|_| PyTypeError::new_err("lengths: expected a sequence of integers, one per sequence"))?;
    values
        .iter()
        .map(|&v| usize::try_from(v))
        .collect::<Result<_, _>>()
        .map_err(|_| {
            PyValueError::new_err(format!(
                "lengths: expected non-negative lengths, found {values:?}"
            ))
        })
}

/// `tensor` as a numpy array that owns its data (moved, not copied).
fn to_numpy<'py>(py: Python<'py>, tensor: Tensor<f32>) -> PyResult<Bound<'py, PyAny>> {
    let shape = IxDyn(tensor.shape());
    let array = ArrayD::from_shape_vec(shape, tensor.into_data())
        .map_err(|e| PyRuntimeError::new_err(format!("an output's shape: {e}")))?;
    Ok(array.into_pyarray(py).into_any())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic inside the crate is a bug, not a state to refuse: the data a
    // panicking call left is rewritten by the next call.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn cell_arg(cell: Option<&str>) -> PyResult<Option<CellKind>> {
    cell.map(|c| c.parse::<CellKind>()).transpose().map_err(py_err)
}

/// A forward call's inputs, converted (copied) while the GIL is held.
struct Inputs {
    x: Tensor<f32>,
    lengths: Option<Vec<usize>>,
    h0: Option<Tensor<f32>>,
    c0: Option<Tensor<f32>>,
}

impl Inputs {
    fn new(
        x: &Bound<'_, PyAny>,
        lengths: Option<&Bound<'_, PyAny>>,
        h0: Option<&Bound<'_, PyAny>>,
        c0: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        Ok(Inputs {
            x: float_tensor("input", x)?,
            lengths: lengths.map(lengths_arg).transpose()?,
            h0: h0.map(|h| float_tensor("h0", h)).transpose()?,
            c0: c0.map(|c| float_tensor("c0", c)).transpose()?,
        })
    }

    fn args(&self) -> ForwardInput<'_, f32> {
        ForwardInput {
            input: &self.x,
            lengths: self.lengths.as_deref(),
            h0: self.h0.as_ref(),
            c0: self.c0.as_ref(),
        }
    }
}

/// `(output, h_n, c_n)` as numpy arrays, `c_n` None but for an LSTM.
fn output_tuple<'py>(py: Python<'py>, out: ForwardOutput<f32>) -> PyResult<Vec<Bound<'py, PyAny>>> {
    Ok(vec![
        to_numpy(py, out.output)?,
        to_numpy(py, out.h_n)?,
        optional(py, out.c_n)?,
    ])
}

fn optional<'py>(py: Python<'py>, tensor: Option<Tensor<f32>>) -> PyResult<Bound<'py, PyAny>> {
    match tensor {
        Some(t) => to_numpy(py, t),
        None => Ok(py.None().into_bound(py)),
    }
}

/// What a training forward kept for its backward: the crate's reserve and
/// the forward's inputs. Backward may run more than once
/// (`retain_graph=True`), on the model that made it only.
#[pyclass(frozen, module = "rnn_kernels._native")]
struct Reserve {
    model: usize,
    kept: Mutex<(TrainingState, Inputs)>,
}

/// A recurrent network prepared to run: PyTorch's `nn.RNN`, `nn.LSTM` or
/// `nn.GRU` with the weights of a `state_dict`, on the CPU or a GPU.
#[pyclass(frozen, module = "rnn_kernels._native")]
struct Rnn {
    backend: Mutex<Backend>,
    config: RnnConfig,
    backend_line: String,
    assumed: Assumed,
    /// The host's OpenMP runtime whose team runs this model's CPU regions.
    openmp: Option<&'static OpenMp>,
}

impl Rnn {
    fn prepare(
        file: &TensorFile,
        prefix: Option<&str>,
        facts: ModelFacts,
        (device, threads, precision): (&str, Option<usize>, &str),
        openmp: Option<&str>,
    ) -> PyResult<Self> {
        let openmp = openmp.map(OpenMp::loaded).transpose().map_err(py_err)?;
        let device: Device = device.parse().map_err(py_err)?;
        let precision: Precision = precision.parse().map_err(py_err)?;
        let (weights, assumed) = load_weights::<f32>(file, prefix, &facts).map_err(py_err)?;
        let (backend, backend_line) =
            Backend::choose_in(device, &weights, threads, precision).map_err(py_err)?;
        Ok(Rnn {
            config: weights.config().clone(),
            backend: Mutex::new(backend),
            backend_line,
            assumed,
            openmp,
        })
    }

    /// Runs the crate's `work` with the GIL released (on the model's
    /// OpenMP team, when it has one).
    fn compute<T: Send>(&self, py: Python<'_>, work: impl FnOnce() -> T + Send) -> T {
        py.detach(|| match self.openmp {
            Some(runtime) => runtime.scope(work),
            None => work(),
        })
    }
}

fn model_facts(
    batch_first: Option<bool>,
    cell: Option<&str>,
    gru_original: Option<bool>,
    dropout: Option<f64>,
) -> PyResult<ModelFacts> {
    Ok(ModelFacts {
        batch_first,
        cell: cell_arg(cell)?,
        gru_original,
        dropout,
    })
}

#[pymethods]
impl Rnn {
    /// The network in a safetensors file (`state_dict` saved with
    /// `safetensors.torch.save_file`); `prefix` picks one module of a whole
    /// model (`"lstm"`). `precision="int8"` or `"f16"` prepares the weights
    /// in that format for inference on the CPU (the README's "Reduced
    /// precision"); such a model refuses training. `openmp`: the path of
    /// an OpenMP runtime the process has loaded (PyTorch's libgomp) whose
    /// team runs the model's CPU threads instead of the crate's pool, so
    /// that the two do not fight over the cores.
    #[staticmethod]
    #[pyo3(signature = (path, prefix=None, *, batch_first=None, cell=None, gru_original=None, dropout=None, device="auto", threads=None, precision="f32", openmp=None))]
    #[allow(clippy::too_many_arguments)]
    fn load(
        py: Python<'_>,
        path: std::path::PathBuf,
        prefix: Option<&str>,
        batch_first: Option<bool>,
        cell: Option<&str>,
        gru_original: Option<bool>,
        dropout: Option<f64>,
        device: &str,
        threads: Option<usize>,
        precision: &str,
        openmp: Option<String>,
    ) -> PyResult<Self> {
        let facts = model_facts(batch_first, cell, gru_original, dropout)?;
        let prefix = prefix.map(str::to_owned);
        let (device, precision) = (device.to_owned(), precision.to_owned());
        py.detach(move || {
            let file = TensorFile::open(&path).map_err(py_err)?;
            Rnn::prepare(
                &file,
                prefix.as_deref(),
                facts,
                (&device, threads, &precision),
                openmp.as_deref(),
            )
        })
    }

    /// The network in a `state_dict` already in memory: names to arrays
    /// (numpy arrays, or anything `numpy.asarray` takes, torch CPU tensors
    /// included).
    #[staticmethod]
    #[pyo3(signature = (state_dict, prefix=None, *, batch_first=None, cell=None, gru_original=None, dropout=None, device="auto", threads=None, precision="f32", openmp=None))]
    #[allow(clippy::too_many_arguments)]
    fn from_state_dict(
        py: Python<'_>,
        state_dict: &Bound<'_, PyDict>,
        prefix: Option<&str>,
        batch_first: Option<bool>,
        cell: Option<&str>,
        gru_original: Option<bool>,
        dropout: Option<f64>,
        device: &str,
        threads: Option<usize>,
        precision: &str,
        openmp: Option<String>,
    ) -> PyResult<Self> {
        let facts = model_facts(batch_first, cell, gru_original, dropout)?;
        let numpy = py.import("numpy")?;
        let mut tensors = Vec::with_capacity(state_dict.len());
        for (key, value) in state_dict.iter() {
            let name = state_dict_name(&key)?;
            let array = numpy
                .call_method1("asarray", (&value,))?
                .cast_into::<PyUntypedArray>()?;
            let tensor = match array.dtype().kind() {
                b'f' => OwnedTensor::float(&float_tensor(&name, &array)?, StoredDtype::F32),
                b'i' | b'u' | b'b' => {
                    let values = array
                        .call_method1("astype", ("int64",))?
                        .cast_into::<PyArrayDyn<i64>>()?;
                    let values = values.readonly();
                    let data: Vec<i64> = values.as_array().iter().copied().collect();
                    OwnedTensor::i64(values.shape().to_vec(), &data)
                }
                _ => {
                    return Err(PyTypeError::new_err(format!(
                        "{name}: expected an array of numbers, found dtype {}",
                        array.dtype()
                    )))
                }
            };
            tensors.push((name, tensor));
        }
        let prefix = prefix.map(str::to_owned);
        let (device, precision) = (device.to_owned(), precision.to_owned());
        py.detach(move || {
            let file =
                TensorFile::from_tensors("the state_dict", &tensors, HashMap::new()).map_err(py_err)?;
            Rnn::prepare(
                &file,
                prefix.as_deref(),
                facts,
                (&device, threads, &precision),
                openmp.as_deref(),
            )
        })
    }

    /// PyTorch's `forward`: `x` is `[T, B, I]` (`[B, T, I]` batch-first);
    /// `lengths` (one per sequence) run each sequence for its own length,
    /// as a `PackedSequence` does, without packing; `h0`, `c0` are
    /// `[L*D, B, H]`. Returns `(output, h_n, c_n)`, `c_n` None but for an
    /// LSTM.
    #[pyo3(signature = (x, lengths=None, h0=None, c0=None))]
    fn forward<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        lengths: Option<&Bound<'py, PyAny>>,
        h0: Option<&Bound<'py, PyAny>>,
        c0: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let inputs = Inputs::new(x, lengths, h0, c0)?;
        let out = self
            .compute(py, || lock(&self.backend).forward(&inputs.args()))
            .map_err(py_err)?;
        PyTuple::new(py, output_tuple(py, out)?)
    }

    /// The forward of training: as `forward`, with inter-layer dropout
    /// drawn from `seed` (None: no dropout, as in `eval()`), and a
    /// `Reserve` for `backward`. Returns `(output, h_n, c_n, reserve)`.
    #[pyo3(signature = (x, lengths=None, h0=None, c0=None, seed=None))]
    fn forward_train<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        lengths: Option<&Bound<'py, PyAny>>,
        h0: Option<&Bound<'py, PyAny>>,
        c0: Option<&Bound<'py, PyAny>>,
        seed: Option<u64>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let inputs = Inputs::new(x, lengths, h0, c0)?;
        let (out, state) = self
            .compute(py, || lock(&self.backend).forward_train(&inputs.args(), seed))
            .map_err(py_err)?;
        let reserve = Reserve {
            model: self as *const Rnn as usize,
            kept: Mutex::new((state, inputs)),
        };
        let mut items = output_tuple(py, out)?;
        items.push(Bound::new(py, reserve)?.into_any());
        PyTuple::new(py, items)
    }

    /// Backward through the training forward that made `reserve`:
    /// `grad_output` shaped like its output, `grad_h_n`/`grad_c_n` like
    /// `h_n`/`c_n` (None: zeros). Returns `(grad_input, grad_h0, grad_c0,
    /// grads)`, `grads` a dict of every parameter's gradient under
    /// PyTorch's name.
    #[pyo3(signature = (reserve, grad_output, grad_h_n=None, grad_c_n=None))]
    fn backward<'py>(
        &self,
        py: Python<'py>,
        reserve: &Reserve,
        grad_output: &Bound<'py, PyAny>,
        grad_h_n: Option<&Bound<'py, PyAny>>,
        grad_c_n: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        if reserve.model != self as *const Rnn as usize {
            return Err(PyValueError::new_err(
                "reserve: made by another model's forward_train; backward runs on the model that made it",
            ));
        }
        let grad_output = float_tensor("grad_output", grad_output)?;
        let grad_h_n = grad_h_n.map(|g| float_tensor("grad_h_n", g)).transpose()?;
        let grad_c_n = grad_c_n.map(|g| float_tensor("grad_c_n", g)).transpose()?;
        let grads = self
            .compute(py, || {
                let kept = lock(&reserve.kept);
                let (state, inputs) = &*kept;
                let wanted = GradOutputs {
                    output: &grad_output,
                    h_n: grad_h_n.as_ref(),
                    c_n: grad_c_n.as_ref(),
                };
                lock(&self.backend).backward(&inputs.args(), state, &wanted)
            })
            .map_err(py_err)?;
        let weights = PyDict::new(py);
        for (name, grad) in grads.weights.named_parameters() {
            weights.set_item(name, to_numpy(py, grad.clone())?)?;
        }
        let items = [
            to_numpy(py, grads.input)?,
            to_numpy(py, grads.h0)?,
            optional(py, grads.c0)?,
            weights.into_any(),
        ];
        PyTuple::new(py, items)
    }

    /// Replaces every weight (after an optimizer step, say) with the arrays
    /// of `state_dict` under PyTorch's names, without a prefix: the same
    /// configuration and shapes, repacked in place (the model's threads,
    /// workspaces and device stay). Streams made before keep their state and
    /// run the new weights.
    fn set_weights(&self, py: Python<'_>, state_dict: &Bound<'_, PyDict>) -> PyResult<()> {
        let mut named = HashMap::with_capacity(state_dict.len());
        for (key, value) in state_dict.iter() {
            let name = state_dict_name(&key)?;
            let tensor = float_tensor(&name, &value)?;
            named.insert(name, tensor);
        }
        let config = self.config.clone();
        py.detach(|| {
            let weights = Weights::from_named(config, named)?;
            lock(&self.backend).set_weights(&weights)
        })
        .map_err(py_err)
    }

    /// `batch` streams for online scoring, their state zero: each
    /// `step(x)` advances all of them by one step.
    fn streams(slf: &Bound<'_, Self>, batch: usize) -> PyResult<Streams> {
        let config = &slf.get().config;
        let state = State::try_zeros(config, batch).map_err(py_err)?;
        Ok(Streams {
            model: slf.clone().unbind(),
            state: Mutex::new(state),
            batch,
        })
    }

    /// The configuration, with PyTorch's argument names.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = &self.config;
        let dict = PyDict::new(py);
        dict.set_item("mode", c.cell.name())?;
        dict.set_item("input_size", c.input_size)?;
        dict.set_item("hidden_size", c.hidden_size)?;
        dict.set_item("num_layers", c.num_layers)?;
        dict.set_item("bias", c.bias)?;
        dict.set_item("batch_first", c.batch_first)?;
        dict.set_item("dropout", c.dropout)?;
        dict.set_item("bidirectional", c.bidirectional)?;
        dict.set_item("proj_size", c.proj_size)?;
        dict.set_item("gru_linear_before_reset", c.gru_linear_before_reset)?;
        Ok(dict)
    }

    /// `"cuda"` or `"cpu"`: where the model runs.
    #[getter]
    fn device(&self) -> &'static str {
        if lock(&self.backend).is_cuda() {
            "cuda"
        } else {
            "cpu"
        }
    }

    /// The CPU threads a call may use (0 on the GPU).
    #[getter]
    fn threads(&self) -> usize {
        lock(&self.backend).threads()
    }

    /// What neither the file nor the caller said, and was assumed:
    /// `batch_first` (False was used) and `nonlinearity` (tanh was used).
    #[getter]
    fn assumed(&self) -> Vec<&'static str> {
        let mut assumed = Vec::new();
        if self.assumed.batch_first {
            assumed.push("batch_first");
        }
        if self.assumed.nonlinearity {
            assumed.push("nonlinearity");
        }
        assumed
    }

    /// The OpenMP runtime (its library's path) whose team runs the
    /// model's CPU threads; None: the crate's own pool.
    #[getter]
    fn openmp(&self) -> Option<&str> {
        self.openmp.map(OpenMp::path)
    }

    /// One line on the network and one on where it runs.
    #[getter]
    fn info(&self) -> String {
        format!("{}\n{}", describe(&self.config), self.backend_line)
    }

    fn __repr__(&self) -> String {
        format!("Rnn({}; {})", describe(&self.config), self.backend_line)
    }
}

/// `B` streams of one model, their state kept here between steps (a
/// ward's beds, a service's sessions).
#[pyclass(frozen, module = "rnn_kernels._native")]
struct Streams {
    model: Py<Rnn>,
    state: Mutex<State<f32>>,
    batch: usize,
}

#[pymethods]
impl Streams {
    /// Advances every stream by one step: `x` is `[B, I]`; returns the last
    /// layer's new `h`, `[B, Hout]`.
    fn step<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let x = float_tensor("x", x)?;
        let model = self.model.get();
        // A fresh output each step: numpy takes it over without a copy.
        let h = model
            .compute(py, || lock(&model.backend).step(&x, &mut lock(&self.state)))
            .map_err(py_err)?;
        to_numpy(py, h)
    }

    /// Zeroes the state of streams `rows` (a new patient in a bed).
    fn reset(&self, rows: Vec<usize>) -> PyResult<()> {
        lock(&self.state).reset_rows(&rows).map_err(py_err)
    }

    /// The streams' `h`, `[L*D, B, Hout]` (a copy).
    #[getter]
    fn h<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let h = lock(&self.state).h.clone();
        to_numpy(py, h)
    }

    /// The streams' `c`, `[L*D, B, H]` (a copy), None but for an LSTM.
    #[getter]
    fn c<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let c = lock(&self.state).c.clone();
        optional(py, c)
    }

    #[getter]
    fn batch(&self) -> usize {
        self.batch
    }

    fn __len__(&self) -> usize {
        self.batch
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Rnn>()?;
    m.add_class::<Streams>()?;
    m.add_class::<Reserve>()?;
    Ok(())
}
