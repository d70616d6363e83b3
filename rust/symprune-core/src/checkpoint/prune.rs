//! Pruning a checkpoint shard by shard, one tensor at a time.
//!
//! Scores, masks and their application are the kernels of [`crate::score`]
//! and [`crate::mask`]. When a score and a pattern only look inside a row
//! (magnitude, wanda, owanda with per-row or N:M groups) a tensor is streamed
//! in blocks of rows, so memory does not grow with the tensor; otherwise the
//! whole tensor's scores and mask are held once, and written out in blocks.
//! A refinement (docs/methods.md §5, §7, §9) needs the whole tensor too: it
//! refines the mask with the statistics file's `sum`/`var` (DSnoT, R²-DSnoT)
//! or Gram matrix (`swaps`, R²-DSnoT's exact decision) before it is applied.

use super::journal::Part;
use super::reader::{Checkpoint, Shard, TensorInfo};
use super::selection::Selection;
use super::writer::{CheckpointWriter, WriterOptions};
use super::zeros::ZeroCount;
use crate::dsnot::{Layout, RefineStats};
use crate::dtype::{check_signed_stat, check_stat, Element, MatRef};
use crate::error::{Error, Result};
use crate::mask::{self, Pattern};
use crate::refine::{refine, RefineInputs};
use crate::rng::fnv1a64;
use crate::score::{self, ActStats, Score};
use crate::vocab::{Method, Refiner, Request};
use half::{bf16, f16};
use safetensors::Dtype;
use serde::Serialize;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Elements per streamed block: 16 MiB of f32 scores.
const BLOCK_ELEMS: usize = 1 << 22;

/// What to prune and how.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What to prune to; its method must be a score
    /// ([`Request::runs_shard_by_shard`]).
    pub request: Request,
    pub selection: Selection,
    /// Activation statistics (a safetensors file): for weight `X.weight`, F32
    /// vectors `X.in_sq`, `X.sum`, `X.var` (one per input) and `X.out_sq`
    /// (one per output), and for refiners that read it the Gram matrix
    /// `X.gram` (F32, inputs × inputs; `symprune calibrate --gram`).
    pub stats: Option<PathBuf>,
    /// Replace a finished output or discard an interrupted run of other settings.
    pub overwrite: bool,
    /// The shards this process prunes (all by default); a part leaves the
    /// output to [`super::writer::finalize`].
    pub part: Part,
}

/// One pruned tensor.
#[derive(Debug, Clone, Serialize)]
pub struct TensorReport {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: String,
    /// Fraction of exact zeros after pruning.
    pub sparsity: f64,
    pub zeros: u64,
    pub numel: u64,
    pub seconds: f64,
    /// Taken over from an interrupted run instead of computed.
    pub resumed: bool,
    /// The refiner's layer-wise loss `Σ_i L_i` (methods.md §9) before and
    /// after, where it computes it (swaps, R²-DSnoT's exact decision).
    pub loss_before: Option<f64>,
    pub loss_after: Option<f64>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tensors: Vec<TensorReport>,
    /// Zeros over the pruned tensors.
    pub achieved: ZeroCount,
    pub sparsity: f64,
    pub bytes_written: u64,
    pub resumed_shards: usize,
    /// Input files not copied (other weight formats, folders).
    pub skipped_files: Vec<String>,
    pub seconds: f64,
}

/// Progress events; the callback returns `false` to stop the run.
#[derive(Debug)]
pub enum Progress<'a> {
    Start { tensors: usize },
    Tensor(&'a TensorReport),
}

/// Whether each row's mask depends on that row alone.
fn row_local(score: &Score, pattern: Pattern) -> bool {
    matches!(score, Score::Magnitude | Score::Wanda | Score::OWanda)
        && matches!(pattern, Pattern::PerRow { .. } | Pattern::NM { .. })
}

/// The statistics of one weight.
struct Stats {
    /// Read by the score (`score_in_sq`) or the refiner, or both.
    in_sq: Option<Vec<f32>>,
    score_in_sq: bool,
    out_sq: Option<Vec<f32>>,
    /// The refiner's `sum` and `var` (DSnoT, R²-DSnoT).
    sum_var: Option<(Vec<f32>, Vec<f32>)>,
    /// Where the Gram matrix lies in the statistics file (checked up front,
    /// read when its tensor is pruned: all of them together may not fit).
    gram: Option<TensorInfo>,
}

impl Stats {
    fn refine_stats(&self) -> Option<RefineStats<'_>> {
        match (&self.in_sq, &self.sum_var) {
            (Some(in_sq), Some((sum, var))) => Some(RefineStats { in_sq, sum, var }),
            _ => None,
        }
    }
}

