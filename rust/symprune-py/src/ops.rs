//! Scores, masks and mask application.

use crate::errors::{invalid, to_py};
use crate::vocab::to_params;
use half::slice::HalfBitsSliceExt;
use half::{bf16, f16};
use numpy::ndarray::Array2;
use numpy::{
    IntoPyArray, PyArray2, PyReadonlyArray1, PyReadonlyArray2, PyReadwriteArray2,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use symprune_core::sparsegpt::{prune as sparsegpt_prune, Target};
use symprune_core::{mask, score as scores, ActStats, MatRef, Method, Pattern};

/// Runs `$body` with `$m` bound to a `MatRef` of the array's element type.
macro_rules! with_matrix {
    ($py:expr, $arr:expr, $dtype:expr, $arg:expr, |$m:ident| $body:expr) => {{
        let py = $py;
        match $dtype {
            "F32" => {
                let a: PyReadonlyArray2<f32> = $arr.extract()?;
                let (rows, cols) = (a.shape()[0], a.shape()[1]);
                let data = a.as_slice()?;
                let $m = MatRef::new(data, rows, cols, $arg).map_err(|e| to_py(py, e))?;
                py.detach(|| $body).map_err(|e| to_py(py, e))
            }
            "F16" | "BF16" => {
                let a: PyReadonlyArray2<u16> = $arr.extract()?;
                let (rows, cols) = (a.shape()[0], a.shape()[1]);
                let bits = a.as_slice()?;
                if $dtype == "F16" {
                    let data: &[f16] = bits.reinterpret_cast();
                    let $m = MatRef::new(data, rows, cols, $arg).map_err(|e| to_py(py, e))?;
                    py.detach(|| $body).map_err(|e| to_py(py, e))
                } else {
                    let data: &[bf16] = bits.reinterpret_cast();
                    let $m = MatRef::new(data, rows, cols, $arg).map_err(|e| to_py(py, e))?;
                    py.detach(|| $body).map_err(|e| to_py(py, e))
                }
            }
            other => Err(invalid(
                py,
                format!("dtype {other:?} is not one of F32, F16, BF16"),
            )),
        }
    }};
}
pub(crate) use with_matrix;

pub(crate) fn to_matrix<T: numpy::Element>(
    py: Python<'_>,
    data: Vec<T>,
    rows: usize,
    cols: usize,
) -> Bound<'_, PyArray2<T>> {
    Array2::from_shape_vec((rows, cols), data)
        .expect("core returns rows*cols elements")
        .into_pyarray(py)
}

/// The score matrix of `weight` under the score method `method` with
/// `params` (by name; absent = the core's default).
#[allow(clippy::too_many_arguments)]
#[pyfunction]
#[pyo3(signature = (weight, dtype, method, params=None, in_sq=None, out_sq=None, tensor=""))]
fn score<'py>(
    py: Python<'py>,
    weight: &Bound<'py, PyAny>,
    dtype: &str,
    method: &str,
    params: Option<&Bound<'py, PyDict>>,
    in_sq: Option<PyReadonlyArray1<'py, f32>>,
    out_sq: Option<PyReadonlyArray1<'py, f32>>,
    tensor: &str,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let score = match Method::new(method, &to_params(py, params)?).map_err(|e| to_py(py, e))? {
        (Method::Score(score), _) => score,
        (other, _) => {
            return Err(invalid(
                py,
                format!("method {:?} is not a score method", other.name()),
            ))
        }
    };
    let in_sq = in_sq.as_ref().map(|s| s.as_slice()).transpose()?;
    let out_sq = out_sq.as_ref().map(|s| s.as_slice()).transpose()?;
    let stats = ActStats { in_sq, out_sq };
    let (mut rows, mut cols) = (0, 0);
    let out = with_matrix!(py, weight, dtype, "weight", |m| {
        rows = m.rows();
        cols = m.cols();
        scores::compute(m, stats, &score, tensor)
    })?;
    Ok(to_matrix(py, out, rows, cols))
}

