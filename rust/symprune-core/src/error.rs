//! The one error type of the core. Every message names the offending
//! argument (or tensor) and, where there is one, the fix.

use std::path::PathBuf;

/// Errors raised by symprune-core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An argument is out of its domain (sparsity, N:M, exponents, ...).
    #[error("{arg}: {msg}")]
    InvalidArgument { arg: String, msg: String },

    /// A buffer does not have the shape or length the operation needs.
    #[error("{arg}: expected {expected}, got {got}")]
    ShapeMismatch {
        arg: String,
        expected: String,
        got: String,
    },

    /// A weight, score or statistic is NaN or infinite. symprune refuses such
    /// input rather than guessing how to rank it.
    #[error(
        "{arg}: non-finite value {value} at row {row}, column {col}; \
         fix the checkpoint or the statistics (NaN/Inf cannot be ranked)"
    )]
    NonFinite {
        arg: String,
        row: usize,
        col: usize,
        value: f32,
    },

    /// A checkpoint file or directory is malformed, incomplete or in the way.
    /// `msg` says what is wrong and how to fix it.
    #[error("{}{}: {msg}", path.display(), tensor.as_ref().map(|t| format!(": tensor {t}")).unwrap_or_default())]
    Checkpoint {
        path: PathBuf,
        tensor: Option<String>,
        msg: String,
    },

    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn checkpoint(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.into(),
            tensor: None,
            msg: msg.into(),
        }
    }

    pub(crate) fn tensor(
        path: impl Into<PathBuf>,
        tensor: impl Into<String>,
        msg: impl Into<String>,
    ) -> Self {
        Error::Checkpoint {
            path: path.into(),
            tensor: Some(tensor.into()),
            msg: msg.into(),
        }
    }

    /// A closure that wraps an I/O error with the file it concerns.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    pub(crate) fn invalid(arg: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::InvalidArgument {
            arg: arg.into(),
            msg: msg.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