fn load_stats(
    file: Option<&Shard>,
    t: &TensorInfo,
    score: &Score,
    refiner: Option<&Refiner>,
) -> Result<Stats> {
    let method = score.name();
    let (score_in, need_out) = score.needs_stats();
    let refine_name = refiner.map(|r| format!("refine {}", r.name()));
    let need_sum_var = refiner.is_some_and(Refiner::needs_stats);
    let need_gram = refiner.is_some_and(Refiner::needs_gram);
    let need_in = score_in || need_sum_var;
    if !(need_in || need_out || need_gram) {
        return Ok(Stats {
            in_sq: None,
            score_in_sq: false,
            out_sq: None,
            sum_var: None,
            gram: None,
        });
    }
    let who = |by_score: bool| match (&refine_name, by_score) {
        (Some(r), false) => r.clone(),
        _ => method.to_string(),
    };
    let Some(file) = file else {
        let what = if score_in || need_out {
            format!("method {method}")
        } else {
            who(false)
        };
        return Err(Error::invalid(
            "stats",
            format!(
                "{what} needs activation statistics: give a statistics file (stats) \
                 from `symprune calibrate` (safetensors, X.in_sq / X.out_sq per weight X.weight; \
                 `--gram` adds the Gram matrix X.gram)"
            ),
        ));
    };
    let prefix = t.name.strip_suffix(".weight").unwrap_or(&t.name);
    let (rows, cols) = (t.shape[0], t.shape[1]);
    let find = |suffix: &str, shape: &[usize], by_score: bool| -> Result<&TensorInfo> {
        let key = format!("{prefix}.{suffix}");
        let hint = if suffix == "gram" {
            "run `symprune calibrate --gram` to store it"
        } else {
            "calibrate again"
        };
        let stat = file.get(&key).ok_or_else(|| {
            Error::tensor(
                &file.path,
                &t.name,
                format!(
                    "the statistics file has no {key} ({suffix} of this weight, needed by {}); \
                     {hint} or exclude the tensor with an ignore pattern",
                    who(by_score)
                ),
            )
        })?;
        if stat.dtype != Dtype::F32 || stat.shape != shape {
            return Err(Error::tensor(
                &file.path,
                &key,
                format!(
                    "is {} {:?}, expected F32 {shape:?} for weight {} {:?}; the statistics belong \
                     to another model",
                    stat.dtype, stat.shape, t.name, t.shape
                ),
            ));
        }
        Ok(stat)
    };
    let read = |suffix: &str, len: usize, by_score: bool| -> Result<Vec<f32>> {
        let stat = find(suffix, &[len], by_score)?;
        Ok(bytemuck::pod_collect_to_vec(file.data(stat)?))
    };
    let sum_var = need_sum_var
        .then(|| -> Result<_> {
            let (sum, var) = (read("sum", cols, false)?, read("var", cols, false)?);
            check_signed_stat(&sum, cols, &format!("{prefix}.sum"))?;
            check_stat(&var, cols, &format!("{prefix}.var"))?;
            Ok((sum, var))
        })
        .transpose()?;
    let gram = need_gram
        .then(|| -> Result<TensorInfo> {
            let stat = find("gram", &[cols, cols], false)?;
            let data = file.data(stat)?;
            let bad = data
                .chunks_exact(4)
                .position(|b| !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite());
            if let Some(k) = bad {
                return Err(Error::NonFinite {
                    arg: format!("{prefix}.gram"),
                    row: k / cols.max(1),
                    col: k % cols.max(1),
                    value: f32::from_le_bytes(data[4 * k..4 * k + 4].try_into().expect("4 bytes")),
                });
            }
            Ok(stat.clone())
        })
        .transpose()?;
    Ok(Stats {
        in_sq: need_in.then(|| read("in_sq", cols, score_in)).transpose()?,
        score_in_sq: score_in,
        out_sq: need_out.then(|| read("out_sq", rows, true)).transpose()?,
        sum_var,
        gram,
    })
}

/// Runs the kernels (and the refiner) once on a tiny matrix, so that a bad
/// parameter fails before the output directory is touched, with the
/// kernels' own message.
fn check_parameters(score: &Score, pattern: Pattern, refiner: Option<&Refiner>) -> Result<()> {
    let cols = match pattern {
        Pattern::NM { m, .. } => m.max(1),
        _ => 4,
    };
    let ones = vec![1.0f32; cols];
    let stats = ActStats {
        in_sq: Some(&ones),
        out_sq: Some(&ones[..1]),
    };
    let w = MatRef::new(&ones, 1, cols, "parameters")?;
    let scores = score::compute(w, stats, score, "parameters")?;
    let scores = MatRef::new(&scores, 1, cols, "parameters")?;
    let prune = mask::compute(scores, pattern, "parameters")?;
    if let Some(refiner) = refiner {
        let identity: Vec<f32> = (0..cols * cols)
            .map(|k| f32::from(u8::from(k % (cols + 1) == 0)))
            .collect();
        let layout = Layout::of(pattern);
        let inputs = RefineInputs {
            stats: refiner.needs_stats().then_some(RefineStats {
                in_sq: &ones,
                sum: &ones,
                var: &ones,
            }),
            gram: refiner
                .needs_gram()
                .then(|| MatRef::new(&identity, cols, cols, "parameters"))
                .transpose()?,
            initial_scores: initial_scores(refiner, layout, scores),
        };
        refine(w, &prune, refiner, layout, inputs, "parameters")?;
    }
    Ok(())
}

