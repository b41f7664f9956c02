//! Reading and writing safetensors files: named tensors in f32, f64, f16 or
//! bf16 (converted to the caller's float type), i64/i32 integer tensors, and
//! the string metadata PyTorch-side tools put in `__metadata__`.
//!
//! Files are handled as a careful user's tools handle them:
//! - only regular files are read (a FIFO, a device or a directory is refused
//!   at once), and never more than the file's size;
//! - a header that lists a tensor (or any key) twice is named as such;
//! - a file is written whole or not at all: into a temporary beside it
//!   (`.NAME.rnnk-tmp-PID`, recognisable if a killed process leaves it),
//!   flushed and synced, then renamed over the destination. A symbolic link
//!   is written through to its target, as `cp` does; a destination that is
//!   not a regular file is refused; a new file's mode follows the umask, an
//!   existing file keeps its mode. The temporary is removed on every error,
//!   and [`remove_temporaries`] removes those in flight (for a signal
//!   handler: `rnnk` calls it on SIGINT and SIGTERM);
//! - [`refuse_overwrite`] refuses an output that is one of the inputs.

use crate::element::Element;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use half::{bf16, f16};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The float formats a file may store tensors in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoredDtype {
    /// IEEE single precision.
    F32,
    /// IEEE double precision.
    F64,
    /// IEEE half precision.
    F16,
    /// bfloat16.
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

    /// `values` as this dtype's little-endian bytes, in one allocation;
    /// `name` names the tensor if memory is short.
    fn encode<T: Element>(self, values: &[T], name: &str) -> Result<Vec<u8>> {
        fn bytes<U: Copy, const N: usize>(
            values: impl Iterator<Item = U>,
            out: &mut Vec<u8>,
            le: impl Fn(U) -> [u8; N],
        ) {
            values.for_each(|v| out.extend_from_slice(&le(v)));
        }
        let size = match self {
            StoredDtype::F32 => 4,
            StoredDtype::F64 => 8,
            StoredDtype::F16 | StoredDtype::BF16 => 2,
        };
        let mut out = Vec::new();
        crate::memory::reserve(&mut out, values.len().saturating_mul(size), || {
            (
                format!("writing {name}"),
                format!("{} {self:?} values", values.len()),
            )
        })?;
        let as_f64 = values.iter().map(|v| v.as_f64());
        match self {
            StoredDtype::F32 => bytes(as_f64.map(|v| v as f32), &mut out, f32::to_le_bytes),
            StoredDtype::F64 => bytes(as_f64, &mut out, f64::to_le_bytes),
            StoredDtype::F16 => bytes(as_f64.map(f16::from_f64), &mut out, f16::to_le_bytes),
            StoredDtype::BF16 => bytes(as_f64.map(bf16::from_f64), &mut out, bf16::to_le_bytes),
        }
        Ok(out)
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

impl std::fmt::Debug for TensorFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TensorFile({}, {} bytes)",
            self.path.display(),
            self.bytes.len()
        )
    }
}

