//! Writing a pruned checkpoint by in-place substitution.
//!
//! Pruning never changes a tensor's name, shape or dtype, so every output
//! shard has exactly its input shard's header and offsets: the writer puts
//! pruned bytes at their offsets in `.<shard>.tmp` and, when the shard is
//! closed, has the kernel copy everything else (the header and every tensor
//! not written) from the input. A closed shard is fsynced, renamed into place
//! and recorded in the [journal](super::journal), so a re-run after an
//! interruption skips it and redoes only unfinished shards; pruning is
//! deterministic, so the result is byte-identical to an uninterrupted run.
//! `sparsity.json` is written last and marks the output finished.
//!
//! Nothing outside the output is ever written (see [`super::fsutil`]): the
//! output may not be, contain or share a file with the input or the
//! statistics; it is a directory symprune created (or found empty), locked
//! while a run writes it. Overwriting a finished output stages the new one
//! in a sibling directory, swapped in when it is finished, so a failed or
//! killed overwrite leaves the old output as it was (and rerun, resumes).
//!
//! Shard-parallel runs: a writer for one [`Part`] writes only its shards and
//! keeps its own journal; [`finalize`] then finishes the output from the
//! parts' journals, as a writer resuming every shard would.

use super::fsutil::{self, is_temp, LockRange, OwnedDir, Protected, MARKER_FILE};
use super::index::INDEX_FILE;
use super::journal::{is_journal, read_journals, Journal, Part};
use super::manifest::{self, MANIFEST_FILE};
use super::reader::{Checkpoint, Shard, TensorInfo};
use super::zeros::{count_zeros, ZeroCount};
use crate::error::{Error, Result};
use crate::rng::fnv1a64;
use safetensors::Dtype;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Extensions of weight files that are not copied next to the pruned model:
/// dense weights in another format would contradict the pruned ones.
const WEIGHT_EXTENSIONS: [&str; 10] = [
    "safetensors",
    "bin",
    "pt",
    "pth",
    "ckpt",
    "gguf",
    "h5",
    "msgpack",
    "onnx",
    "npz",
];

/// How to treat an existing output directory.
#[derive(Debug, Clone, Default)]
pub struct WriterOptions {
    /// Replace a finished output, or discard an interrupted run of other settings.
    pub overwrite: bool,
    /// Identifies the run's settings: an interrupted run is resumed only by a
    /// writer with the same, non-empty key (and the same input).
    pub run_key: String,
    /// The shards this writer writes (all by default).
    pub part: Part,
    /// The statistics file the run reads, which the output must not touch.
    pub stats: Option<PathBuf>,
}

#[derive(Debug)]
enum ShardState {
    Pending,
    Open {
        file: File,
        /// Per written tensor: bytes written so far and their zeros.
        written: BTreeMap<String, (usize, ZeroCount)>,
    },
    Closed,
    /// Finished by an earlier, interrupted run.
    Resumed,
    /// Another part's shard.
    Elsewhere,
}

/// What [`CheckpointWriter::finish`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FinishReport {
    /// Bytes written into the output directory by this run.
    pub bytes_written: u64,
    /// Shards taken over from an interrupted run.
    pub resumed_shards: usize,
    /// Files of the input directory not copied (other weight formats, folders).
    pub skipped_files: Vec<String>,
    /// Every written tensor's zeros (this run's and the resumed shards').
    pub tensors: BTreeMap<String, ZeroCount>,
}

/// Writes a pruned copy of a checkpoint; see the module documentation.
#[derive(Debug)]
pub struct CheckpointWriter {
    input: Arc<Checkpoint>,
    /// The output directory (resolved), named in messages.
    out: PathBuf,
    /// Where the files go: `out`, or the staging sibling of a finished `out`
    /// that this run replaces.
    dir: OwnedDir,
    /// The finished output that `dir` replaces when finished, locked meanwhile.
    replaces: Option<OwnedDir>,
    states: Vec<ShardState>,
    journal: Journal,
    bytes_written: u64,
    /// `dir` still holds a previous run's files (see [`Self::new`]).
    stale: bool,
    finished: bool,
}

impl CheckpointWriter {
    /// Opens the input checkpoint and prepares `output_dir`: a fresh run, a
    /// resumed one (same input, same non-empty `run_key`), or an error when
    /// the directory holds something else and `overwrite` is off. With
    /// `overwrite`, a finished output is replaced when this run finishes, an
    /// unfinished one's files are removed at this run's first write.
    pub fn create(input_dir: &Path, output_dir: &Path, opts: &WriterOptions) -> Result<Self> {
        Self::new(Arc::new(Checkpoint::open(input_dir)?), output_dir, opts)
    }