/// The initial method's scores where the refiner picks inside N:M groups by
/// them (DSnoT; methods.md §7).
fn initial_scores<'a>(
    refiner: &Refiner,
    layout: Layout,
    scores: MatRef<'a, f32>,
) -> Option<MatRef<'a, f32>> {
    (refiner.uses_initial_scores() && matches!(layout, Layout::NM { .. })).then_some(scores)
}

/// Error positions inside a block of rows, as positions in the tensor.
fn shift_rows(e: Error, first_row: usize) -> Error {
    match e {
        Error::NonFinite {
            arg,
            row,
            col,
            value,
        } => Error::NonFinite {
            arg,
            row: row + first_row,
            col,
            value,
        },
        other => other,
    }
}

/// A tensor's refinement: the refiner and the tensor's Gram matrix, if it reads one.
struct Refinement<'a> {
    refiner: &'a Refiner,
    gram: Option<&'a [f32]>,
}

/// Prunes one 2-D tensor of element type `T` and writes it; returns the
/// refiner's loss before and after, where it computes it.
fn prune_matrix<T: Element + bytemuck::Pod>(
    writer: &mut CheckpointWriter,
    shard: &Shard,
    t: &TensorInfo,
    stats: &Stats,
    score: &Score,
    pattern: Pattern,
    refinement: Option<Refinement>,
) -> Result<Option<(f64, f64)>> {
    let bytes = shard.data(t)?;
    // Shards rarely align tensors for T; then a copy replaces the mapped view.
    let data: Cow<[T]> = match bytemuck::try_cast_slice(bytes) {
        Ok(view) => Cow::Borrowed(view),
        Err(_) => Cow::Owned(bytemuck::pod_collect_to_vec(bytes)),
    };
    // Reading a mapped view again after the file shrank would be fatal.
    let intact = || match data {
        Cow::Borrowed(_) => shard.check_intact(),
        Cow::Owned(_) => Ok(()),
    };
    let (rows, cols, name) = (t.shape[0], t.shape[1], t.name.as_str());
    let size = std::mem::size_of::<T>();
    let block = (BLOCK_ELEMS / cols.max(1)).max(1);
    let release = |r0: usize, r1: usize| {
        shard.release(shard.offset(t) + r0 * cols * size, (r1 - r0) * cols * size)
    };
    let mut buf: Vec<T> = Vec::new();
    let mut write = |writer: &mut CheckpointWriter, r0: usize, r1: usize, prune: &[bool]| {
        intact()?;
        buf.clear();
        buf.extend_from_slice(&data[r0 * cols..r1 * cols]);
        mask::apply(&mut buf, prune)?;
        writer.write_tensor_at(name, r0 * cols * size, t.dtype, bytemuck::cast_slice(&buf))?;
        release(r0, r1);
        Ok::<(), Error>(())
    };
    let in_sq = stats.in_sq.as_deref().filter(|_| stats.score_in_sq);
    let mut loss = None;
    if refinement.is_none() && row_local(score, pattern) {
        for r0 in (0..rows).step_by(block) {
            let r1 = (r0 + block).min(rows);
            intact()?;
            let w = MatRef::new(&data[r0 * cols..r1 * cols], r1 - r0, cols, name)?;
            let prune = if *score == Score::Magnitude {
                let scores = score::magnitudes(w);
                mask::compute(MatRef::new(&scores, r1 - r0, cols, name)?, pattern, name)
                    // Named by the weight's own value, as the other scores do.
                    .map_err(|e| w.ensure_finite(name).err().unwrap_or(e))
            } else {
                let out_sq = stats.out_sq.as_deref().map(|o| &o[r0..r1]);
                let scores = score::compute(w, ActStats { in_sq, out_sq }, score, name)
                    .map_err(|e| shift_rows(e, r0))?;
                mask::compute(MatRef::new(&scores, r1 - r0, cols, name)?, pattern, name)
            }
            .map_err(|e| shift_rows(e, r0))?;
            write(writer, r0, r1, &prune)?;
        }
    } else {
        let w = MatRef::new(&data, rows, cols, name)?;
        let out_sq = stats.out_sq.as_deref();
        let scores = score::compute(w, ActStats { in_sq, out_sq }, score, name)?;
        let score_mat = MatRef::new(&scores, rows, cols, name)?;
        if refinement.is_none() {
            release(0, rows);
        }
        let mut prune = mask::compute(score_mat, pattern, name)?;
        if let Some(Refinement { refiner, gram }) = refinement {
            let layout = Layout::of(pattern);
            let inputs = RefineInputs {
                stats: stats.refine_stats(),
                gram: gram
                    .map(|g| MatRef::new(g, cols, cols, "gram"))
                    .transpose()?,
                initial_scores: initial_scores(refiner, layout, score_mat),
            };
            intact()?;
            let (refined, report) = refine(w, &prune, refiner, layout, inputs, name)?;
            release(0, rows);
            prune = refined;
            loss = report.loss();
        }
        drop(scores);
        for r0 in (0..rows).step_by(block) {
            let r1 = (r0 + block).min(rows);
            write(writer, r0, r1, &prune[r0 * cols..r1 * cols])?;
        }
    }
    Ok(loss)
}