impl TensorFile {
    /// Reads a safetensors file: a regular file (through symbolic links),
    /// no more than its size.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let bytes = read_regular_file(&path)?;
        Self::from_bytes(path, bytes)
    }

    /// A safetensors file already in memory; `path` names it in messages.
    pub fn from_bytes(path: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self> {
        let file = TensorFile {
            path: path.into(),
            bytes,
        };
        file.check_header_keys()?;
        file.parsed()?; // fail at open, not at first use
        Ok(file)
    }

    /// Tensors already in memory (a `state_dict` handed over by a binding),
    /// as if read from a file: every check and message of a file applies;
    /// `name` stands for the path in messages.
    pub fn from_tensors(
        name: impl Into<PathBuf>,
        tensors: &[(String, OwnedTensor)],
        metadata: HashMap<String, String>,
    ) -> Result<Self> {
        let header = header(tensors, (!metadata.is_empty()).then_some(metadata));
        let size = 8 + header.len() + tensors.iter().map(|(_, t)| t.bytes.len()).sum::<usize>();
        let name = name.into();
        let mut bytes = Vec::new();
        crate::memory::reserve(&mut bytes, size, || {
            (format!("the tensors of {}", name.display()), String::new())
        })?;
        bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&header);
        for (_, tensor) in tensors {
            bytes.extend_from_slice(&tensor.bytes);
        }
        Self::from_bytes(name, bytes)
    }

    /// The header must list every key once: with a name twice, the parser
    /// keeps the last and then finds bytes no tensor covers, a message that
    /// points nowhere near the cause.
    fn check_header_keys(&self) -> Result<()> {
        let header = self
            .bytes
            .get(..8)
            .map(|n| u64::from_le_bytes(n.try_into().expect("8 bytes")))
            .and_then(|n| usize::try_from(n).ok())
            .and_then(|n| self.bytes.get(8..8usize.checked_add(n)?));
        let Some(header) = header else {
            return Ok(()); // too short: the parser says so
        };
        let mut deserializer = serde_json::Deserializer::from_slice(header);
        match serde::de::DeserializeSeed::deserialize(UniqueKeys, &mut deserializer) {
            Err(e) if e.to_string().starts_with(DUPLICATE) => {
                let key = e.to_string()[DUPLICATE.len()..]
                    .split(" at line")
                    .next()
                    .unwrap_or("")
                    .to_string();
                Err(Error::file(
                    &self.path,
                    format!("the header lists {key} twice (a tensor or key may appear once)"),
                ))
            }
            _ => Ok(()), // valid, or invalid in a way the parser reports
        }
    }

    /// Where the file was read from (a name for tensors built in memory).
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

    /// How a tensor is stored (`F32`, `BF16`, `I64`, ...), `None` when absent.
    pub fn stored_dtype(&self, name: &str) -> Result<Option<String>> {
        Ok(self.view(name)?.map(|v| format!("{:?}", v.dtype())))
    }

    /// The shape of tensor `name`, `None` if the file has no such tensor.
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
            Dtype::F32 => decode::<f32, T>(raw, name, |v| v as f64)?,
            Dtype::F64 => decode::<f64, T>(raw, name, |v| v)?,
            Dtype::F16 => decode::<f16, T>(raw, name, f16::to_f64)?,
            Dtype::BF16 => decode::<bf16, T>(raw, name, bf16::to_f64)?,
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

/// Reads `path` if it is a regular file (through symbolic links), never more
/// than the size it had when checked.
fn read_regular_file(path: &Path) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, "", &e))?;
    if !meta.is_file() {
        let message = format!(
            "is not a regular file ({}): refusing to read it",
            file_kind(&meta)
        );
        return Err(match meta.is_dir() {
            true => Error::io(
                path,
                "",
                &std::io::Error::new(std::io::ErrorKind::IsADirectory, message),
            ),
            false => Error::file(path, message),
        });
    }
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, "", &e))?;
    let mut bytes = Vec::new();
    let len = usize::try_from(meta.len()).unwrap_or(usize::MAX);
    crate::memory::reserve(&mut bytes, len, || {
        (format!("reading {}", path.display()), String::new())
    })?;
    file.take(meta.len())
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, "", &e))?;
    Ok(bytes)
}

/// What kind of file system object `meta` describes, for messages.
fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    let kind = meta.file_type();
    if kind.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO";
        }
        if kind.is_char_device() {
            return "a character device";
        }
        if kind.is_block_device() {
            return "a block device";
        }
        if kind.is_socket() {
            return "a socket";
        }
    }
    "not a regular file"
}

const DUPLICATE: &str = "duplicate key ";

/// Checks a JSON value for a key that appears twice in one object, at any depth.
struct UniqueKeys;

impl<'de> serde::de::DeserializeSeed<'de> for UniqueKeys {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for UniqueKeys {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!("{DUPLICATE}{key:?}")));
            }
            map.next_value_seed(UniqueKeys)?;
        }
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        while seq.next_element_seed(UniqueKeys)?.is_some() {}
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> std::result::Result<(), E> {
        Ok(())
    }
}