    /// [`create`](Self::create) for an input checkpoint already open.
    pub fn new(input: Arc<Checkpoint>, output_dir: &Path, opts: &WriterOptions) -> Result<Self> {
        if output_dir.as_os_str().is_empty() {
            return Err(Error::invalid(
                "output",
                "is an empty path; name the output directory (\".\" for the current one)",
            ));
        }
        let mut protected = Protected::input(&input.dir)?;
        if let Some(stats) = &opts.stats {
            protected = protected.with_file(stats, "the statistics file");
        }
        let out = fsutil::resolve(output_dir);
        protected.check_dir(&out)?;
        let part = opts.part;
        let range = if part.is_whole() {
            LockRange::Whole
        } else {
            LockRange::Part(part.rank)
        };
        let dest = OwnedDir::claim(&out, range)?;
        protected.check_dir(&out)?; // what it holds, now that it surely exists
        let again =
            "pass overwrite (--overwrite) to replace it, or choose another output directory";
        let (dir, replaces) = if out.join(MANIFEST_FILE).exists() {
            if !opts.overwrite {
                return Err(Error::checkpoint(
                    &out,
                    format!(
                        "already holds a finished pruned checkpoint ({MANIFEST_FILE}); {again}"
                    ),
                ));
            }
            let staged = stage_beside(&out, range)?;
            protected.check_dir(staged.path())?;
            (staged, Some(dest))
        } else {
            (dest, None)
        };
        let target = dir.path().to_path_buf();

        let mut journal = Journal {
            input: fingerprint(&input)?,
            run: opts.run_key.clone(),
            input_dir: fsutil::resolve(&input.dir),
            part,
            manifest: None,
            done: BTreeMap::new(),
        };
        // The journals of this run (any part of it) are resumed; another run's are in the way.
        let (same, other): (Vec<_>, Vec<_>) = read_journals(&target)?
            .into_iter()
            .partition(|(_, j)| j.as_ref().is_some_and(|j| journal.continues(j)));
        // What a previous run left is removed only when this run first writes,
        // so a run that fails before writing leaves the output as it was.
        let mut stale = false;
        if target.join(MANIFEST_FILE).exists() {
            // Only a staging directory can hold one here: an output replaced
            // by an interrupted swap.
            stale = true;
        } else if !other.is_empty() {
            // Nothing finished yet means nothing to lose.
            let lost = other
                .iter()
                .any(|(_, j)| !matches!(j, Some(j) if j.done.is_empty()));
            if lost && !opts.overwrite {
                return Err(Error::checkpoint(
                    &out,
                    format!("{}; {again}", not_resumable(&other, &journal)),
                ));
            }
            stale = true;
        } else if same.is_empty()
            && holds_files(&target, &|name| {
                name == MARKER_FILE
                    || part.may_find(&input, name)
                    || (!part.is_whole() && is_journal(name))
            })?
        {
            if !opts.overwrite {
                return Err(Error::checkpoint(
                    &out,
                    format!("exists and is not empty; {again}"),
                ));
            }
            stale = true;
        }

        let mut resumable: BTreeMap<_, _> = same
            .into_iter()
            .flat_map(|(_, j)| j.map(|j| j.done).unwrap_or_default())
            .collect();
        let mut states = Vec::with_capacity(input.shards.len());
        for (s, shard) in input.shards.iter().enumerate() {
            if !part.owns(s) {
                states.push(ShardState::Elsewhere);
                continue;
            }
            // A shard counts as finished only if it is in place, whole, with its header.
            match resumable.remove(&shard.file) {
                Some(counts) if in_place(&target, shard) => {
                    journal.done.insert(shard.file.clone(), counts);
                    states.push(ShardState::Resumed);
                }
                _ => states.push(ShardState::Pending),
            }
        }
        let writer = CheckpointWriter {
            input,
            out,
            dir,
            replaces,
            states,
            journal,
            bytes_written: 0,
            stale,
            finished: false,
        };
        if !stale {
            writer.journal.save(writer.dir.path())?;
        }
        Ok(writer)
    }

    /// The input checkpoint.
    pub fn input(&self) -> &Arc<Checkpoint> {
        &self.input
    }

