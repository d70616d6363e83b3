//! Checkpoint reading, writing, pruning and inspection.
//!
//! Reports cross as Python dicts (one serde conversion), tensors as zero-copy `uint8` views of the memory map that keep the reader
//! alive, and all file work runs with the GIL released.

use crate::errors::{checkpoint_error, invalid, to_py};
use crate::vocab::{Request, Selection};
use numpy::ndarray::ArrayView1;
use numpy::{PyArray1, PyReadonlyArray1};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pythonize::{depythonize, pythonize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use symprune_core::checkpoint::compressed::Progress as CompressProgress;
use symprune_core::checkpoint::fsutil::{self, Protected};
use symprune_core::checkpoint::{
    self as ck, parse_dtype, Checkpoint, Part, Plan, Progress, WriterOptions,
};
use symprune_core::vocab::SaveFormat;
use symprune_core::Pattern;

/// A core report as Python objects.
fn to_python<'py, T: serde::Serialize>(py: Python<'py>, value: &T) -> PyResult<Bound<'py, PyAny>> {
    Ok(pythonize(py, value)?)
}

/// A checkpoint directory, memory-mapped.
#[pyclass(name = "CheckpointReader", module = "symprune._core", frozen)]
struct Reader {
    inner: Checkpoint,
}

#[pymethods]
impl Reader {
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let inner = py
            .detach(|| Checkpoint::open(&path))
            .map_err(|e| to_py(py, e))?;
        Ok(Reader { inner })
    }

    /// Tensor names, shard by shard in file order.
    fn names(&self) -> Vec<String> {
        self.inner.tensors().map(|(_, t)| t.name.clone()).collect()
    }

    /// `(dtype, shape)` of a tensor.
    fn info(&self, py: Python<'_>, name: &str) -> PyResult<(String, Vec<usize>)> {
        let t = self.inner.tensor(name).map_err(|e| to_py(py, e))?;
        Ok((t.info.dtype_name(), t.info.shape.clone()))
    }

    /// Drops the tensor's mapped pages from this process (a later read maps
    /// them again from the page cache).
    fn release(&self, name: &str) {
        self.inner.release(name);
    }

    /// Shard file names.
    fn shards(&self) -> Vec<String> {
        self.inner.shards.iter().map(|s| s.file.clone()).collect()
    }

    /// The `__metadata__` of every shard, merged.
    fn metadata(&self) -> BTreeMap<String, String> {
        self.inner
            .shards
            .iter()
            .filter_map(|s| s.header.metadata.clone())
            .flatten()
            .collect()
    }

    /// A tensor's bytes as a read-only 1-D `uint8` array over the memory map
    /// (no copy).
    fn tensor_bytes<'py>(slf: &Bound<'py, Self>, name: &str) -> PyResult<Bound<'py, PyArray1<u8>>> {
        let py = slf.py();
        let t = slf.get().inner.tensor(name).map_err(|e| to_py(py, e))?;
        let view = ArrayView1::from(t.data);
        // SAFETY: the bytes live in the reader's memory map, which the array
        // keeps alive through its base object (the reader, which is frozen);
        // the map is read-only, so the array is too.
        let array = unsafe { PyArray1::borrow_from_array(&view, slf.clone().into_any()) };
        array.getattr("flags")?.setattr("writeable", false)?;
        Ok(array)
    }
}

/// Writes a pruned copy of a checkpoint (see symprune-core's writer).
#[pyclass(name = "CheckpointWriter", module = "symprune._core")]
struct Writer {
    inner: Option<ck::CheckpointWriter>,
}

impl Writer {
    fn get(&mut self, py: Python<'_>) -> PyResult<&mut ck::CheckpointWriter> {
        self.inner.as_mut().ok_or_else(|| {
            checkpoint_error(py, "this writer is already finished or aborted".into())
        })
    }
}

#[pymethods]
impl Writer {
    #[new]
    #[pyo3(signature = (input, output, overwrite=false, run_key=String::new()))]
    fn new(
        py: Python<'_>,
        input: PathBuf,
        output: PathBuf,
        overwrite: bool,
        run_key: String,
    ) -> PyResult<Self> {
        let opts = WriterOptions {
            overwrite,
            run_key,
            ..WriterOptions::default()
        };
        let inner = py
            .detach(|| ck::CheckpointWriter::create(&input, &output, &opts))
            .map_err(|e| to_py(py, e))?;
        Ok(Writer { inner: Some(inner) })
    }

