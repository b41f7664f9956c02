//! Reading and writing safetensors files: named tensors in f32, f64, f16 or
//! bf16 (converted to the caller's float type), i64/i32 integer tensors, and
//! the string metadata PyTorch-side tools put in `__metadata__`.

use crate::element::Element;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use half::{bf16, f16};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The float formats a file may store tensors in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoredDtype {
    F32,
    F64,
    F16,
    BF16,
}

impl StoredDtype {
    fn safetensors(self) -> Dtype {
        match self {
            StoredDtype::F32 => Dtype::F32,
            StoredDtype::F64 => Dtype::F64,
            StoredDtype::F16 => Dtype::F16,
            StoredDtype::BF16 => Dtype::BF16,
        }
    }

    fn encode<T: Element>(self, values: &[T]) -> Vec<u8> {
        fn bytes<U: bytemuck::Pod>(values: Vec<U>) -> Vec<u8> {
            bytemuck::cast_slice(&values).to_vec()
        }
        let as_f64 = values.iter().map(|v| v.as_f64());
        match self {
            StoredDtype::F32 => bytes(as_f64.map(|v| v as f32).collect()),
            StoredDtype::F64 => bytes(as_f64.collect()),
            StoredDtype::F16 => bytes(as_f64.map(f16::from_f64).collect()),
            StoredDtype::BF16 => bytes(as_f64.map(bf16::from_f64).collect()),
        }
    }
}

impl std::str::FromStr for StoredDtype {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" | "float32" => Ok(StoredDtype::F32),
            "f64" | "float64" => Ok(StoredDtype::F64),
            "f16" | "float16" => Ok(StoredDtype::F16),
            "bf16" | "bfloat16" => Ok(StoredDtype::BF16),
            _ => Err(Error::Config(format!(
                "unknown dtype {s:?}; expected f32, f64, f16 or bf16"
            ))),
        }
    }
}

/// A safetensors file read into memory.
pub struct TensorFile {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl TensorFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let bytes = std::fs::read(&path).map_err(|e| Error::file(&path, e))?;
        let file = TensorFile { path, bytes };
        file.parsed()?; // fail at open, not at first use
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn parsed(&self) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(&self.bytes)
            .map_err(|e| Error::file(&self.path, format!("not a valid safetensors file: {e}")))
    }

    /// The `__metadata__` map (empty when the file has none).
    pub fn metadata(&self) -> Result<HashMap<String, String>> {
        let (_, metadata) = SafeTensors::read_metadata(&self.bytes)
            .map_err(|e| Error::file(&self.path, format!("not a valid safetensors file: {e}")))?;
        Ok(metadata.metadata().clone().unwrap_or_default())
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self.parsed()?.names().into_iter().map(str::to_owned).collect();
        names.sort();
        Ok(names)
    }

    pub fn shape(&self, name: &str) -> Result<Option<Vec<usize>>> {
        Ok(self.view(name)?.map(|v| v.shape().to_vec()))
    }

    fn view(&self, name: &str) -> Result<Option<TensorView<'_>>> {
        let parsed = self.parsed()?;
        let found = parsed.tensor(name).ok();
        Ok(found)
    }

    /// A float tensor by name, converted to `T`; `None` when absent.
    pub fn float<T: Element>(&self, name: &str) -> Result<Option<Tensor<T>>> {
        let Some(view) = self.view(name)? else {
            return Ok(None);
        };
        let raw = view.data();
        let values: Vec<T> = match view.dtype() {
            Dtype::F32 => decode::<f32, T>(raw, |v| v as f64),
            Dtype::F64 => decode::<f64, T>(raw, |v| v),
            Dtype::F16 => decode::<f16, T>(raw, f16::to_f64),
            Dtype::BF16 => decode::<bf16, T>(raw, bf16::to_f64),
            other => {
                return Err(Error::invalid(
                    name,
                    format!("dtype {other:?} is not a float type (expected f32, f64, f16 or bf16)"),
                ))
            }
        };
        Tensor::new(view.shape().to_vec(), values).map(Some)
    }

    /// An integer tensor by name (i64 or i32), widened to i64; `None` when absent.
    pub fn integer(&self, name: &str) -> Result<Option<(Vec<usize>, Vec<i64>)>> {
        let Some(view) = self.view(name)? else {
            return Ok(None);
        };
        let raw = view.data();
        let values = match view.dtype() {
            Dtype::I64 => read_unaligned::<i64>(raw),
            Dtype::I32 => read_unaligned::<i32>(raw).into_iter().map(i64::from).collect(),
            other => {
                return Err(Error::invalid(
                    name,
                    format!("dtype {other:?} is not an integer type (expected i64 or i32)"),
                ))
            }
        };
        Ok(Some((view.shape().to_vec(), values)))
    }
}

/// The data of a safetensors file need not be aligned for its dtype: copy out.
fn read_unaligned<U: bytemuck::Pod>(raw: &[u8]) -> Vec<U> {
    raw.chunks_exact(std::mem::size_of::<U>())
        .map(bytemuck::pod_read_unaligned)
        .collect()
}

fn decode<U: bytemuck::Pod, T: Element>(raw: &[u8], to_f64: impl Fn(U) -> f64) -> Vec<T> {
    read_unaligned::<U>(raw)
        .into_iter()
        .map(|v| T::from_f64(to_f64(v)))
        .collect()
}

/// One tensor ready to be written.
pub struct OwnedTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl OwnedTensor {
    pub fn float<T: Element>(tensor: &Tensor<T>, dtype: StoredDtype) -> Self {
        OwnedTensor {
            dtype: dtype.safetensors(),
            shape: tensor.shape().to_vec(),
            bytes: dtype.encode(tensor.data()),
        }
    }

    pub fn i64(shape: Vec<usize>, values: &[i64]) -> Self {
        OwnedTensor {
            dtype: Dtype::I64,
            shape,
            bytes: bytemuck::cast_slice(values).to_vec(),
        }
    }
}

impl safetensors::tensor::View for &OwnedTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Refuses to write `output` when it is one of `inputs` — the same file by
/// its path, through a symbolic link or as a hard link — with an error that
/// names both, so that a mistyped `--output` never destroys a model or an
/// input. Call it before computing anything.
pub fn refuse_overwrite(output: &Path, inputs: &[&Path]) -> Result<()> {
    let Ok(target) = std::fs::metadata(output) else {
        return Ok(()); // nothing there yet (or nothing readable): nothing to destroy
    };
    for input in inputs {
        if std::fs::metadata(input).is_ok_and(|m| same_file(&target, &m, output, input)) {
            return Err(Error::file(
                output,
                format!(
                    "is the same file as {}, which this run reads: refusing to overwrite it",
                    input.display()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(unix)]
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata, _: &Path, _: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

#[cfg(not(unix))]
fn same_file(_: &std::fs::Metadata, _: &std::fs::Metadata, a: &Path, b: &Path) -> bool {
    matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
}

/// Writes `tensors` and `metadata` to `path` atomically: the file appears
/// complete or not at all (a temporary sibling is renamed into place).
pub fn write(
    path: impl AsRef<Path>,
    tensors: &[(String, OwnedTensor)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let metadata = (!metadata.is_empty()).then_some(metadata);
    let views = tensors.iter().map(|(name, tensor)| (name.as_str(), tensor));
    safetensors::tensor::serialize_to_file(views, metadata, path).map_err(|e| Error::file(path, e))
}