    /// The zeros written so far into `name` (also for resumed shards).
    pub fn zeros(&self, name: &str) -> Option<ZeroCount> {
        let s = self.input.shard_of(name)?;
        match &self.states[s] {
            ShardState::Open { written, .. } => written.get(name).map(|(_, c)| *c),
            _ => self
                .journal
                .done
                .get(&self.input.shards[s].file)?
                .get(name)
                .copied(),
        }
    }

    /// The output directory.
    pub fn output(&self) -> &Path {
        &self.out
    }

    /// Whether `shard` (an index into `input().shards`) was finished by an
    /// interrupted earlier run; its tensors need not be computed again.
    pub fn is_resumed(&self, shard: usize) -> bool {
        matches!(self.states.get(shard), Some(ShardState::Resumed))
    }

    /// Writes all of a tensor's bytes (same dtype and length as in the input).
    pub fn write_tensor(&mut self, name: &str, dtype: Dtype, bytes: &[u8]) -> Result<()> {
        let (_, info) = self.locate(name)?;
        if bytes.len() != info.nbytes() {
            return Err(Error::tensor(
                &self.out,
                name,
                format!(
                    "{} bytes given, the checkpoint holds {} (shape {:?}, {}); pruning must not \
                     change shapes",
                    bytes.len(),
                    info.nbytes(),
                    info.shape,
                    info.dtype
                ),
            ));
        }
        self.write_tensor_at(name, 0, dtype, bytes)
    }

    /// Writes the next part of a tensor, `offset` bytes into it: parts must
    /// come in order, without gaps, and whole elements at a time.
    pub fn write_tensor_at(
        &mut self,
        name: &str,
        offset: usize,
        dtype: Dtype,
        bytes: &[u8],
    ) -> Result<()> {
        let (s, info) = self.locate(name)?;
        let info = info.clone();
        let err = |msg: String| Error::tensor(&self.out, name, msg);
        if dtype != info.dtype {
            return Err(err(format!(
                "is {} in the checkpoint but {dtype} was given; pruning must not change dtypes",
                info.dtype
            )));
        }
        match &self.states[s] {
            ShardState::Resumed => return Ok(()),
            ShardState::Closed => {
                return Err(err(format!(
                    "its shard {} is already closed",
                    self.input.shards[s].file
                )))
            }
            ShardState::Elsewhere => return Err(self.elsewhere(s, name)),
            _ => {}
        }
        let elem = (info.dtype.bitsize() / 8).max(1);
        let file_offset = self.input.shards[s].offset(&info);
        self.open_shard(s)?;
        let ShardState::Open { file, written } = &mut self.states[s] else {
            unreachable!("opened above")
        };
        let (done, zeros) = written.get(name).copied().unwrap_or_default();
        if offset != done || bytes.len() > info.nbytes() - done || bytes.len() % elem != 0 {
            return Err(Error::tensor(
                &self.out,
                name,
                format!(
                    "part of {} bytes at offset {offset} does not continue the {done} bytes \
                     written so far (of {}) in whole {elem}-byte elements",
                    bytes.len(),
                    info.nbytes()
                ),
            ));
        }
        let tmp = fsutil::temp_path(self.dir.path(), &self.input.shards[s].file);
        let at = (file_offset + offset) as u64;
        file.write_all_at(bytes, at).map_err(Error::io(&tmp))?;
        fsutil::start_writeback(file, at, bytes.len() as u64);
        let part = count_zeros(info.dtype, bytes).unwrap_or(0);
        let count = ZeroCount {
            zeros: zeros.zeros + part,
            numel: info.numel() as u64,
        };
        written.insert(name.to_string(), (done + bytes.len(), count));
        self.bytes_written += bytes.len() as u64;
        Ok(())
    }