/// The data of a safetensors file need not be aligned for its dtype: copy out.
fn read_unaligned<U: bytemuck::Pod>(raw: &[u8]) -> Vec<U> {
    raw.chunks_exact(std::mem::size_of::<U>())
        .map(bytemuck::pod_read_unaligned)
        .collect()
}

/// `raw` as `U` values converted to `T`, or an error naming `name` when
/// memory is short.
fn decode<U: bytemuck::Pod, T: Element>(raw: &[u8], name: &str, to_f64: impl Fn(U) -> f64) -> Result<Vec<T>> {
    let count = raw.len() / std::mem::size_of::<U>();
    let mut values = Vec::new();
    crate::memory::reserve(&mut values, count, || {
        (format!("reading {name}"), format!("{count} {}", T::NAME))
    })?;
    values.extend(
        raw.chunks_exact(std::mem::size_of::<U>())
            .map(|v| T::from_f64(to_f64(bytemuck::pod_read_unaligned(v)))),
    );
    Ok(values)
}

/// One tensor ready to be written.
pub struct OwnedTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl OwnedTensor {
    /// `tensor` stored as `dtype` (panics where memory is short: for tests
    /// and small tensors; [`OwnedTensor::try_float`] returns the error).
    pub fn float<T: Element>(tensor: &Tensor<T>, dtype: StoredDtype) -> Self {
        Self::try_float("a tensor", tensor, dtype).expect("memory for a tensor's bytes")
    }

    /// `tensor` stored as `dtype`, or an error naming `name` when its bytes
    /// cannot be allocated.
    pub fn try_float<T: Element>(name: &str, tensor: &Tensor<T>, dtype: StoredDtype) -> Result<Self> {
        Ok(OwnedTensor {
            dtype: dtype.safetensors(),
            shape: tensor.shape().to_vec(),
            bytes: dtype.encode(tensor.data(), name)?,
        })
    }

    /// An int64 tensor (lengths, say) of `shape`.
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

/// Writes `tensors` and `metadata` to `path`, whole or not at all (see the
/// module docs for how).
pub fn write(
    path: impl AsRef<Path>,
    tensors: &[(String, OwnedTensor)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let metadata = (!metadata.is_empty()).then_some(metadata);
    let header = header(tensors, metadata);
    // Straight from the tensors to the file: no second copy of every byte
    // in memory (safetensors' serialize makes one).
    write_whole(path, |temporary| {
        let mut file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(temporary)?);
        file.write_all(&(header.len() as u64).to_le_bytes())?;
        file.write_all(&header)?;
        for (_, tensor) in tensors {
            file.write_all(&tensor.bytes)?;
        }
        file.flush()
    })
}

/// The safetensors header for `tensors` stored one after another in this
/// order: JSON, padded with spaces to a multiple of 8 bytes.
fn header(tensors: &[(String, OwnedTensor)], metadata: Option<HashMap<String, String>>) -> Vec<u8> {
    let mut entries = serde_json::Map::new();
    if let Some(metadata) = metadata {
        entries.insert("__metadata__".into(), serde_json::json!(metadata));
    }
    let mut offset = 0;
    for (name, tensor) in tensors {
        let end = offset + tensor.bytes.len();
        let entry = serde_json::json!({
            "dtype": tensor.dtype,
            "shape": tensor.shape,
            "data_offsets": [offset, end],
        });
        entries.insert(name.clone(), entry);
        offset = end;
    }
    let mut header = serde_json::to_vec(&entries).expect("a JSON map serializes");
    header.resize(header.len().next_multiple_of(8), b' ');
    header
}

/// Writes `bytes` to `path` whole or not at all: into a temporary beside the
/// destination (through symbolic links), synced, renamed over it.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    write_whole(path, |temporary| std::fs::write(temporary, bytes))
}

