//! DSnoT and R²-DSnoT mask refinement.

use crate::errors::{invalid, to_py};
use crate::ops::{parse_pattern, to_matrix, with_matrix};
use crate::vocab::to_params;
use half::slice::HalfBitsSliceExt;
use half::{bf16, f16};
use numpy::{IntoPyArray, PyArray2, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use symprune_core::dsnot::{self, Layout, RefineStats, Report};
use symprune_core::{MatRef, Pattern, Refiner};

/// What a refinement did (see symprune-core's `dsnot::Report`).
#[pyclass(name = "RefineReport", module = "symprune._core", frozen, get_all)]
pub struct RefineReport {
    /// Accepted swaps in all rows.
    swaps: u64,
    /// Accepted swaps per row.
    swaps_per_row: Py<PyAny>,
    /// Rows that stopped before `max_cycles`.
    rows_stopped: usize,
    /// Cycles run.
    cycles: usize,
}

type Refined<'py> = (Bound<'py, PyArray2<bool>>, RefineReport);

fn finish<'py>(
    py: Python<'py>,
    (mask, report): (Vec<bool>, Report),
    rows: usize,
    cols: usize,
) -> Refined<'py> {
    let out = RefineReport {
        swaps: report.total_swaps(),
        swaps_per_row: report.swaps.into_pyarray(py).into_any().unbind(),
        rows_stopped: report.rows_stopped,
        cycles: report.cycles,
    };
    (to_matrix(py, mask, rows, cols), out)
}

/// The structure a refinement keeps: N:M, or the same count in every row.
fn layout(pattern: Pattern) -> Layout {
    match pattern {
        Pattern::NM { n, m } => Layout::NM { n, m },
        _ => Layout::PerRow,
    }
}

/// Refines `prune_mask` with the refiner `refine` (`dsnot`, `r2dsnot`) and
/// its `params` (absent = the core's defaults). `pattern` is the initial
/// mask's pattern; `initial_scores` (DSnoT, N:M only) picks inside a group.
#[allow(clippy::too_many_arguments)]
#[pyfunction]
#[pyo3(signature = (refine, weight, dtype, prune_mask, in_sq, act_sum, act_var, *, params=None, pattern=None, initial_scores=None, tensor=""))]
fn refine<'py>(
    py: Python<'py>,
    refine: &str,
    weight: &Bound<'py, PyAny>,
    dtype: &str,
    prune_mask: PyReadonlyArray2<'py, bool>,
    in_sq: PyReadonlyArray1<'py, f32>,
    act_sum: PyReadonlyArray1<'py, f32>,
    act_var: PyReadonlyArray1<'py, f32>,
    params: Option<&Bound<'py, PyDict>>,
    pattern: Option<&str>,
    initial_scores: Option<PyReadonlyArray2<'py, f32>>,
    tensor: &str,
) -> PyResult<Refined<'py>> {
    let (refiner, _) = Refiner::new(refine, &to_params(py, params)?).map_err(|e| to_py(py, e))?;
    let layout = layout(parse_pattern(py, pattern, None)?);
    let stats = RefineStats {
        in_sq: in_sq.as_slice()?,
        sum: act_sum.as_slice()?,
        var: act_var.as_slice()?,
    };
    let prune = prune_mask.as_slice()?;
    let initial = match (&initial_scores, &refiner) {
        (Some(a), Refiner::Dsnot(_)) => Some((a.as_slice()?, a.shape()[0], a.shape()[1])),
        (Some(_), _) => {
            return Err(invalid(
                py,
                format!("initial_scores: {refine} picks inside groups by its own prune score"),
            ))
        }
        (None, _) => None,
    };
    let (mut rows, mut cols) = (0, 0);
    let out = with_matrix!(py, weight, dtype, "weight", |w| {
        rows = w.rows();
        cols = w.cols();
        match &refiner {
            Refiner::Dsnot(params) => initial
                .map(|(s, r, c)| MatRef::new(s, r, c, "initial_scores"))
                .transpose()
                .and_then(|init| dsnot::dsnot(w, stats, prune, layout, init, params, tensor)),
            Refiner::R2Dsnot(params) => dsnot::r2dsnot(w, stats, prune, layout, params, tensor),
        }
    })?;
    Ok(finish(py, out, rows, cols))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<RefineReport>()?;
    m.add_function(wrap_pyfunction!(refine, m)?)
}