    /// Completes shard `s`: copies everything not written from the input,
    /// fsyncs, renames it into place and records it in the journal.
    pub fn close_shard(&mut self, s: usize) -> Result<()> {
        match self.states[s] {
            ShardState::Closed | ShardState::Resumed => return Ok(()),
            ShardState::Elsewhere => return Err(self.elsewhere(s, "")),
            _ => {}
        }
        self.open_shard(s)?;
        let shard = &self.input.shards[s];
        let dir = self.dir.path();
        let tmp = fsutil::temp_path(dir, &shard.file);
        let ShardState::Open { file, written } = &self.states[s] else {
            unreachable!("opened above")
        };
        // The byte ranges written, in file order, must each be a whole tensor.
        let mut covered = Vec::with_capacity(written.len());
        for t in &shard.header.tensors {
            if let Some((done, _)) = written.get(&t.name) {
                if *done != t.nbytes() {
                    return Err(Error::tensor(
                        &self.out,
                        &t.name,
                        format!(
                            "only {done} of its {} bytes were written; write the whole tensor \
                             before closing shard {}",
                            t.nbytes(),
                            shard.file
                        ),
                    ));
                }
                let start = shard.offset(t);
                covered.push((start, start + t.nbytes()));
            }
        }
        let mut pos = 0usize;
        for (start, end) in covered.into_iter().chain([(shard.len(), shard.len())]) {
            if start > pos {
                fsutil::copy_range(shard.handle(), file, pos as u64, (start - pos) as u64)
                    .map_err(Error::io(&tmp))?;
                fsutil::start_writeback(file, pos as u64, (start - pos) as u64);
                self.bytes_written += (start - pos) as u64;
            }
            pos = end;
        }
        file.sync_all().map_err(Error::io(&tmp))?;
        fsutil::commit(&tmp, &dir.join(&shard.file))?;
        fsutil::sync_dir(dir)?;
        let counts = written.iter().map(|(n, (_, c))| (n.clone(), *c)).collect();
        self.journal.done.insert(shard.file.clone(), counts);
        self.states[s] = ShardState::Closed;
        self.journal.save(dir)
    }

    /// Closes every shard, copies the non-weight files (config, tokenizer,
    /// ...), writes the index (if the input had one) and, last, `sparsity.json`
    /// from `run` (method, parameters, pattern, ...) and the achieved sparsity
    /// of every written tensor; then a staged output replaces the old one. A
    /// part closes its own shards and records `run` in its journal for [`finalize`].
    pub fn finish(mut self, run: &Map<String, Value>) -> Result<FinishReport> {
        self.claim_output()?;
        for s in 0..self.states.len() {
            if self.journal.part.owns(s) {
                self.close_shard(s)?;
            }
        }
        let tensors: BTreeMap<String, ZeroCount> = self
            .journal
            .done
            .values()
            .flat_map(|m| m.iter().map(|(n, c)| (n.clone(), *c)))
            .collect();
        let mut skipped_files = Vec::new();
        if self.journal.part.is_whole() {
            let dir = self.dir.path().to_path_buf();
            let mut files: Vec<String> = self.input.shards.iter().map(|s| s.file.clone()).collect();
            let (copied, skipped) = self.copy_other_files()?;
            files.extend(copied);
            skipped_files = skipped;
            if let Some(index) = &self.input.index {
                let total: usize = self.input.tensors().map(|(_, t)| t.nbytes()).sum();
                let text = index.render(total as u64);
                fsutil::write_atomic(&dir, INDEX_FILE, text.as_bytes())?;
                files.push(INDEX_FILE.to_string());
            }
            files.sort();
            let text = manifest::render(run, &tensors, &files);
            fsutil::write_atomic(&dir, MANIFEST_FILE, text.as_bytes())?;
            // The journals, and whatever a killed run or anyone else left at temporary names.
            remove_own_files(&dir, &|name| !(is_journal(name) || is_temp(name)))?;
            fsutil::sync_dir(&dir)?;
            if let Some(old) = self.replaces.take() {
                swap_in(&dir, old)?;
            }
        } else {
            self.journal.manifest = Some(run.clone());
            self.journal.save(self.dir.path())?;
        }
        self.finished = true;
        Ok(FinishReport {
            bytes_written: self.bytes_written,
            resumed_shards: self
                .states
                .iter()
                .filter(|s| matches!(s, ShardState::Resumed))
                .count(),
            skipped_files,
            tensors,
        })
    }

    /// Copies the input's non-weight files (config, tokenizer, ...); returns
    /// the names of those copied and of those not copied.
    fn copy_other_files(&mut self) -> Result<(Vec<String>, Vec<String>)> {
        let (mut copied, mut skipped) = (Vec::new(), Vec::new());
        for name in fsutil::entries(&self.input.dir)? {
            let name = name.to_string_lossy().into_owned();
            let src = self.input.dir.join(&name);
            let is_shard = self.input.shards.iter().any(|s| s.file == name);
            if name.starts_with('.') || is_shard || name == INDEX_FILE || name == MANIFEST_FILE {
                continue;
            }
            if is_weight_file(&name) || !src.is_file() {
                skipped.push(name);
                continue;
            }
            self.bytes_written += fsutil::copy_atomic(&src, self.dir.path(), &name)?;
            copied.push(name);
        }
        Ok((copied, skipped))
    }

