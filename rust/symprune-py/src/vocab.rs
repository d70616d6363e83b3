//! The core's vocabulary for Python: the names, defaults and schemas
//! (`vocabulary()`), a validated request (`Request`), and the tensor
//! selection rule (`Selection`). Nothing here restates a name or a default.

use crate::errors::{invalid, to_py};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyString};
use pythonize::pythonize;
use symprune_core::checkpoint::{parse_dtype, Selection as CoreSelection};
use symprune_core::vocab::{self, ParamValue, Params};
use symprune_core::{Pattern, Request as CoreRequest};

/// A `{name: value}` dict of parameters (`None` values left out: the core's
/// default applies).
pub fn to_params(py: Python<'_>, dict: Option<&Bound<'_, PyDict>>) -> PyResult<Params> {
    let mut out = Params::new();
    let Some(dict) = dict else { return Ok(out) };
    for (key, value) in dict.iter() {
        let name: String = key.extract()?;
        if value.is_none() {
            continue;
        }
        let v = if value.is_instance_of::<PyBool>() {
            ParamValue::Bool(value.extract()?)
        } else if value.is_instance_of::<PyInt>() {
            ParamValue::Int(value.extract()?)
        } else if value.is_instance_of::<PyFloat>() {
            ParamValue::Float(value.extract()?)
        } else if value.is_instance_of::<PyString>() {
            ParamValue::Text(value.extract()?)
        } else {
            return Err(invalid(
                py,
                format!(
                    "{name}: {} is not a number, boolean or string",
                    value.get_type().name()?
                ),
            ));
        };
        out.insert(name, v);
    }
    Ok(out)
}

/// Every method, refiner and pattern name with its parameters, defaults and needs.
#[pyfunction]
fn vocabulary(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    Ok(pythonize(py, &vocab::vocabulary())?)
}

/// A validated pruning request (see `symprune_core::vocab::Request`).
#[pyclass(name = "Request", module = "symprune._core", frozen)]
pub struct Request {
    pub inner: CoreRequest,
}

#[pymethods]
impl Request {
    #[new]
    #[pyo3(signature = (method=None, params=None, pattern=None, sparsity=None, refine=None, refine_params=None))]
    fn new(
        py: Python<'_>,
        method: Option<&str>,
        params: Option<&Bound<'_, PyDict>>,
        pattern: Option<&str>,
        sparsity: Option<f64>,
        refine: Option<&str>,
        refine_params: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let inner = CoreRequest::new(
            method,
            &to_params(py, params)?,
            pattern,
            sparsity,
            refine,
            &to_params(py, refine_params)?,
        )
        .map_err(|e| to_py(py, e))?;
        Ok(Request { inner })
    }

    /// The run's fields of `sparsity.json`.
    fn describe<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(pythonize(py, &self.inner.describe())?)
    }

    /// Whether the Rust shard engine can run it (see the core).
    fn runs_shard_by_shard(&self, with_stats_file: bool) -> bool {
        self.inner.runs_shard_by_shard(with_stats_file)
    }

    #[getter]
    fn method(&self) -> &'static str {
        self.inner.method.name()
    }

    #[getter]
    fn refine(&self) -> Option<&'static str> {
        self.inner.refiner.as_ref().map(|r| r.name())
    }

    /// The pattern's name: `per-row`, `per-matrix`, `adaptive` or `N:M`.
    #[getter]
    fn pattern(&self) -> String {
        self.inner.pattern.to_string()
    }

    /// `(n, m)` of an N:M pattern, else `None`.
    #[getter]
    fn nm(&self) -> Option<(usize, usize)> {
        match self.inner.pattern {
            Pattern::NM { n, m } => Some((n, m)),
            _ => None,
        }
    }

    /// The target sparsity (N/M for N:M).
    #[getter]
    fn sparsity(&self) -> f64 {
        self.inner.pattern.sparsity()
    }

    #[getter]
    fn needs_hessian(&self) -> bool {
        self.inner.method.needs_hessian()
    }

    /// Whether the refinement reads the Gram matrix of each layer's inputs
    /// (`swaps`, `r2dsnot` with `decision="exact"`).
    #[getter]
    fn refine_needs_gram(&self) -> bool {
        self.inner.refiner.as_ref().is_some_and(|r| r.needs_gram())
    }

    #[getter]
    fn updates_weights(&self) -> bool {
        self.inner.method.updates_weights()
    }

    #[getter]
    fn data_free(&self) -> bool {
        self.inner.method.data_free()
    }
}

/// Which tensors get pruned: the core's one rule (see its `Selection`).
#[pyclass(name = "Selection", module = "symprune._core", frozen)]
pub struct Selection {
    pub inner: CoreSelection,
}

#[pymethods]
impl Selection {
    #[new]
    #[pyo3(signature = (targets=Vec::new(), ignore=Vec::new()))]
    fn new(py: Python<'_>, targets: Vec<String>, ignore: Vec<String>) -> PyResult<Self> {
        let inner = CoreSelection::new(&targets, &ignore).map_err(|e| to_py(py, e))?;
        Ok(Selection { inner })
    }

    /// Whether the tensor `name` of `shape` and safetensors `dtype` is pruned.
    fn selects(
        &self,
        py: Python<'_>,
        name: &str,
        shape: Vec<usize>,
        dtype: &str,
    ) -> PyResult<bool> {
        let dtype = parse_dtype(dtype)
            .ok_or_else(|| invalid(py, format!("dtype {dtype:?} is not a safetensors dtype")))?;
        Ok(self.inner.selects_tensor(name, &shape, dtype))
    }

    /// The rules as given: `{"targets": [...], "ignore": [...]}`.
    fn describe<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(pythonize(py, &self.inner.describe())?)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(vocabulary, m)?)?;
    m.add_class::<Request>()?;
    m.add_class::<Selection>()
}
