//! Maps core errors onto the exception classes of `symprune.errors`.

use pyo3::prelude::*;
use symprune_core::Error;

pyo3::import_exception!(symprune.errors, InvalidInputError);
pyo3::import_exception!(symprune.errors, CheckpointError);

/// The Python exception for a core error, one root (`SymPruneError`) for all.
pub fn to_py(_py: Python<'_>, err: Error) -> PyErr {
    match err {
        Error::InvalidArgument { .. } | Error::ShapeMismatch { .. } | Error::NonFinite { .. } => {
            InvalidInputError::new_err(err.to_string())
        }
        Error::Checkpoint { .. } | Error::Io { .. } => CheckpointError::new_err(err.to_string()),
    }
}

/// An `InvalidInputError` raised by the binding itself.
pub fn invalid(_py: Python<'_>, message: String) -> PyErr {
    InvalidInputError::new_err(message)
}

/// A `CheckpointError` raised by the binding itself.
pub fn checkpoint_error(_py: Python<'_>, message: String) -> PyErr {
    CheckpointError::new_err(message)
}