    /// The error for a write to shard `s`, which another part writes.
    fn elsewhere(&self, s: usize, name: &str) -> Error {
        let Part { world, .. } = self.journal.part;
        let file = &self.input.shards[s].file;
        let msg = format!(
            "shard {file} is written by rank {} of {world}, not by this rank {}",
            s % world,
            self.journal.part.rank
        );
        if name.is_empty() {
            Error::checkpoint(&self.out, msg)
        } else {
            Error::tensor(&self.out, name, msg)
        }
    }

    /// Stops without finishing: removes the temporary files; shards already
    /// in place stay, with the journal, for a later run to resume.
    pub fn abort(self) {}

    fn locate(&self, name: &str) -> Result<(usize, &TensorInfo)> {
        let s = self.input.shard_of(name).ok_or_else(|| {
            Error::tensor(
                &self.out,
                name,
                "is not in the input checkpoint; the writer only substitutes existing tensors",
            )
        })?;
        let info = self.input.shards[s].get(name).expect("indexed tensor");
        Ok((s, info))
    }

    /// Clears what a previous run left, before the first write of this one:
    /// never this run's journals or resumed shards, nor what another part may
    /// be writing.
    fn claim_output(&mut self) -> Result<()> {
        if self.stale {
            let dir = self.dir.path();
            let same: Vec<String> = read_journals(dir)?
                .into_iter()
                .filter(|(_, j)| j.as_ref().is_some_and(|j| self.journal.continues(j)))
                .map(|(name, _)| name)
                .collect();
            let part = self.journal.part;
            let keep = |name: &str| {
                name == MARKER_FILE
                    || same.iter().any(|n| n == name)
                    || part.may_find(&self.input, name)
                    || (self.input.shards.iter().zip(&self.states)).any(|(shard, state)| {
                        shard.file == name && matches!(state, ShardState::Resumed)
                    })
            };
            remove_own_files(dir, &keep)?;
            self.journal.save(dir)?;
            self.stale = false;
        }
        Ok(())
    }

    fn open_shard(&mut self, s: usize) -> Result<()> {
        self.claim_output()?;
        if matches!(self.states[s], ShardState::Pending) {
            let shard = &self.input.shards[s];
            let (tmp, file) = fsutil::create_temp(self.dir.path(), &shard.file)?;
            file.set_len(shard.len() as u64).map_err(Error::io(&tmp))?;
            self.states[s] = ShardState::Open {
                file,
                written: BTreeMap::new(),
            };
        }
        Ok(())
    }
}

impl Drop for CheckpointWriter {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        for (s, state) in self.states.iter().enumerate() {
            if matches!(state, ShardState::Open { .. }) {
                let tmp = fsutil::temp_path(self.dir.path(), &self.input.shards[s].file);
                let _ = fsutil::remove_entry(&tmp);
            }
        }
        // A staged overwrite that finished no shard leaves nothing to resume.
        let nothing_staged = self.journal.done.is_empty() && !self.stale;
        if self.replaces.is_some() && self.journal.part.is_whole() && nothing_staged {
            let _ = remove_own_files(self.dir.path(), &|_| false);
            let _ = fs::remove_dir(self.dir.path());
        }
    }
}

/// Whether the input file `name` holds weights (in any format, or their
/// index), which are never copied next to rewritten ones.
pub(crate) fn is_weight_file(name: &str) -> bool {
    name.ends_with(".index.json")
        || Path::new(name)
            .extension()
            .is_some_and(|e| WEIGHT_EXTENSIONS.contains(&e.to_string_lossy().as_ref()))
}

