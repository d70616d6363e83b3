//! The one error type of the core. Every message names the offending
//! argument (or tensor) and, where there is one, the fix.

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
}

impl Error {
    pub(crate) fn invalid(arg: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::InvalidArgument {
            arg: arg.into(),
            msg: msg.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