/// Writes `path` whole or not at all: `fill` writes the temporary beside
/// it, which is then synced and renamed over it.
fn write_whole(path: &Path, fill: impl FnOnce(&Path) -> std::io::Result<()>) -> Result<()> {
    let target = resolve_links(path)?;
    let fail = |e: std::io::Error| Error::io(path, "cannot write it", &e);
    let keep_mode = match std::fs::metadata(&target) {
        Ok(meta) if meta.is_file() => Some(meta.permissions()),
        Ok(meta) => {
            return Err(Error::file(
                path,
                format!(
                    "is not a regular file ({}): refusing to replace it",
                    file_kind(&meta)
                ),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(fail(e)),
    };
    let name = target
        .file_name()
        .ok_or_else(|| Error::file(path, "names no file to write"))?;
    let dir = match target.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let temporary = Temporary::new(dir.join(format!(
        ".{}.rnnk-tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    )));
    write_new(&temporary.0, fill, keep_mode).map_err(fail)?;
    if let Some(delay) = std::env::var("RNNK_TEST_WRITE_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        // For the tests of what a signal mid-write leaves behind.
        std::thread::sleep(std::time::Duration::from_millis(delay));
    }
    std::fs::rename(&temporary.0, &target).map_err(fail)?;
    temporary.renamed();
    // Make the rename itself durable (best effort: not every file system
    // lets a directory be opened and synced).
    if let Ok(dir) = std::fs::File::open(&dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Creates `path` anew (a leftover of a killed process with this PID is
/// replaced), has `fill` write it, syncs it, and gives it `mode` if any
/// (else the umask's).
fn write_new(
    path: &Path,
    fill: impl FnOnce(&Path) -> std::io::Result<()>,
    mode: Option<std::fs::Permissions>,
) -> std::io::Result<()> {
    let create = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
    };
    drop(match create() {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(path)?;
            create()?
        }
        other => other?,
    });
    fill(path)?;
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    if let Some(mode) = mode {
        file.set_permissions(mode)?;
    }
    file.sync_all()
}

/// `path` with every symbolic link along its last component followed (a
/// link is written through to its target, as `cp` does).
fn resolve_links(path: &Path) -> Result<PathBuf> {
    let mut current = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = std::fs::read_link(&current).map_err(|e| Error::io(path, "", &e))?;
                current = match current.parent() {
                    Some(dir) if target.is_relative() => dir.join(target),
                    _ => target,
                };
            }
            _ => return Ok(current),
        }
    }
    Err(Error::file(path, "too many levels of symbolic links"))
}

/// Removes the temporaries that processes killed while writing `path`
/// left beside it (`.NAME.rnnk-tmp-PID` of a PID that no longer runs; a
/// SIGKILL leaves no chance to remove one). Only where `/proc` says which
/// processes run; elsewhere nothing is removed.
pub fn remove_stale_temporaries(path: &Path) -> Result<()> {
    if !Path::new("/proc/self").exists() {
        return Ok(());
    }
    let target = resolve_links(path)?;
    let (Some(name), Some(dir)) = (target.file_name(), target.parent()) else {
        return Ok(());
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!(".{}.rnnk-tmp-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(pid) = file.to_str().and_then(|f| f.strip_prefix(&prefix)) else {
            continue;
        };
        let running = pid
            .parse::<u32>()
            .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if pid.bytes().all(|b| b.is_ascii_digit()) && !running {
            std::fs::remove_file(entry.path()).map_err(|e| Error::io(&entry.path(), "", &e))?;
        }
    }
    Ok(())
}

/// The temporaries being written, for [`remove_temporaries`].
static TEMPORARIES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// A temporary file that is removed when dropped, unless renamed into place.
struct Temporary(PathBuf);

impl Temporary {
    fn new(path: PathBuf) -> Self {
        TEMPORARIES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(path.clone());
        Temporary(path)
    }

    fn renamed(self) {
        forget_temporary(&self.0);
        std::mem::forget(self);
    }
}

impl Drop for Temporary {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        forget_temporary(&self.0);
    }
}

fn forget_temporary(path: &Path) {
    TEMPORARIES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|p| p != path);
}

/// Removes every temporary file a write of this process has in flight: for a
/// signal handler, before the process exits (the writes then fail, and the
/// destinations stay as they were).
pub fn remove_temporaries() {
    let paths = std::mem::take(&mut *TEMPORARIES.lock().unwrap_or_else(|e| e.into_inner()));
    for path in paths {
        let _ = std::fs::remove_file(path);
    }
}