/// Finishes an output written by the parts of a shard-parallel run (see
/// [`Part`]): once every shard is in place, a writer resuming all of them
/// copies the non-weight files and writes the index and `sparsity.json`
/// from the run fields the parts recorded.
pub fn finalize(output: &Path) -> Result<FinishReport> {
    let out = fsutil::resolve(output);
    // Parts that overwrite a finished output write beside it.
    let replacing = out.join(MANIFEST_FILE).exists();
    let dir = if replacing { staging_path(&out) } else { out };
    let journals = if fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
        read_journals(&dir)?
    } else {
        Vec::new()
    };
    if replacing && journals.is_empty() {
        return Err(Error::checkpoint(
            output,
            format!("is already finished ({MANIFEST_FILE})"),
        ));
    }
    let mut parts = Vec::with_capacity(journals.len());
    for (name, journal) in journals {
        parts.push(journal.ok_or_else(|| {
            Error::checkpoint(
                dir.join(&name),
                "is not a journal this version can read; rerun every rank with overwrite",
            )
        })?);
    }
    let Some((run, part)) = parts
        .iter()
        .find_map(|j| j.manifest.clone().map(|m| (m, j.part)))
    else {
        return Err(Error::checkpoint(
            output,
            "holds no finished part of a shard-parallel run; run every rank \
             (0 <= rank < world size) first, then finalize",
        ));
    };
    let first = &parts[0];
    let opts = WriterOptions {
        overwrite: replacing,
        run_key: first.run.clone(),
        ..WriterOptions::default()
    };
    let writer = CheckpointWriter::create(&first.input_dir, output, &opts)?;
    let missing: Vec<String> = writer
        .input
        .shards
        .iter()
        .enumerate()
        .filter(|(s, _)| !writer.is_resumed(*s))
        .map(|(s, shard)| format!("{} (rank {})", shard.file, s % part.world))
        .collect();
    if !missing.is_empty() {
        return Err(Error::checkpoint(
            output,
            format!(
                "shards not finished by their ranks of {}: {}; run those ranks again (the same \
                 command resumes), then finalize",
                part.world,
                missing.join(", ")
            ),
        ));
    }
    writer.finish(&run)
}

/// Where an overwrite of the finished output `out` is staged: beside it, so
/// that it can be swapped in by a rename.
fn staging_path(out: &Path) -> PathBuf {
    sibling(out, "symprune-staging")
}

fn sibling(out: &Path, tag: &str) -> PathBuf {
    let name = out.file_name().unwrap_or_default().to_string_lossy();
    out.with_file_name(format!(".{name}.{tag}"))
}

/// Claims the staging directory of the finished output `out`, once sure that
/// swapping it in will remove nothing symprune did not write.
fn stage_beside(out: &Path, range: LockRange) -> Result<OwnedDir> {
    let foreign = foreign_files(out)?;
    if !foreign.is_empty() {
        return Err(Error::checkpoint(
            out,
            format!(
                "holds {}, which symprune did not write; overwrite replaces only symprune's own \
                 output, so move them elsewhere first, or choose another output directory",
                fsutil::some_names(&foreign)
            ),
        ));
    }
    let stage = staging_path(out);
    let parent = out.parent().unwrap_or(out);
    let device = |p: &Path| fs::metadata(p).map(|m| m.dev()).map_err(Error::io(p));
    if device(out)? != device(parent)? {
        return Err(Error::checkpoint(
            out,
            format!(
                "is a mount point, so its replacement cannot be staged beside it ({}) and \
                 swapped in; write into a new directory inside it instead",
                stage.display()
            ),
        ));
    }
    if fs::symlink_metadata(&stage).is_ok_and(|m| m.file_type().is_symlink()) {
        fsutil::remove_entry(&stage)?; // planted; never followed
    }
    OwnedDir::claim(&stage, range)
}

/// Swaps the finished staging directory `staged` in for the output `old`
/// replaces, then removes the replaced output's files (now at `staged`).
fn swap_in(staged: &Path, old: OwnedDir) -> Result<()> {
    let out = old.path();
    let parent = out.parent().unwrap_or(out);
    fsutil::exchange(staged, out, &sibling(out, "symprune-old"))?;
    fsutil::sync_dir(parent)?;
    remove_own_files(staged, &|_| false)?;
    // Left in place if someone put a file into the old output meanwhile.
    let _ = fs::remove_dir(staged);
    fsutil::sync_dir(parent)
}

/// The files `sparsity.json` lists as written; `None` without one.
fn listed_files(dir: &Path) -> Option<BTreeSet<String>> {
    let mut text = Vec::new();
    fsutil::open_nofollow(&dir.join(MANIFEST_FILE))
        .and_then(|mut f| f.read_to_end(&mut text))
        .ok()?;
    let manifest: Value = serde_json::from_slice(&text).unwrap_or_default();
    let files = manifest["files"].as_array().cloned().unwrap_or_default();
    Some(
        files
            .iter()
            .filter_map(|f| f.as_str().map(String::from))
            .collect(),
    )
}

