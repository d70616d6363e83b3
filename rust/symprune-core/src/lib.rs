//! symprune-core: the pure-Rust engine of symprune.
//!
//! Scores (one function per method), masks with exact counts and stable ties,
//! and mask application, over `f32`, `f16` and `bf16` weights. Everything is
//! parallel over rows with rayon and free of Python.

pub mod checkpoint;
pub mod dsnot;
pub mod dtype;
pub mod error;
pub mod mask;
pub mod refine;
pub mod rng;
pub mod score;
pub mod sparsegpt;
pub mod swaps;
pub mod vocab;

pub use dtype::{Element, MatRef};
pub use error::{Error, Result};
pub use mask::Pattern;
pub use score::{ActStats, Score};
pub use vocab::{Method, ParamValue, Params, Refiner, Request};
