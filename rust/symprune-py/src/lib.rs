//! `symprune._core`: type conversion between numpy and symprune-core.
//!
//! Arrays arrive C-contiguous (the Python layer guarantees it) as `float32`,
//! or as `uint16` bit views of `float16` / `bfloat16` data with the dtype named
//! by string, so torch bf16 tensors cross without a copy. All work runs with
//! the GIL released.

mod checkpoint;
mod dsnot;
mod errors;
mod ops;
mod vocab;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    ops::register(m)?;
    vocab::register(m)?;
    checkpoint::register(m)?;
    dsnot::register(m)
}