    /// Whether the shard holding `name` was finished by an interrupted run.
    fn is_resumed(&mut self, py: Python<'_>, name: &str) -> PyResult<bool> {
        let w = self.get(py)?;
        Ok(w.input().shard_of(name).is_some_and(|s| w.is_resumed(s)))
    }

    /// Writes all of a tensor's bytes; `dtype` is the safetensors name of
    /// the array's element type.
    fn write_tensor(
        &mut self,
        py: Python<'_>,
        name: &str,
        dtype: &str,
        data: PyReadonlyArray1<'_, u8>,
    ) -> PyResult<()> {
        let dtype = parse_dtype(dtype)
            .ok_or_else(|| invalid(py, format!("dtype {dtype:?} is not a safetensors dtype")))?;
        let bytes = data.as_slice()?;
        let w = self.get(py)?;
        py.detach(|| w.write_tensor(name, dtype, bytes))
            .map_err(|e| to_py(py, e))
    }

    /// Finishes the output; `run` holds the run's fields of the manifest.
    /// Returns the finish report.
    fn finish<'py>(
        &mut self,
        py: Python<'py>,
        run: &Bound<'py, PyDict>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let run: Map<String, Value> =
            depythonize(run).map_err(|e| invalid(py, format!("run: not JSON-like: {e}")))?;
        self.get(py)?;
        let w = self.inner.take().expect("checked above");
        let report = py.detach(|| w.finish(&run)).map_err(|e| to_py(py, e))?;
        to_python(py, &report)
    }

    /// Stops without finishing (temporary files removed, finished shards kept).
    fn abort(&mut self) {
        if let Some(w) = self.inner.take() {
            w.abort();
        }
    }
}

/// Prunes a checkpoint directory into another as `request` says; returns the
/// report. `progress(kind, payload)` hears `"start"` (`{"tensors": N}`) and
/// `"tensor"` (one tensor's report); an exception in it (or Ctrl-C) stops the
/// run. With `world > 1`, only the shards of part `rank` (see `finalize`).
#[allow(clippy::too_many_arguments)]
#[pyfunction]
#[pyo3(signature = (input, output, request, selection, *, stats=None, overwrite=false, progress=None, rank=0, world=1))]
fn prune_checkpoint<'py>(
    py: Python<'py>,
    input: PathBuf,
    output: PathBuf,
    request: &Request,
    selection: &Selection,
    stats: Option<PathBuf>,
    overwrite: bool,
    progress: Option<Py<PyAny>>,
    rank: usize,
    world: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let plan = Plan {
        request: request.inner.clone(),
        selection: selection.inner.clone(),
        stats,
        overwrite,
        part: Part::new(rank, world).map_err(|e| to_py(py, e))?,
    };
    let mut failure: Option<PyErr> = None;
    let mut on_progress = |event: Progress| match event {
        Progress::Start { tensors } => notify(&progress, &mut failure, "start", &start(tensors)),
        Progress::Tensor(report) => notify(&progress, &mut failure, "tensor", report),
    };
    let result = py.detach(|| ck::prune_checkpoint(&input, &output, &plan, &mut on_progress));
    conclude(py, result, failure)
}

/// The payload of a `"start"` event.
fn start(tensors: usize) -> BTreeMap<&'static str, usize> {
    BTreeMap::from([("tensors", tensors)])
}

/// Calls `progress(kind, payload)` (with the GIL); `false` once it raised
/// (or Ctrl-C arrived), the exception kept in `failure`, to stop the run.
fn notify<T: serde::Serialize>(
    progress: &Option<Py<PyAny>>,
    failure: &mut Option<PyErr>,
    kind: &str,
    payload: &T,
) -> bool {
    Python::attach(|py| {
        let called = match progress {
            Some(callback) => to_python(py, payload)
                .and_then(|payload| callback.call1(py, (kind, payload)).map(drop)),
            None => Ok(()),
        };
        match called.and_then(|()| py.check_signals()) {
            Ok(()) => true,
            Err(e) => {
                *failure = Some(e);
                false
            }
        }
    })
}

/// The report of a run, or the exception that stopped it, or its error.
fn conclude<'py, T: serde::Serialize>(
    py: Python<'py>,
    result: symprune_core::Result<T>,
    failure: Option<PyErr>,
) -> PyResult<Bound<'py, PyAny>> {
    match (result, failure) {
        (Ok(report), _) => to_python(py, &report),
        (Err(_), Some(stopped)) => Err(stopped),
        (Err(e), None) => Err(to_py(py, e)),
    }
}