/// The Gram matrix of `info` in the statistics file, as f32 (a view where
/// the file aligns it).
fn read_gram<'a>(file: &'a Shard, info: &TensorInfo) -> Result<Cow<'a, [f32]>> {
    file.check_intact()?;
    let bytes = file.data(info)?;
    Ok(match bytemuck::try_cast_slice(bytes) {
        Ok(view) => Cow::Borrowed(view),
        Err(_) => Cow::Owned(bytemuck::pod_collect_to_vec(bytes)),
    })
}

/// Prunes the checkpoint in `input` into `output` (see the module docs).
/// Everything is validated before the output is touched; `progress` hears
/// of every pruned tensor and can stop the run (an error; rerun to resume).
pub fn prune_checkpoint(
    input: &Path,
    output: &Path,
    plan: &Plan,
    progress: &mut dyn FnMut(Progress) -> bool,
) -> Result<Report> {
    let started = Instant::now();
    let request = &plan.request;
    let score = match &request.method {
        Method::Score(score) => score,
        Method::SparseGpt(_) => {
            return Err(Error::invalid(
                "method",
                format!(
                    "{} does not run shard by shard; it calibrates layer by layer",
                    request.method.name(),
                ),
            ))
        }
    };
    let refiner = request.refiner.as_ref();
    let pattern = request.pattern;
    check_parameters(score, pattern, refiner)?;
    let checkpoint = Arc::new(Checkpoint::open(input)?);
    let targets: Vec<(usize, &TensorInfo)> = checkpoint
        .shards
        .iter()
        .enumerate()
        .flat_map(|(s, shard)| shard.header.tensors.iter().map(move |t| (s, t)))
        .filter(|(_, t)| plan.selection.selects(t))
        .collect();
    if targets.is_empty() {
        return Err(Error::checkpoint(
            input,
            "no tensor matches the selection (2-D F32/F16/BF16 weights, by default the linear \
             layers of the decoder blocks); check targets/ignore against `symprune inspect`",
        ));
    }
    if let Pattern::NM { m, .. } = pattern {
        if let Some((_, t)) = targets.iter().find(|(_, t)| t.shape[1] % m != 0) {
            return Err(Error::tensor(
                input,
                &t.name,
                format!(
                    "has {} input columns, not a multiple of M = {m}; exclude it with an ignore \
                     pattern or use another pattern",
                    t.shape[1]
                ),
            ));
        }
    }

    let mut run = request.describe();
    run.insert("selection".into(), plan.selection.describe());
    if let Some(path) = &plan.stats {
        run.insert("stats".into(), path.display().to_string().into());
    }
    let reads_stats = score.needs_stats() != (false, false) || refiner.is_some();
    let stats_file = match &plan.stats {
        Some(path) if reads_stats => Some(Shard::open(path)?),
        _ => None,
    };
    // Loading every statistic once up front (the Gram matrices: checking
    // them) checks them all before writing.
    let stats = targets
        .iter()
        .map(|(_, t)| load_stats(stats_file.as_ref(), t, score, refiner))
        .collect::<Result<Vec<_>>>()?;
    let mut key = Map::new();
    key.insert("run".into(), Value::Object(run.clone()));
    if let Some(file) = &stats_file {
        let stats_id = fnv1a64(file.bytes());
        key.insert("stats".into(), format!("{stats_id:016x}").into());
    }
    let opts = WriterOptions {
        overwrite: plan.overwrite,
        run_key: Value::Object(key).to_string(),
        part: plan.part,
        stats: plan.stats.clone(),
    };
    let mut writer = CheckpointWriter::new(checkpoint.clone(), output, &opts)?;

    let interrupted = || {
        Error::checkpoint(
            output,
            "interrupted; run the same command again to resume where it stopped",
        )
    };
    // This part's targets (all of them unless shard-parallel), by index into `targets`.
    let mine: Vec<usize> = (0..targets.len())
        .filter(|&k| plan.part.owns(targets[k].0))
        .collect();
    if !progress(Progress::Start {
        tensors: mine.len(),
    }) {
        return Err(interrupted());
    }
    let mut reports = Vec::with_capacity(mine.len());
    let mut next = 0;
    for (s, shard) in checkpoint.shards.iter().enumerate() {
        if !plan.part.owns(s) {
            continue;
        }
        let resumed = writer.is_resumed(s);
        while next < mine.len() && targets[mine[next]].0 == s {
            let (k, t) = (mine[next], targets[mine[next]].1);
            let clock = Instant::now();
            let mut loss = None;
            if !resumed {
                let gram = match (&stats_file, &stats[k].gram) {
                    (Some(file), Some(info)) => Some(read_gram(file, info)?),
                    _ => None,
                };
                let refinement = refiner.map(|refiner| Refinement {
                    refiner,
                    gram: gram.as_deref(),
                });
                let st = &stats[k];
                loss = match t.dtype {
                    Dtype::F32 => {
                        prune_matrix::<f32>(&mut writer, shard, t, st, score, pattern, refinement)?
                    }
                    Dtype::F16 => {
                        prune_matrix::<f16>(&mut writer, shard, t, st, score, pattern, refinement)?
                    }
                    Dtype::BF16 => {
                        prune_matrix::<bf16>(&mut writer, shard, t, st, score, pattern, refinement)?
                    }
                    other => unreachable!("the selection only picks float tensors, not {other}"),
                };
            }
            let count = writer.zeros(&t.name).unwrap_or_default();
            let report = TensorReport {
                name: t.name.clone(),
                shape: t.shape.clone(),
                dtype: t.dtype_name(),
                sparsity: count.sparsity(),
                zeros: count.zeros,
                numel: count.numel,
                seconds: clock.elapsed().as_secs_f64(),
                resumed,
                loss_before: loss.map(|l| l.0),
                loss_after: loss.map(|l| l.1),
            };
            if !progress(Progress::Tensor(&report)) {
                return Err(interrupted());
            }
            reports.push(report);
            next += 1;
        }
        writer.close_shard(s)?;
    }
    let finished = writer.finish(&run)?;
    let achieved = reports
        .iter()
        .fold(ZeroCount::default(), |acc, r| ZeroCount {
            zeros: acc.zeros + r.zeros,
            numel: acc.numel + r.numel,
        });
    Ok(Report {
        tensors: reports,
        sparsity: achieved.sparsity(),
        achieved,
        bytes_written: finished.bytes_written,
        resumed_shards: finished.resumed_shards,
        skipped_files: finished.skipped_files,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::testutil::{checkpoint, shard, values};
    use crate::checkpoint::{index::INDEX_FILE, manifest::MANIFEST_FILE};
    use std::fs;

    fn request(method: &str, sparsity: f64) -> Request {
        let none = crate::vocab::Params::new();
        Request::new(Some(method), &none, None, Some(sparsity), None, &none).unwrap()
    }

    fn plan(overwrite: bool) -> Plan {
        Plan {
            request: request("symmetric", 0.5),
            selection: Selection::default(),
            stats: None,
            overwrite,
            part: Part::default(),
        }
    }

    fn run(input: &Path, output: &Path, plan: &Plan) -> Result<Report> {
        prune_checkpoint(input, output, plan, &mut |_| true)
    }

    fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    fs::read(&p).unwrap(),
                )
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn prunes_selected_tensors_and_copies_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let (input, output) = (tmp.path().join("in"), tmp.path().join("out"));
        checkpoint(&input);
        let before = tree(&input);
        let report = run(&input, &output, &plan(false)).unwrap();
        assert_eq!(tree(&input), before);
        assert_eq!(report.tensors.len(), 3);
        assert!(report.tensors.iter().all(|t| t.sparsity == 0.5));

        let (a, b) = (
            Checkpoint::open(&input).unwrap(),
            Checkpoint::open(&output).unwrap(),
        );
        for (s, t) in a.tensors() {
            let got = b.tensor(&t.name).unwrap().data;
            if !plan(false).selection.selects(t) {
                assert_eq!(got, s.data(t).unwrap(), "{}", t.name);
                continue;
            }
            let (rows, cols) = (t.shape[0], t.shape[1]);
            let w: Vec<f32> = match t.dtype {
                Dtype::BF16 => bytemuck::pod_collect_to_vec::<u8, bf16>(s.data(t).unwrap())
                    .iter()
                    .map(|x| x.to_f32())
                    .collect(),
                _ => bytemuck::pod_collect_to_vec(s.data(t).unwrap()),
            };
            let m = MatRef::new(&w, rows, cols, "w").unwrap();
            let scores = score::compute(m, ActStats::default(), &Score::Symmetric, "").unwrap();
            let prune = mask::compute(
                MatRef::new(&scores, rows, cols, "s").unwrap(),
                plan(false).request.pattern,
                "",
            )
            .unwrap();
            let mut want = s.data(t).unwrap().to_vec();
            let size = want.len() / w.len();
            for (k, p) in prune.iter().enumerate() {
                if *p {
                    want[k * size..(k + 1) * size].fill(0);
                }
            }
            assert_eq!(got, &want[..], "{}", t.name);
        }
        for (s_in, s_out) in a.shards.iter().zip(&b.shards) {
            assert_eq!(s_in.header_bytes(), s_out.header_bytes());
        }
        assert_eq!(fs::read(output.join("config.json")).unwrap(), b"{}");
        let index: Value =
            serde_json::from_slice(&fs::read(output.join(INDEX_FILE)).unwrap()).unwrap();
        let total: usize = a.tensors().map(|(_, t)| t.nbytes()).sum();
        assert_eq!(index["metadata"]["total_size"], total);
        let manifest: Value =
            serde_json::from_slice(&fs::read(output.join(MANIFEST_FILE)).unwrap()).unwrap();
        assert_eq!(manifest["method"], "symmetric");
        assert_eq!(
            manifest["tensors"]["model.layers.0.mlp.up_proj.weight"]["sparsity"],
            0.5
        );
        assert!(!output.join(".symprune-journal.json").exists());

        let e = run(&input, &output, &plan(false)).unwrap_err().to_string();
        assert!(
            e.contains("already holds a finished pruned checkpoint"),
            "{e}"
        );
        run(&input, &output, &plan(true)).unwrap();
        let e = run(&input, &input.join("sub"), &plan(false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("inside it"), "{e}");
        assert_eq!(tree(&input), before);
    }

    #[test]
    fn an_interrupted_run_resumes_to_identical_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let (input, once, twice) = (
            tmp.path().join("in"),
            tmp.path().join("a"),
            tmp.path().join("b"),
        );
        checkpoint(&input);
        run(&input, &once, &plan(false)).unwrap();
        // Stop after the first tensor of the second shard.
        let mut seen = 0;
        let e = prune_checkpoint(&input, &twice, &plan(false), &mut |p| {
            seen += matches!(p, Progress::Tensor(_)) as usize;
            seen < 2
        })
        .unwrap_err();
        assert!(e.to_string().contains("interrupted"));
        assert!(!twice.join(MANIFEST_FILE).exists() && !twice.join("config.json").exists());
        assert!(twice.join("model-00001-of-00002.safetensors").exists());
        let other = Plan {
            request: request("symmetric", 0.25),
            ..plan(false)
        };
        let e = run(&input, &twice, &other).unwrap_err().to_string();
        assert!(e.contains("interrupted run with other settings"), "{e}");
        let report = run(&input, &twice, &plan(false)).unwrap();
        assert_eq!(report.resumed_shards, 1);
        assert_eq!(tree(&once), tree(&twice));
    }

    #[test]
    fn tensors_without_elements_pass_through_and_huge_dimensions_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (input, out) = (tmp.path().join("in"), tmp.path().join("out"));
        fs::create_dir_all(&input).unwrap();
        let up = "model.layers.0.mlp.up_proj.weight";
        let down = "model.layers.0.mlp.down_proj.weight";
        let up_bytes: Vec<u8> = values(32, 1).iter().flat_map(|x| x.to_le_bytes()).collect();
        let model = input.join("model.safetensors");
        shard(
            &model,
            &[
                (up, "F32", vec![4, 8], up_bytes.clone()),
                (down, "F32", vec![0, 8], vec![]),
            ],
        );
        let report = run(&input, &out, &plan(false)).unwrap();
        assert_eq!(report.tensors.len(), 1);
        assert_eq!(report.tensors[0].name, up);
        let pruned = Checkpoint::open(&out).unwrap();
        assert_eq!(pruned.tensor(down).unwrap().info.shape, [0, 8]);
        assert_eq!(
            fs::metadata(out.join("model.safetensors")).unwrap().len(),
            fs::metadata(&model).unwrap().len()
        );

        // The product of a zero and 2^64 - 1 matches the 0 bytes stored.
        shard(&model, &[(down, "F32", vec![0, usize::MAX], vec![])]);
        for method in ["magnitude", "wanda", "ria"] {
            let plan = Plan {
                request: request(method, 0.5),
                ..plan(true)
            };
            let e = run(&input, &out, &plan).unwrap_err().to_string();
            assert!(
                e.contains(&format!("tensor {down}: shape [0, {}]", usize::MAX)),
                "{e}"
            );
        }
        let e = crate::checkpoint::inspect(&input, Some((2, 4)), &Selection::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("has dimensions beyond any file's size"), "{e}");
    }

    #[test]
    fn missing_statistics_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("in");
        checkpoint(&input);
        let wanda = Plan {
            request: request("wanda", 0.5),
            ..plan(false)
        };
        let e = run(&input, &tmp.path().join("o"), &wanda)
            .unwrap_err()
            .to_string();
        assert!(e.contains("give a statistics file (stats)"), "{e}");
        let stats = tmp.path().join("stats.safetensors");
        shard(
            &stats,
            &[(
                "model.layers.0.self_attn.q_proj.in_sq",
                "F32",
                vec![8],
                vec![0; 32],
            )],
        );
        let wanda = Plan {
            stats: Some(stats),
            ..wanda
        };
        let e = run(&input, &tmp.path().join("o"), &wanda)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model.layers.0.mlp.up_proj.weight")
                && e.contains("no model.layers.0.mlp.up_proj.in_sq"),
            "{e}"
        );
        assert!(!tmp.path().join("o").exists());
    }

    /// Per linear of [`checkpoint`]: `in_sq`, `sum`, `var` and a correlated
    /// Gram matrix `XᵀX`, minus the keys ending in `drop`.
    fn refine_stats(input: &Path, path: &Path, drop: &str) {
        let ck = Checkpoint::open(input).unwrap();
        let mut entries = Vec::new();
        for (k, (_, t)) in ck
            .tensors()
            .filter(|(_, t)| Selection::default().selects(t))
            .enumerate()
        {
            let cols = t.shape[1];
            let prefix = t.name.strip_suffix(".weight").unwrap().to_string();
            let x = values(3 * cols * cols, 40 + k as u64);
            let x: Vec<f32> = (0..3 * cols * cols)
                .map(|i| x[i] + 0.5 * x[i - i % cols])
                .collect();
            let mut gram = vec![0f32; cols * cols];
            for r in x.chunks(cols) {
                for p in 0..cols {
                    for q in 0..cols {
                        gram[p * cols + q] += r[p] * r[q];
                    }
                }
            }
            let positive: Vec<f32> = values(cols, 60 + k as u64)
                .iter()
                .map(|v| v + 0.6)
                .collect();
            for (suffix, v, shape) in [
                ("in_sq", positive.clone(), vec![cols]),
                ("sum", values(cols, 80 + k as u64), vec![cols]),
                (
                    "var",
                    positive.iter().map(|v| v * 0.5).collect(),
                    vec![cols],
                ),
                ("gram", gram, vec![cols, cols]),
            ] {
                if !suffix.ends_with(drop) || drop.is_empty() {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    entries.push((format!("{prefix}.{suffix}"), shape, bytes));
                }
            }
        }
        let entries: Vec<Entry> = entries
            .iter()
            .map(|(n, s, b)| (n.as_str(), "F32", s.clone(), b.clone()))
            .collect();
        shard(path, &entries);
    }

    type Entry<'a> = (&'a str, &'a str, Vec<usize>, Vec<u8>);

    #[test]
    fn refined_runs_match_the_kernels_and_name_a_missing_gram() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("in");
        checkpoint(&input);
        let stats = tmp.path().join("stats.safetensors");
        refine_stats(&input, &stats, "");
        let none = crate::vocab::Params::new();
        for (refine_name, pattern) in [
            ("swaps", None),
            ("swaps", Some("2:4")),
            ("dsnot", None),
            ("dsnot", Some("2:4")),
            ("r2dsnot", None),
        ] {
            let request =
                Request::new(None, &none, pattern, Some(0.5), Some(refine_name), &none).unwrap();
            let out = tmp.path().join(format!("{refine_name}-{pattern:?}"));
            let plan = Plan {
                request: request.clone(),
                stats: Some(stats.clone()),
                ..plan(false)
            };
            let report = run(&input, &out, &plan).unwrap();
            assert_eq!(report.tensors.len(), 3);
            let (a, b, st) = (
                Checkpoint::open(&input).unwrap(),
                Checkpoint::open(&out).unwrap(),
                Shard::open(&stats).unwrap(),
            );
            let mut refined = 0;
            for t in &report.tensors {
                let (s, info) = a.get(&t.name).unwrap();
                let (rows, cols) = (info.shape[0], info.shape[1]);
                let w: Vec<f32> = match info.dtype {
                    Dtype::BF16 => bytemuck::pod_collect_to_vec::<u8, bf16>(s.data(info).unwrap())
                        .iter()
                        .map(|x| x.to_f32())
                        .collect(),
                    _ => bytemuck::pod_collect_to_vec(s.data(info).unwrap()),
                };
                let prefix = t.name.strip_suffix(".weight").unwrap();
                let stat = |suffix: &str| -> Vec<f32> {
                    let key = format!("{prefix}.{suffix}");
                    bytemuck::pod_collect_to_vec(st.data(st.get(&key).unwrap()).unwrap())
                };
                let (in_sq, sum, var, gram) =
                    (stat("in_sq"), stat("sum"), stat("var"), stat("gram"));
                let m = MatRef::new(&w, rows, cols, "w").unwrap();
                let acts = ActStats {
                    in_sq: Some(&in_sq),
                    out_sq: None,
                };
                let scores = score::compute(m, acts, &Score::Wanda, "").unwrap();
                let scores = MatRef::new(&scores, rows, cols, "s").unwrap();
                let initial = mask::compute(scores, request.pattern, "").unwrap();
                let layout = Layout::of(request.pattern);
                let refiner = request.refiner.as_ref().unwrap();
                let inputs = RefineInputs {
                    stats: Some(RefineStats {
                        in_sq: &in_sq,
                        sum: &sum,
                        var: &var,
                    }),
                    gram: Some(MatRef::new(&gram, cols, cols, "g").unwrap()),
                    initial_scores: initial_scores(refiner, layout, scores),
                };
                let (prune, done) = refine(m, &initial, refiner, layout, inputs, "").unwrap();
                refined += usize::from(prune != initial);
                assert_eq!(t.loss_before, done.loss().map(|l| l.0), "{}", t.name);
                assert_eq!(t.loss_after, done.loss().map(|l| l.1), "{}", t.name);
                let mut want = s.data(info).unwrap().to_vec();
                let size = want.len() / w.len();
                for (k, p) in prune.iter().enumerate() {
                    if *p {
                        want[k * size..(k + 1) * size].fill(0);
                    }
                }
                let got = b.tensor(&t.name).unwrap().data;
                assert_eq!(got, &want[..], "{refine_name} {pattern:?} {}", t.name);
            }
            if refine_name == "swaps" {
                assert!(refined > 0, "swaps changed no mask");
                assert!(report.tensors.iter().all(|t| t.loss_after <= t.loss_before));
            }
        }

        let bare = tmp.path().join("bare.safetensors");
        refine_stats(&input, &bare, "gram");
        let none_gram = Plan {
            request: Request::new(None, &none, None, None, Some("swaps"), &none).unwrap(),
            stats: Some(bare.clone()),
            ..plan(false)
        };
        let out = tmp.path().join("o");
        let e = run(&input, &out, &none_gram).unwrap_err().to_string();
        assert!(
            e.contains("tensor model.layers.0.self_attn.q_proj.weight")
                && e.contains("no model.layers.0.self_attn.q_proj.gram")
                && e.contains("refine swaps")
                && e.contains("symprune calibrate --gram"),
            "{e}"
        );
        assert!(!out.exists());
        // DSnoT reads no Gram matrix; missing `var` is named instead.
        let dsnot = Plan {
            request: Request::new(None, &none, None, None, Some("dsnot"), &none).unwrap(),
            ..none_gram.clone()
        };
        run(&input, &out, &dsnot).unwrap();
        refine_stats(&input, &bare, "var");
        let e = run(&input, &tmp.path().join("o2"), &dsnot)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no model.layers.0.self_attn.q_proj.var"), "{e}");
        let no_file = Plan {
            stats: None,
            request: Request::new(Some("magnitude"), &none, None, None, Some("swaps"), &none)
                .unwrap(),
            ..none_gram
        };
        let e = run(&input, &tmp.path().join("o2"), &no_file)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("refine swaps needs activation statistics"),
            "{e}"
        );
        assert!(!tmp.path().join("o2").exists());
    }

    #[test]
    fn shard_parallel_parts_finalize_to_identical_bytes() {
        use crate::checkpoint::writer::finalize;
        let tmp = tempfile::tempdir().unwrap();
        let (input, whole, parts) = (
            tmp.path().join("in"),
            tmp.path().join("whole"),
            tmp.path().join("parts"),
        );
        checkpoint(&input);
        run(&input, &whole, &plan(false)).unwrap();
        let part = |rank| Plan {
            part: Part::new(rank, 2).unwrap(),
            ..plan(false)
        };
        // Rank 1 first: a part never waits for, or removes, another's files.
        let one = run(&input, &parts, &part(1)).unwrap();
        assert_eq!(one.tensors.len(), 2);
        assert!(!parts.join(MANIFEST_FILE).exists());
        let e = finalize(&parts).unwrap_err().to_string();
        assert!(
            e.contains("model-00001-of-00002.safetensors (rank 0)"),
            "{e}"
        );
        let zero = run(&input, &parts, &part(0)).unwrap();
        assert_eq!(zero.tensors.len(), 1);
        let done = finalize(&parts).unwrap();
        assert_eq!(done.tensors.len(), 3);
        assert_eq!(tree(&whole), tree(&parts));
        let e = finalize(&parts).unwrap_err().to_string();
        assert!(e.contains("already finished"), "{e}");
        assert!(Part::new(2, 2).is_err());
    }

    #[test]
    fn a_part_refuses_another_runs_output_and_resumes_its_own() {
        use crate::checkpoint::writer::finalize;
        let tmp = tempfile::tempdir().unwrap();
        let (input, out) = (tmp.path().join("in"), tmp.path().join("out"));
        checkpoint(&input);
        let part = |rank, sparsity, overwrite| Plan {
            part: Part::new(rank, 2).unwrap(),
            request: request("symmetric", sparsity),
            ..plan(overwrite)
        };
        run(&input, &out, &part(0, 0.25, false)).unwrap();
        let e = run(&input, &out, &part(1, 0.5, false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("interrupted run with other settings"), "{e}");
        run(&input, &out, &part(1, 0.5, true)).unwrap();
        // Rank 0's shard of the other settings went with its journal.
        let e = finalize(&out).unwrap_err().to_string();
        assert!(e.contains("(rank 0)"), "{e}");
        let again = run(&input, &out, &part(1, 0.5, false)).unwrap();
        assert!(again.tensors.iter().all(|t| t.resumed));
        run(&input, &out, &part(0, 0.5, false)).unwrap();
        finalize(&out).unwrap();
        let whole = tmp.path().join("whole");
        run(&input, &whole, &plan(false)).unwrap();
        assert_eq!(tree(&whole), tree(&out));
    }
}
