//! DSnoT and R²-DSnoT mask refinement.

use crate::errors::{invalid, to_py};
use crate::ops::{parse_pattern, to_matrix, with_matrix};
use crate::vocab::to_params;
use half::slice::HalfBitsSliceExt;
use half::{bf16, f16};
use numpy::{IntoPyArray, PyArray2, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use symprune_core::dsnot::{Layout, RefineStats, Report};
use symprune_core::refine::{self as core_refine, RefineInputs};
use symprune_core::swaps::SwapsReport;
use symprune_core::{MatRef, Refiner, Result};

/// What a refinement did (see symprune-core's `dsnot::Report` and
/// `swaps::SwapsReport`).
#[pyclass(name = "RefineReport", module = "symprune._core", frozen, get_all)]
pub struct RefineReport {
    /// Accepted swaps in all rows.
    swaps: u64,
    /// Accepted swaps per row.
    swaps_per_row: Py<PyAny>,
    /// Rows with at least one swap.
    rows_changed: usize,
    /// Rows that stopped before `max_cycles` (`max_swaps`).
    rows_stopped: usize,
    /// Cycles run (swaps: the most rounds a row ran).
    cycles: usize,
    /// `Σ_i L_i` (the exact loss, methods.md §9) of the initial mask, where
    /// the refiner computes it (swaps, R²-DSnoT's exact decision).
    loss_before: Option<f64>,
    /// `Σ_i L_i` of the refined mask.
    loss_after: Option<f64>,
}

type Refined<'py> = (Bound<'py, PyArray2<bool>>, RefineReport);

impl RefineReport {
    fn from_dsnot(py: Python<'_>, report: Report) -> Self {
        RefineReport {
            swaps: report.total_swaps(),
            rows_changed: report.swaps.iter().filter(|&&s| s > 0).count(),
            swaps_per_row: report.swaps.into_pyarray(py).into_any().unbind(),
            rows_stopped: report.rows_stopped,
            cycles: report.cycles,
            loss_before: report.loss.map(|l| l.0),
            loss_after: report.loss.map(|l| l.1),
        }
    }

    fn from_swaps(py: Python<'_>, report: SwapsReport) -> Self {
        RefineReport {
            swaps: report.swaps,
            swaps_per_row: report.swaps_per_row.into_pyarray(py).into_any().unbind(),
            rows_changed: report.rows_changed,
            rows_stopped: report.rows_stopped,
            cycles: report.cycles,
            loss_before: Some(report.loss_before),
            loss_after: Some(report.loss_after),
        }
    }
}

/// A row-major `f32` matrix argument: `(data, rows, cols)`.
fn matrix<'a>(a: &'a PyReadonlyArray2<'_, f32>) -> PyResult<(&'a [f32], usize, usize)> {
    Ok((a.as_slice()?, a.shape()[0], a.shape()[1]))
}

fn mat<'a>((data, rows, cols): (&'a [f32], usize, usize), arg: &str) -> Result<MatRef<'a, f32>> {
    MatRef::new(data, rows, cols, arg)
}

/// Refines `prune_mask` with the refiner `refine` (`dsnot`, `r2dsnot`,
/// `swaps`) and its `params` (absent = the core's defaults). `pattern` is
/// the initial mask's pattern; `initial_scores` (DSnoT, N:M only) picks
/// inside a group; `gram` (`in × in`) is the Gram matrix of the layer's
/// inputs, for the refiners that need it (`swaps`, R²-DSnoT's exact
/// decision). The statistics may be `None` for `swaps`, which ignores them.
#[allow(clippy::too_many_arguments)]
#[pyfunction]
#[pyo3(signature = (refine, weight, dtype, prune_mask, in_sq, act_sum, act_var, *, params=None, pattern=None, initial_scores=None, gram=None, tensor=""))]
fn refine<'py>(
    py: Python<'py>,
    refine: &str,
    weight: &Bound<'py, PyAny>,
    dtype: &str,
    prune_mask: PyReadonlyArray2<'py, bool>,
    in_sq: Option<PyReadonlyArray1<'py, f32>>,
    act_sum: Option<PyReadonlyArray1<'py, f32>>,
    act_var: Option<PyReadonlyArray1<'py, f32>>,
    params: Option<&Bound<'py, PyDict>>,
    pattern: Option<&str>,
    initial_scores: Option<PyReadonlyArray2<'py, f32>>,
    gram: Option<PyReadonlyArray2<'py, f32>>,
    tensor: &str,
) -> PyResult<Refined<'py>> {
    let (refiner, _) = Refiner::new(refine, &to_params(py, params)?).map_err(|e| to_py(py, e))?;
    let layout = Layout::of(parse_pattern(py, pattern, None)?);
    let stats = if refiner.needs_stats() {
        let mut vectors = Vec::with_capacity(3);
        for (v, arg) in [
            (&in_sq, "in_sq"),
            (&act_sum, "act_sum"),
            (&act_var, "act_var"),
        ] {
            let Some(v) = v else {
                return Err(invalid(
                    py,
                    format!(
                        "{arg}: mask refinement needs the layer's activation statistics; \
                         calibrate first"
                    ),
                ));
            };
            vectors.push(v.as_slice()?);
        }
        Some(RefineStats {
            in_sq: vectors[0],
            sum: vectors[1],
            var: vectors[2],
        })
    } else {
        None
    };
    let prune = prune_mask.as_slice()?;
    let initial = match (&initial_scores, &refiner) {
        (Some(a), Refiner::Dsnot(_)) => Some(matrix(a)?),
        (Some(_), _) => {
            return Err(invalid(
                py,
                format!("initial_scores: {refine} picks inside groups by its own prune score"),
            ))
        }
        (None, _) => None,
    };
    let gram = match (&gram, refiner.needs_gram()) {
        (Some(h), true) => Some(matrix(h)?),
        (None, true) => {
            return Err(invalid(
                py,
                format!(
                    "gram: {refine} with these parameters needs the Gram matrix of the \
                     layer's inputs (in x in)"
                ),
            ))
        }
        (Some(_), false) => {
            return Err(invalid(
                py,
                format!(
                    "gram: {refine} with these parameters does not read a Gram matrix \
                     (r2dsnot reads it with decision=\"exact\")"
                ),
            ))
        }
        (None, false) => None,
    };
    let (mut rows, mut cols) = (0, 0);
    let report = with_matrix!(py, weight, dtype, "weight", |w| {
        rows = w.rows();
        cols = w.cols();
        let inputs = RefineInputs {
            stats,
            gram: gram.map(|g| mat(g, "gram")).transpose()?,
            initial_scores: initial.map(|s| mat(s, "initial_scores")).transpose()?,
        };
        core_refine::refine(w, prune, &refiner, layout, inputs, tensor)
    })?;
    let (mask, report) = report;
    let report = match report {
        core_refine::Refined::Dsnot(r) => RefineReport::from_dsnot(py, r),
        core_refine::Refined::Swaps(r) => RefineReport::from_swaps(py, r),
    };
    Ok((to_matrix(py, mask, rows, cols), report))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<RefineReport>()?;
    m.add_function(wrap_pyfunction!(refine, m)?)
}