/// Writes the pruned checkpoint `input` into `output` in a compressed-tensors
/// sparse `format` (`vocabulary()["save_formats"]`, not "dense"), compressing the tensors of
/// `selection`; returns the report. `progress(kind, payload)` hears
/// `"start"` (`{"tensors": N}`) and `"tensor"` (one compressed tensor).
#[pyfunction]
#[pyo3(signature = (input, output, format, selection, *, progress=None))]
fn compress_checkpoint<'py>(
    py: Python<'py>,
    input: PathBuf,
    output: PathBuf,
    format: &str,
    selection: &Selection,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let format = SaveFormat::parse(format).map_err(|e| to_py(py, e))?;
    let mut failure: Option<PyErr> = None;
    let mut on_progress = |event: CompressProgress| match event {
        CompressProgress::Start { tensors } => {
            notify(&progress, &mut failure, "start", &start(tensors))
        }
        CompressProgress::Tensor(entry) => notify(&progress, &mut failure, "tensor", entry),
    };
    let result = py.detach(|| {
        ck::compress_checkpoint(&input, &output, format, &selection.inner, &mut on_progress)
    });
    conclude(py, result, failure)
}

/// Writes the compressed-tensors sparse checkpoint `input` into `output` as
/// a dense one; returns the report.
#[pyfunction]
fn decompress_checkpoint(
    py: Python<'_>,
    input: PathBuf,
    output: PathBuf,
) -> PyResult<Bound<'_, PyAny>> {
    let result = py.detach(|| ck::decompress_checkpoint(&input, &output));
    conclude(py, result, None)
}

/// Finishes the output of a shard-parallel run once every part is done;
/// returns the finish report.
#[pyfunction]
fn finalize(py: Python<'_>, output: PathBuf) -> PyResult<Bound<'_, PyAny>> {
    let report = py
        .detach(|| ck::finalize(&output))
        .map_err(|e| to_py(py, e))?;
    to_python(py, &report)
}

/// Per-tensor sparsity of a checkpoint, and an N:M check when `pattern` is
/// one (other patterns have nothing to check).
#[pyfunction]
#[pyo3(signature = (path, selection, pattern=None))]
fn inspect<'py>(
    py: Python<'py>,
    path: PathBuf,
    selection: &Selection,
    pattern: Option<&str>,
) -> PyResult<Bound<'py, PyAny>> {
    let nm = match crate::ops::parse_pattern(py, pattern, None)? {
        Pattern::NM { n, m } if pattern.is_some() => Some((n, m)),
        _ => None,
    };
    let report = py
        .detach(|| ck::inspect(&path, nm, &selection.inner))
        .map_err(|e| to_py(py, e))?;
    to_python(py, &report)
}

/// Fails unless `path` may be written as an output file: it is not a file of
/// the checkpoint `input` (a hard link or link included), nor inside it.
#[pyfunction]
fn check_output_file(py: Python<'_>, path: PathBuf, input: PathBuf) -> PyResult<()> {
    py.detach(|| Protected::input(&input)?.check_file(&path))
        .map_err(|e| to_py(py, e))
}

/// Checks `path` as [`check_output_file`] does, then replaces it with `data`
/// through a new temporary file (never through a link), fsynced and renamed.
#[pyfunction]
fn write_output_file(py: Python<'_>, path: PathBuf, data: &[u8], input: PathBuf) -> PyResult<()> {
    py.detach(|| {
        Protected::input(&input)?.check_file(&path)?;
        fsutil::replace_file(&path, data)
    })
    .map_err(|e| to_py(py, e))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("MANIFEST_FILE", ck::MANIFEST_FILE)?;
    m.add_class::<Reader>()?;
    m.add_class::<Writer>()?;
    m.add_function(wrap_pyfunction!(prune_checkpoint, m)?)?;
    m.add_function(wrap_pyfunction!(finalize, m)?)?;
    m.add_function(wrap_pyfunction!(compress_checkpoint, m)?)?;
    m.add_function(wrap_pyfunction!(decompress_checkpoint, m)?)?;
    m.add_function(wrap_pyfunction!(inspect, m)?)?;
    m.add_function(wrap_pyfunction!(check_output_file, m)?)?;
    m.add_function(wrap_pyfunction!(write_output_file, m)?)?;
    Ok(())
}