/// The prune mask of `scores` under `pattern` (absent = the core's default)
/// at `sparsity` (unstructured patterns only; absent = the default).
#[pyfunction]
#[pyo3(signature = (scores, dtype, pattern=None, sparsity=None, tensor=""))]
fn mask_of<'py>(
    py: Python<'py>,
    scores: &Bound<'py, PyAny>,
    dtype: &str,
    pattern: Option<&str>,
    sparsity: Option<f64>,
    tensor: &str,
) -> PyResult<Bound<'py, PyArray2<bool>>> {
    let pattern = parse_pattern(py, pattern, sparsity)?;
    let (mut rows, mut cols) = (0, 0);
    let out = with_matrix!(py, scores, dtype, "scores", |s| {
        rows = s.rows();
        cols = s.cols();
        mask::compute(s, pattern, tensor)
    })?;
    Ok(to_matrix(py, out, rows, cols))
}

/// The core's pattern called `pattern` at `sparsity` (both optional).
pub(crate) fn parse_pattern(
    py: Python<'_>,
    pattern: Option<&str>,
    sparsity: Option<f64>,
) -> PyResult<Pattern> {
    Pattern::parse(
        pattern,
        sparsity.unwrap_or(symprune_core::vocab::DEFAULT_SPARSITY),
    )
    .map_err(|e| to_py(py, e))
}

#[pyfunction]
fn apply_mask(
    py: Python<'_>,
    weight: &Bound<'_, PyAny>,
    dtype: &str,
    mask: PyReadonlyArray2<'_, bool>,
) -> PyResult<usize> {
    let mask = mask.as_slice()?;
    match dtype {
        "F32" => {
            let mut w: PyReadwriteArray2<f32> = weight.extract()?;
            let w = w.as_slice_mut()?;
            py.detach(|| mask::apply(w, mask)).map_err(|e| to_py(py, e))
        }
        "F16" | "BF16" => {
            let mut w: PyReadwriteArray2<u16> = weight.extract()?;
            let bits = w.as_slice_mut()?;
            if dtype == "F16" {
                let w: &mut [f16] = bits.reinterpret_cast_mut();
                py.detach(|| mask::apply(w, mask)).map_err(|e| to_py(py, e))
            } else {
                let w: &mut [bf16] = bits.reinterpret_cast_mut();
                py.detach(|| mask::apply(w, mask)).map_err(|e| to_py(py, e))
            }
        }
        other => Err(invalid(
            py,
            format!("dtype {other:?} is not one of F32, F16, BF16"),
        )),
    }
}

/// SparseGPT's column loop on the CPU: prunes the float32 `weight` in place
/// under `pattern` at `sparsity` with `hinv`, the upper Cholesky factor of
/// the damped inverse Hessian, in blocks of `blocksize` columns; returns the
/// mask (true = pruned).
#[pyfunction]
#[pyo3(signature = (weight, hinv, blocksize, pattern=None, sparsity=None, tensor=""))]
fn sparsegpt<'py>(
    py: Python<'py>,
    mut weight: PyReadwriteArray2<'py, f32>,
    hinv: PyReadonlyArray2<'py, f32>,
    blocksize: usize,
    pattern: Option<&str>,
    sparsity: Option<f64>,
    tensor: &str,
) -> PyResult<Bound<'py, PyArray2<bool>>> {
    let target = Target::of(parse_pattern(py, pattern, sparsity)?);
    let (rows, cols) = (weight.shape()[0], weight.shape()[1]);
    let w = weight.as_slice_mut()?;
    let h = hinv.as_slice()?;
    let mask = py
        .detach(|| sparsegpt_prune(w, rows, cols, h, blocksize, target, tensor))
        .map_err(|e| to_py(py, e))?;
    Ok(to_matrix(py, mask, rows, cols))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(score, m)?)?;
    m.add_function(wrap_pyfunction!(sparsegpt, m)?)?;
    m.add_function(wrap_pyfunction!(mask_of, m)?)?;
    m.add_function(wrap_pyfunction!(apply_mask, m)?)?;
    Ok(())
}