/// Whether `name` in an output directory is symprune's: its bookkeeping, and
/// the files its manifest lists (or, unfinished, any shard).
fn is_own(name: &str, listed: &Option<BTreeSet<String>>) -> bool {
    name == MARKER_FILE
        || name == MANIFEST_FILE
        || name == INDEX_FILE
        || is_journal(name)
        || is_temp(name)
        || match listed {
            Some(files) => files.contains(name),
            None => name.ends_with(".safetensors"),
        }
}

/// The entries of the finished output `dir` that symprune did not write.
fn foreign_files(dir: &Path) -> Result<Vec<OsString>> {
    let listed = listed_files(dir);
    let mut found = fsutil::entries(dir)?;
    found.retain(|n| !n.to_str().is_some_and(|n| is_own(n, &listed)));
    Ok(found)
}

/// Removes symprune's own files from `dir` (see [`is_own`]) except what
/// `keep` names; links are removed, never followed, and folders stay.
fn remove_own_files(dir: &Path, keep: &dyn Fn(&str) -> bool) -> Result<()> {
    let listed = listed_files(dir);
    // The marker goes last: until then the directory is recognizably symprune's.
    let mut names: Vec<String> = fsutil::entries(dir)?
        .into_iter()
        .filter_map(|n| n.into_string().ok())
        .filter(|n| is_own(n, &listed) && !keep(n))
        .collect();
    names.sort_by_key(|n| n == MARKER_FILE);
    for name in names {
        let path = dir.join(&name);
        if !fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            fsutil::remove_entry(&path)?;
        }
    }
    Ok(())
}

/// Why the other runs' journals cannot be resumed by `this` one.
fn not_resumable(other: &[(String, Option<Journal>)], this: &Journal) -> String {
    let journals: Vec<&Journal> = other.iter().filter_map(|(_, j)| j.as_ref()).collect();
    if journals.len() < other.len() {
        "holds an interrupted run whose journal this version cannot read".into()
    } else if journals.iter().any(|j| j.run.is_empty()) {
        "holds an interrupted run written without a run key, which cannot be resumed (the \
         layer-by-layer pipeline writes so: it recomputes every layer anyway)"
            .into()
    } else if journals.iter().any(|j| j.input != this.input) {
        "holds an interrupted run of another input (or of this one before it changed)".into()
    } else {
        "holds an interrupted run with other settings; rerun that command to resume it".into()
    }
}

/// Whether `shard` is in `dir`, whole, with its header (a link does not count).
fn in_place(dir: &Path, shard: &Shard) -> bool {
    let mut head = vec![0u8; shard.header.data_start];
    fsutil::open_nofollow(&dir.join(&shard.file))
        .and_then(|f| {
            let meta = f.metadata()?;
            let whole = meta.is_file() && meta.len() == shard.len() as u64;
            f.read_exact_at(&mut head, 0)?;
            Ok(whole && head == shard.header_bytes())
        })
        .unwrap_or(false)
}

/// Whether `dir` holds files other than those `expected`.
fn holds_files(dir: &Path, expected: &dyn Fn(&str) -> bool) -> Result<bool> {
    Ok(fsutil::entries(dir)?
        .iter()
        .any(|name| !expected(&name.to_string_lossy())))
}

