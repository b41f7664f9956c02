//! One error type for the whole crate. Every variant names what was wrong and
//! where, so that a command-line user or a service log can act on one line.

use std::fmt;

/// A shape as it is printed in errors: `[48, 32, 6]`.
#[derive(Clone, PartialEq, Eq)]
pub struct ShapeDisplay(pub Vec<usize>);

impl fmt::Display for ShapeDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Debug for ShapeDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, thiserror::Error)]
/// Everything that can go wrong, each with a one-line message that names
/// the tensor, file or request at fault.
pub enum Error {
    /// A configuration that PyTorch would reject, or that makes no sense.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// A tensor whose shape is not the one the configuration requires.
    /// `expected` may name symbolic dimensions, e.g. `[T, B, 6]`.
    #[error("{tensor}: expected shape {expected}, found {found}")]
    Shape {
        /// Which tensor.
        tensor: String,
        /// The shape it should have.
        expected: String,
        /// The shape it has.
        found: ShapeDisplay,
    },

    /// A tensor that must be present is not.
    #[error("{tensor}: missing ({context})")]
    Missing {
        /// Which tensor.
        tensor: String,
        /// What needs it.
        context: String,
    },

    /// A tensor that is present but unusable: wrong dtype, out-of-range values, ...
    #[error("{tensor}: {message}")]
    Invalid {
        /// Which tensor.
        tensor: String,
        /// What is wrong with it.
        message: String,
    },

    /// A file that cannot be read, parsed or written. `io` is the operating
    /// system's reason when there is one (so that a binding can raise its
    /// own not-found or permission error).
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
        /// The operating system's reason, if any.
        io: Option<std::io::ErrorKind>,
    },

    /// A CUDA driver call that failed, with what was being done.
    #[error("CUDA: {0}")]
    Cuda(String),

    /// A feature this build or this machine does not provide.
    #[error("{0}")]
    Unsupported(String),

    /// Memory the request needs and the machine would not give (host or
    /// device): `what` needed it (`the output`), `detail` says of what
    /// (`[10000000, 1, 1024] f32`), `bytes` how much (None: more than an
    /// address can count).
    #[error("{what} needs {}, more than could be allocated", describe_request(*bytes, detail))]
    OutOfMemory {
        /// What needed the memory.
        what: String,
        /// Of what, e.g. a shape and dtype.
        detail: String,
        /// How many bytes; `None`: more than a `u64` counts.
        bytes: Option<u64>,
    },
}

fn describe_request(bytes: Option<u64>, detail: &str) -> String {
    let size = bytes.map_or_else(|| "more than 16 EiB".to_string(), crate::memory::human_bytes);
    if detail.is_empty() {
        size
    } else {
        format!("{size} ({detail})")
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A tensor whose shape is not `expected`.
    pub fn shape(tensor: impl Into<String>, expected: impl Into<String>, found: &[usize]) -> Self {
        Error::Shape {
            tensor: tensor.into(),
            expected: expected.into(),
            found: ShapeDisplay(found.to_vec()),
        }
    }

    /// A tensor that is present but unusable, and why.
    pub fn invalid(tensor: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid {
            tensor: tensor.into(),
            message: message.into(),
        }
    }

    /// Memory that `what` needed (of `detail`, `bytes` if it can be counted)
    /// and could not get.
    pub fn out_of_memory(what: impl Into<String>, detail: impl Into<String>, bytes: Option<usize>) -> Self {
        Error::OutOfMemory {
            what: what.into(),
            detail: detail.into(),
            bytes: bytes.map(|b| b as u64),
        }
    }

    /// This error with an out-of-memory request blamed on `what` (a tensor
    /// the caller knows by name); other errors as they are.
    pub fn needed_by(self, what: &str) -> Self {
        match self {
            Error::OutOfMemory { detail, bytes, .. } => Error::OutOfMemory {
                what: what.to_string(),
                detail,
                bytes,
            },
            other => other,
        }
    }

    /// A file that cannot be read, parsed or written, and why.
    pub fn file(path: &std::path::Path, message: impl fmt::Display) -> Self {
        Error::File {
            path: path.display().to_string(),
            message: message.to_string(),
            io: None,
        }
    }

    /// A file operation the operating system refused: `message` says what
    /// was being done (empty: the system's words alone).
    pub fn io(path: &std::path::Path, message: &str, error: &std::io::Error) -> Self {
        Error::File {
            path: path.display().to_string(),
            message: if message.is_empty() {
                error.to_string()
            } else {
                format!("{message}: {error}")
            },
            io: Some(error.kind()),
        }
    }
}
