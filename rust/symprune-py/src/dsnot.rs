//! DSnoT and R²-DSnoT mask refinement.

use crate::errors::{raise, to_py};
use crate::ops::{to_matrix, with_matrix};
use half::slice::HalfBitsSliceExt;
use half::{bf16, f16};
use numpy::{IntoPyArray, PyArray2, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use symprune_core::dsnot::{self, Layout, OnReject, R2Dsnot, RefineStats, Report, RiPhase};
use symprune_core::MatRef;

type Refined<'py> = (Bound<'py, PyArray2<bool>>, Bound<'py, PyDict>);

fn layout(n: usize, m: usize) -> Layout {
    if n == 0 {
        Layout::PerRow
    } else {
        Layout::NM { n, m }
    }
}

fn finish<'py>(
    py: Python<'py>,
    (mask, report): (Vec<bool>, Report),
    rows: usize,
    cols: usize,
) -> PyResult<Refined<'py>> {
    let dict = PyDict::new(py);
    dict.set_item("swaps", report.total_swaps())?;
    dict.set_item("swaps_per_row", report.swaps.into_pyarray(py))?;
    dict.set_item("rows_stopped", report.rows_stopped)?;
    dict.set_item("cycles", report.cycles)?;
    Ok((to_matrix(py, mask, rows, cols), dict))
}

#[allow(clippy::too_many_arguments)]
#[pyfunction(name = "dsnot")]
#[pyo3(signature = (weight, dtype, prune_mask, in_sq, act_sum, act_var, *, n=0, m=0, initial_scores=None, max_cycles=50, threshold=0.1, var_power=1.0, same_sign=None, tensor=""))]
fn dsnot_refine<'py>(
    py: Python<'py>,
    weight: &Bound<'py, PyAny>,
    dtype: &str,
    prune_mask: PyReadonlyArray2<'py, bool>,
    in_sq: PyReadonlyArray1<'py, f32>,
    act_sum: PyReadonlyArray1<'py, f32>,
    act_var: PyReadonlyArray1<'py, f32>,
    n: usize,
    m: usize,
    initial_scores: Option<PyReadonlyArray2<'py, f32>>,
    max_cycles: usize,
    threshold: f64,
    var_power: f64,
    same_sign: Option<bool>,
    tensor: &str,
) -> PyResult<Refined<'py>> {
    let stats = RefineStats {
        in_sq: in_sq.as_slice()?,
        sum: act_sum.as_slice()?,
        var: act_var.as_slice()?,
    };
    let prune = prune_mask.as_slice()?;
    let initial = match &initial_scores {
        Some(a) => Some((a.as_slice()?, a.shape()[0], a.shape()[1])),
        None => None,
    };
    let params = dsnot::Dsnot {
        max_cycles,
        threshold,
        var_power,
        same_sign,
    };
    let (mut rows, mut cols) = (0, 0);
    let out = with_matrix!(py, weight, dtype, "weight", |w| {
        rows = w.rows();
        cols = w.cols();
        initial
            .map(|(s, r, c)| MatRef::new(s, r, c, "initial_scores"))
            .transpose()
            .and_then(|init| dsnot::dsnot(w, stats, prune, layout(n, m), init, &params, tensor))
    })?;
    finish(py, out, rows, cols)
}

#[allow(clippy::too_many_arguments)]
#[pyfunction]
#[pyo3(signature = (weight, dtype, prune_mask, in_sq, act_sum, act_var, *, n=0, m=0, max_cycles=50, threshold=0.1, var_power=1.0, ri_phase="prune", alpha=1.0, gamma=0.0, p=1.0, same_sign=true, on_reject="stop", tensor=""))]
fn r2dsnot<'py>(
    py: Python<'py>,
    weight: &Bound<'py, PyAny>,
    dtype: &str,
    prune_mask: PyReadonlyArray2<'py, bool>,
    in_sq: PyReadonlyArray1<'py, f32>,
    act_sum: PyReadonlyArray1<'py, f32>,
    act_var: PyReadonlyArray1<'py, f32>,
    n: usize,
    m: usize,
    max_cycles: usize,
    threshold: f64,
    var_power: f64,
    ri_phase: &str,
    alpha: f64,
    gamma: f64,
    p: f64,
    same_sign: bool,
    on_reject: &str,
    tensor: &str,
) -> PyResult<Refined<'py>> {
    let ri_phase = match ri_phase {
        "prune" => RiPhase::Prune,
        "grow" => RiPhase::Grow,
        "none" => RiPhase::None,
        other => {
            return Err(raise(
                py,
                "InvalidInputError",
                format!("ri_phase {other:?} is not one of prune, grow, none"),
            ))
        }
    };
    let on_reject = match on_reject {
        "stop" => OnReject::Stop,
        "skip" => OnReject::Skip,
        other => {
            return Err(raise(
                py,
                "InvalidInputError",
                format!("on_reject {other:?} is not one of stop, skip"),
            ))
        }
    };
    let stats = RefineStats {
        in_sq: in_sq.as_slice()?,
        sum: act_sum.as_slice()?,
        var: act_var.as_slice()?,
    };
    let prune = prune_mask.as_slice()?;
    let params = R2Dsnot {
        max_cycles,
        threshold,
        var_power,
        ri_phase,
        alpha,
        gamma,
        p,
        same_sign,
        on_reject,
    };
    let (mut rows, mut cols) = (0, 0);
    let out = with_matrix!(py, weight, dtype, "weight", |w| {
        rows = w.rows();
        cols = w.cols();
        dsnot::r2dsnot(w, stats, prune, layout(n, m), &params, tensor)
    })?;
    finish(py, out, rows, cols)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(dsnot_refine, m)?)?;
    m.add_function(wrap_pyfunction!(r2dsnot, m)?)?;
    Ok(())
}