/// Identifies the input: shard names, sizes, modification times and headers.
pub(crate) fn fingerprint(input: &Checkpoint) -> Result<String> {
    let mut text = Vec::new();
    for shard in &input.shards {
        shard.check_intact()?;
        let meta = shard.handle().metadata().map_err(Error::io(&shard.path))?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        text.extend_from_slice(format!("{}\0{}\0{mtime}\0", shard.file, shard.len()).as_bytes());
        text.extend_from_slice(shard.header_bytes());
    }
    Ok(format!("{:016x}", fnv1a64(&text)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::journal::JOURNAL_FILE;
    use crate::checkpoint::testutil::checkpoint;

    fn open(input: &Path, out: &Path, key: &str, overwrite: bool) -> Result<CheckpointWriter> {
        let opts = WriterOptions {
            overwrite,
            run_key: key.into(),
            ..WriterOptions::default()
        };
        CheckpointWriter::create(input, out, &opts)
    }

    #[test]
    fn resumes_only_with_the_same_nonempty_key() {
        let tmp = tempfile::tempdir().unwrap();
        let (input, out) = (tmp.path().join("in"), tmp.path().join("out"));
        checkpoint(&input);
        for key in ["", "k"] {
            let mut w = open(&input, &out, key, true).unwrap();
            w.close_shard(0).unwrap();
            w.abort();
            assert!(out.join(JOURNAL_FILE).exists());
            match open(&input, &out, key, false) {
                Ok(w) => assert!(!key.is_empty() && w.is_resumed(0) && !w.is_resumed(1)),
                Err(e) => assert!(key.is_empty() && e.to_string().contains("without a run key")),
            }
        }
        let e = open(&input, &out, "other", false).unwrap_err().to_string();
        assert!(e.contains("interrupted run with other settings"), "{e}");
    }

    #[test]
    fn overwrite_stages_beside_a_finished_output_and_swaps_it_in() {
        let tmp = tempfile::tempdir().unwrap();
        let (input, out) = (tmp.path().join("in"), tmp.path().join("out"));
        checkpoint(&input);
        open(&input, &out, "a", false)
            .unwrap()
            .finish(&Map::new())
            .unwrap();
        let finished = fs::read(out.join(MANIFEST_FILE)).unwrap();
        let stage = staging_path(&out);
        // A run that writes nothing leaves nothing beside it.
        open(&input, &out, "b", true).unwrap().abort();
        assert!(!stage.exists());
        // A run that fails midway leaves the finished output as it was.
        let mut w = open(&input, &out, "b", true).unwrap();
        let e = open(&input, &out, "b", true).unwrap_err().to_string();
        assert!(e.contains("another symprune run is writing"), "{e}");
        w.close_shard(1).unwrap();
        w.abort();
        assert_eq!(fs::read(out.join(MANIFEST_FILE)).unwrap(), finished);
        assert!(stage.join(JOURNAL_FILE).exists());
        // The rerun resumes the staged shard, then swaps.
        let w = open(&input, &out, "b", true).unwrap();
        assert!(w.is_resumed(1) && !w.is_resumed(0));
        w.finish(&Map::new()).unwrap();
        assert!(!stage.exists() && !tmp.path().join(".out.symprune-old").exists());
        let manifest: Value =
            serde_json::from_slice(&fs::read(out.join(MANIFEST_FILE)).unwrap()).unwrap();
        assert_eq!(
            manifest["files"],
            serde_json::json!([
                "config.json",
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors",
                INDEX_FILE
            ])
        );
        // A file symprune did not write is never removed.
        fs::write(out.join("notes.txt"), "mine").unwrap();
        let e = open(&input, &out, "c", true).unwrap_err().to_string();
        assert!(
            e.contains("holds notes.txt, which symprune did not write"),
            "{e}"
        );
    }

    #[test]
    fn links_planted_in_the_output_are_replaced_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let (input, out) = (tmp.path().join("in"), tmp.path().join("out"));
        checkpoint(&input);
        let victim = tmp.path().join("victim.json");
        fs::write(&victim, "keep").unwrap();
        let mut w = open(&input, &out, "k", false).unwrap();
        w.close_shard(0).unwrap();
        w.abort();
        let link = |target: &Path, name: &str| {
            std::os::unix::fs::symlink(target, out.join(name)).unwrap();
        };
        link(&victim, "config.json");
        let nowhere = tmp.path().join("nowhere");
        for name in [
            ".config.json.tmp",
            ".model-00002-of-00002.safetensors.tmp",
            ".sparsity.json.tmp",
            ".model.safetensors.index.json.tmp",
            ".symprune-journal.json.tmp",
        ] {
            link(&nowhere, name);
        }
        open(&input, &out, "k", false)
            .unwrap()
            .finish(&Map::new())
            .unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert!(!nowhere.exists());
        assert!(!fs::symlink_metadata(out.join("config.json"))
            .unwrap()
            .is_symlink());
        Checkpoint::open(&out).unwrap();
    }

    #[test]
    fn an_output_sharing_a_file_with_the_input_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (input, out) = (tmp.path().join("in"), tmp.path().join("out"));
        checkpoint(&input);
        // `cp -al in out`, marker and all: still refused, with overwrite too.
        fs::create_dir(&out).unwrap();
        for name in fsutil::entries(&input).unwrap() {
            fs::hard_link(input.join(&name), out.join(&name)).unwrap();
        }
        fs::write(out.join(MARKER_FILE), "").unwrap();
        for overwrite in [false, true] {
            let e = open(&input, &out, "k", overwrite).unwrap_err().to_string();
            assert!(
                e.contains("(a hard link: the same device and inode)"),
                "{e}"
            );
        }
        let e = open(&input, Path::new(""), "k", true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("output: is an empty path"), "{e}");
    }
}
