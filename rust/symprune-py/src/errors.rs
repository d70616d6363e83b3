//! Maps core errors onto the exception classes of `symprune.errors`.

use pyo3::prelude::*;
use symprune_core::Error;

/// The Python exception for a core error, one root (`SymPruneError`) for all.
pub fn to_py(py: Python<'_>, err: Error) -> PyErr {
    let class = match err {
        Error::InvalidArgument { .. } | Error::ShapeMismatch { .. } | Error::NonFinite { .. } => {
            "InvalidInputError"
        }
        Error::Checkpoint { .. } | Error::Io { .. } => "CheckpointError",
    };
    raise(py, class, err.to_string())
}

/// Builds `symprune.errors.<class>(message)`.
pub fn raise(py: Python<'_>, class: &str, message: String) -> PyErr {
    match py.import("symprune.errors").and_then(|m| m.getattr(class)) {
        Ok(cls) => PyErr::from_type(cls.cast_into().expect("exception class"), message),
        Err(e) => e,
    }
}
