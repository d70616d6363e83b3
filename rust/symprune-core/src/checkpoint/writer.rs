//! Writing a pruned checkpoint by in-place substitution.
//!
//! Pruning never changes a tensor's name, shape or dtype, so every output
//! shard has exactly its input shard's header and offsets: the writer puts
//! pruned bytes at their offsets in `.<shard>.tmp` and, when the shard is
//! closed, has the kernel copy everything else (the header and every tensor
//! not written) from the input. A closed shard is fsynced, renamed into place
//! and recorded in a small journal, so a re-run after an interruption skips it
//! and redoes only unfinished shards; pruning is deterministic, so the result
//! is byte-identical to an uninterrupted run. `sparsity.json` is written last
//! and marks the output finished; the input directory is never written to.
//!
//! Shard-parallel runs: a writer for one [`Part`] writes only its shards and
//! keeps its own journal; [`finalize`] then finishes the output from the
//! parts' journals, as a writer resuming every shard would.

use super::index::INDEX_FILE;
use super::inspect::count_zeros;
use super::manifest::{self, MANIFEST_FILE};
use super::reader::{Checkpoint, TensorInfo};
use crate::error::{Error, Result};
use crate::rng::fnv1a64;
use safetensors::Dtype;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the writer records finished shards (removed once the output is
/// finished); a part of a shard-parallel run uses its own name, see [`Part`].
pub const JOURNAL_FILE: &str = ".symprune-journal.json";

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
}

/// One process's share of a shard-parallel run: shard `s` belongs to rank
/// `s % world`. Each part writes its shards and its journal
/// `.symprune-journal.<rank>-of-<world>.json`, and never removes another
/// part's files; [`finalize`] finishes the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub rank: usize,
    pub world: usize,
}

impl Default for Part {
    fn default() -> Self {
        Part { rank: 0, world: 1 }
    }
}

impl Part {
    pub fn new(rank: usize, world: usize) -> Result<Part> {
        if rank >= world {
            return Err(Error::invalid(
                "rank",
                format!("rank {rank} of world size {world}: need 0 <= rank < world size"),
            ));
        }
        Ok(Part { rank, world })
    }

    /// Whether shard `s` is this part's to write.
    pub fn owns(&self, s: usize) -> bool {
        s % self.world == self.rank
    }

    fn is_whole(&self) -> bool {
        self.world == 1
    }

    /// Whether a file of this name may be another part's work in progress
    /// (its shards or temporary files), found in a shared output.
    fn may_find(&self, input: &Checkpoint, name: &str) -> bool {
        !self.is_whole()
            && (is_temp(name)
                || (input.shards.iter().enumerate())
                    .any(|(s, shard)| shard.file == name && !self.owns(s)))
    }

    fn journal_file(&self) -> String {
        if self.is_whole() {
            JOURNAL_FILE.to_string()
        } else {
            format!(".symprune-journal.{}-of-{}.json", self.rank, self.world)
        }
    }
}

/// Exact zeros among a tensor's elements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZeroCount {
    pub zeros: u64,
    pub numel: u64,
}

impl ZeroCount {
    pub fn sparsity(&self) -> f64 {
        if self.numel == 0 {
            0.0
        } else {
            self.zeros as f64 / self.numel as f64
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Journal {
    input: String,
    run: String,
    /// Where the input is, for [`finalize`] (which is given only the output).
    #[serde(default)]
    input_dir: PathBuf,
    #[serde(default)]
    part: Part,
    /// The manifest's run fields, recorded by a part when all its shards are done.
    #[serde(default)]
    manifest: Option<Map<String, Value>>,
    /// Finished shards, each with the zero counts of the tensors written into it.
    done: BTreeMap<String, BTreeMap<String, ZeroCount>>,
}

impl Journal {
    /// Whether `other` records (part of) this same run: same input, same non-empty key.
    fn continues(&self, other: &Journal) -> bool {
        !other.run.is_empty() && other.input == self.input && other.run == self.run
    }
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
    out: PathBuf,
    states: Vec<ShardState>,
    journal: Journal,
    bytes_written: u64,
    /// The output still holds a previous run's files (see [`Self::new`]).
    stale: bool,
    finished: bool,
}

impl CheckpointWriter {
    /// Opens the input checkpoint and prepares `output_dir`: a fresh run, a
    /// resumed one (same input, same non-empty `run_key`), or an error when
    /// the directory holds something else and `overwrite` is off. With
    /// `overwrite`, the old files are removed at this run's first write.
    pub fn create(input_dir: &Path, output_dir: &Path, opts: &WriterOptions) -> Result<Self> {
        Self::new(Arc::new(Checkpoint::open(input_dir)?), output_dir, opts)
    }

    /// [`create`](Self::create) for an input checkpoint already open.
    pub fn new(input: Arc<Checkpoint>, output_dir: &Path, opts: &WriterOptions) -> Result<Self> {
        check_location(&input.dir, output_dir)?;
        fs::create_dir_all(output_dir).map_err(Error::io(output_dir))?;
        let out = output_dir.to_path_buf();
        let part = opts.part;
        let again =
            "pass overwrite (--overwrite) to replace it, or choose another output directory";

        let mut journal = Journal {
            input: fingerprint(&input)?,
            run: opts.run_key.clone(),
            input_dir: resolve(&input.dir),
            part,
            manifest: None,
            done: BTreeMap::new(),
        };
        // The journals of this run (any part of it) are resumed; another run's are in the way.
        let (same, other): (Vec<_>, Vec<_>) = read_journals(&out)?
            .into_iter()
            .partition(|(_, j)| j.as_ref().is_some_and(|j| journal.continues(j)));
        // What a previous run left is removed only when this run first writes,
        // so a run that fails before writing leaves the output as it was.
        let mut stale = false;
        if out.join(MANIFEST_FILE).exists() {
            if !opts.overwrite {
                return Err(Error::checkpoint(
                    &out,
                    format!(
                        "already holds a finished pruned checkpoint ({MANIFEST_FILE}); {again}"
                    ),
                ));
            }
            stale = true;
        } else if !other.is_empty() {
            // Nothing finished yet means nothing to lose.
            let lost = other
                .iter()
                .any(|(_, j)| !matches!(j, Some(j) if j.done.is_empty()));
            if lost && !opts.overwrite {
                return Err(Error::checkpoint(
                    &out,
                    format!(
                        "holds an interrupted run with other settings, of another input, \
                         or without a run key; rerun the same command to resume it, or {again}"
                    ),
                ));
            }
            stale = true;
        } else if same.is_empty()
            && holds_files(&out, &|name| {
                part.may_find(&input, name) || (!part.is_whole() && is_journal(name))
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
                Some(counts) if in_place(&out, shard) => {
                    journal.done.insert(shard.file.clone(), counts);
                    states.push(ShardState::Resumed);
                }
                _ => states.push(ShardState::Pending),
            }
        }
        let writer = CheckpointWriter {
            input,
            out,
            states,
            journal,
            bytes_written: 0,
            stale,
            finished: false,
        };
        if !stale {
            writer.save_journal()?;
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
        if offset != done || offset + bytes.len() > info.nbytes() || bytes.len() % elem != 0 {
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
        let tmp = temp_path(&self.out, &self.input.shards[s].file);
        let at = (file_offset + offset) as u64;
        file.write_all_at(bytes, at).map_err(Error::io(&tmp))?;
        start_writeback(file, at, bytes.len() as u64);
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
        let tmp = temp_path(&self.out, &shard.file);
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
                copy_range(shard.handle(), file, pos as u64, (start - pos) as u64)
                    .map_err(Error::io(&tmp))?;
                start_writeback(file, pos as u64, (start - pos) as u64);
                self.bytes_written += (start - pos) as u64;
            }
            pos = end;
        }
        file.sync_all().map_err(Error::io(&tmp))?;
        let target = self.out.join(&shard.file);
        fs::rename(&tmp, &target).map_err(Error::io(&target))?;
        sync_dir(&self.out)?;
        let counts = written.iter().map(|(n, (_, c))| (n.clone(), *c)).collect();
        self.journal.done.insert(shard.file.clone(), counts);
        self.states[s] = ShardState::Closed;
        self.save_journal()
    }

    /// Closes every shard, copies the non-weight files (config, tokenizer,
    /// ...), writes the index (if the input had one) and, last, `sparsity.json`
    /// from `run` (method, parameters, pattern, ...) and the achieved sparsity
    /// of every written tensor. A part closes its own shards and records `run`
    /// in its journal for [`finalize`].
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
            skipped_files = self.copy_other_files()?;
            if let Some(index) = &self.input.index {
                let total: usize = self.input.tensors().map(|(_, t)| t.nbytes()).sum();
                self.write_atomic(INDEX_FILE, &index.render(total as u64))?;
            }
            self.write_atomic(MANIFEST_FILE, &manifest::render(run, &tensors))?;
            for (name, _) in read_journals(&self.out)? {
                remove_if_present(&self.out.join(name))?;
            }
            sync_dir(&self.out)?;
        } else {
            self.journal.manifest = Some(run.clone());
            self.save_journal()?;
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
    /// the names of those not copied.
    fn copy_other_files(&mut self) -> Result<Vec<String>> {
        let mut skipped_files = Vec::new();
        let entries = fs::read_dir(&self.input.dir).map_err(Error::io(&self.input.dir))?;
        let mut names: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        names.sort();
        for name in names {
            let src = self.input.dir.join(&name);
            let is_shard = self.input.shards.iter().any(|s| s.file == name);
            if name.starts_with('.') || is_shard || name == INDEX_FILE || name == MANIFEST_FILE {
                continue;
            }
            let weights = name.ends_with(".index.json")
                || Path::new(&name)
                    .extension()
                    .is_some_and(|e| WEIGHT_EXTENSIONS.contains(&e.to_string_lossy().as_ref()));
            if weights || !src.is_file() {
                skipped_files.push(name);
                continue;
            }
            let dst = self.out.join(&name);
            self.bytes_written += fs::copy(&src, &dst).map_err(Error::io(&dst))?;
        }
        Ok(skipped_files)
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
            let same: Vec<String> = read_journals(&self.out)?
                .into_iter()
                .filter(|(_, j)| j.as_ref().is_some_and(|j| self.journal.continues(j)))
                .map(|(name, _)| name)
                .collect();
            let part = self.journal.part;
            let keep = |name: &str| {
                same.iter().any(|n| n == name)
                    || part.may_find(&self.input, name)
                    || (self.input.shards.iter().zip(&self.states)).any(|(shard, state)| {
                        shard.file == name && matches!(state, ShardState::Resumed)
                    })
            };
            clear_output(&self.out, &keep)?;
            self.save_journal()?;
            self.stale = false;
        }
        Ok(())
    }

    fn open_shard(&mut self, s: usize) -> Result<()> {
        self.claim_output()?;
        if matches!(self.states[s], ShardState::Pending) {
            let shard = &self.input.shards[s];
            let tmp = temp_path(&self.out, &shard.file);
            let file = File::create(&tmp).map_err(Error::io(&tmp))?;
            file.set_len(shard.len() as u64).map_err(Error::io(&tmp))?;
            self.states[s] = ShardState::Open {
                file,
                written: BTreeMap::new(),
            };
        }
        Ok(())
    }

    fn save_journal(&self) -> Result<()> {
        let text = serde_json::to_string(&self.journal).expect("JSON");
        self.write_atomic(&self.journal.part.journal_file(), &text)
    }

    /// Writes a small file through a temporary name, so it is whole or absent.
    fn write_atomic(&self, name: &str, text: &str) -> Result<()> {
        let tmp = temp_path(&self.out, name);
        let target = self.out.join(name);
        let file = File::create(&tmp).map_err(Error::io(&tmp))?;
        file.write_all_at(text.as_bytes(), 0)
            .and_then(|_| file.sync_all())
            .map_err(Error::io(&tmp))?;
        fs::rename(&tmp, &target).map_err(Error::io(&target))
    }
}

impl Drop for CheckpointWriter {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        for (s, state) in self.states.iter().enumerate() {
            if matches!(state, ShardState::Open { .. }) {
                let _ = fs::remove_file(temp_path(&self.out, &self.input.shards[s].file));
            }
        }
    }
}

/// Finishes an output written by the parts of a shard-parallel run (see
/// [`Part`]): once every shard is in place, a writer resuming all of them
/// copies the non-weight files and writes the index and `sparsity.json`
/// from the run fields the parts recorded.
pub fn finalize(output: &Path) -> Result<FinishReport> {
    if output.join(MANIFEST_FILE).exists() {
        return Err(Error::checkpoint(
            output,
            format!("is already finished ({MANIFEST_FILE})"),
        ));
    }
    let journals = if output.is_dir() {
        read_journals(output)?
    } else {
        Vec::new()
    };
    let mut parts = Vec::with_capacity(journals.len());
    for (name, journal) in journals {
        parts.push(journal.ok_or_else(|| {
            Error::checkpoint(
                output.join(&name),
                "is not a journal this version can read; rerun every rank with --overwrite",
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
             (--world-size N --rank R) first, then finalize",
        ));
    };
    let first = &parts[0];
    let opts = WriterOptions {
        overwrite: false,
        run_key: first.run.clone(),
        part: Part::default(),
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

/// The journals in `out` (name, contents; `None` when unreadable), by name.
fn read_journals(out: &Path) -> Result<Vec<(String, Option<Journal>)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(out).map_err(Error::io(out))? {
        let name = entry.map_err(Error::io(out))?.file_name();
        let name = name.to_string_lossy();
        if is_journal(&name) {
            let journal = fs::read(out.join(&*name))
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok());
            found.push((name.into_owned(), journal));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

fn is_journal(name: &str) -> bool {
    name.starts_with(".symprune-journal.") && name.ends_with(".json")
}

fn is_temp(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

/// Whether `shard` is in `out`, whole, with its header.
fn in_place(out: &Path, shard: &super::reader::Shard) -> bool {
    let mut head = vec![0u8; shard.header.data_start];
    File::open(out.join(&shard.file))
        .and_then(|f| {
            let same_len = f.metadata()?.len() == shard.len() as u64;
            f.read_exact_at(&mut head, 0)?;
            Ok(same_len && head == shard.header_bytes())
        })
        .unwrap_or(false)
}

/// Whether `out` holds files other than those `expected`.
fn holds_files(out: &Path, expected: &dyn Fn(&str) -> bool) -> Result<bool> {
    for entry in fs::read_dir(out).map_err(Error::io(out))? {
        let name = entry.map_err(Error::io(out))?.file_name();
        if !expected(&name.to_string_lossy()) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Removes a file; one already gone (another part removed it) is fine.
fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path)(e)),
        _ => Ok(()),
    }
}

fn temp_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".{name}.tmp"))
}

/// `len` bytes at `start` from `src` to the same place in `dst`, copied by
/// the kernel (`copy_file_range`) where it can.
fn copy_range(src: &File, dst: &File, start: u64, len: u64) -> std::io::Result<()> {
    let (mut reader, mut writer) = (src, dst);
    reader.seek(SeekFrom::Start(start))?;
    writer.seek(SeekFrom::Start(start))?;
    let copied = std::io::copy(&mut reader.take(len), &mut writer)?;
    if copied != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the input ended after {copied} of {len} bytes (was it truncated?)"),
        ));
    }
    Ok(())
}

/// Starts writing a range to disk without waiting for it, so that the fsync
/// closing the shard finds little left to do while pruning goes on.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: an open descriptor; the call only schedules I/O, and a failure
    // just leaves the work to the fsync.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_: &File, _: u64, _: u64) {}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(dir))
}

/// The absolute form of a path that may not exist yet.
fn resolve(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    while existing.canonicalize().is_err() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return absolute,
        }
    }
    let mut out = existing.canonicalize().expect("checked above");
    out.extend(rest.iter().rev());
    out
}

fn check_location(input: &Path, output: &Path) -> Result<()> {
    let (input, output) = (resolve(input), resolve(output));
    if output.starts_with(&input) {
        return Err(Error::checkpoint(
            &output,
            format!(
                "is the input directory {} or inside it; the input is never modified, choose \
                 an output directory outside it",
                input.display()
            ),
        ));
    }
    Ok(())
}

/// Removes what a previous run left (weights, index, manifest, journals, temp
/// files) except what `keep` names.
fn clear_output(out: &Path, keep: &dyn Fn(&str) -> bool) -> Result<()> {
    for entry in fs::read_dir(out).map_err(Error::io(out))? {
        let path = entry.map_err(Error::io(out))?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ours = name.ends_with(".safetensors")
            || name == INDEX_FILE
            || name == MANIFEST_FILE
            || is_journal(&name)
            || is_temp(&name);
        if ours && !keep(&name) && path.is_file() {
            remove_if_present(&path)?;
        }
    }
    Ok(())
}

/// Identifies the input: shard names, sizes, modification times and headers.
fn fingerprint(input: &Checkpoint) -> Result<String> {
    let mut text = Vec::new();
    for shard in &input.shards {
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
    use crate::checkpoint::prune::tests::checkpoint;

    #[test]
    fn resumes_only_with_the_same_nonempty_key() {
        let tmp = tempfile::tempdir().unwrap();
        let (input, out) = (tmp.path().join("in"), tmp.path().join("out"));
        checkpoint(&input);
        let open = |key: &str, overwrite| {
            let opts = WriterOptions {
                overwrite,
                run_key: key.into(),
                ..WriterOptions::default()
            };
            CheckpointWriter::create(&input, &out, &opts)
        };
        for key in ["", "k"] {
            let mut w = open(key, true).unwrap();
            w.close_shard(0).unwrap();
            w.abort();
            assert!(out.join(JOURNAL_FILE).exists());
            match open(key, false) {
                Ok(w) => assert!(!key.is_empty() && w.is_resumed(0) && !w.is_resumed(1)),
                Err(e) => assert!(key.is_empty() && e.to_string().contains("without a run key")),
            }
        }
        let e = open("other", false).unwrap_err().to_string();
        assert!(e.contains("interrupted run with other settings"), "{e}");
    }

    #[test]
    fn overwrite_clears_the_old_output_only_when_writing() {
        let tmp = tempfile::tempdir().unwrap();
        let (input, out) = (tmp.path().join("in"), tmp.path().join("out"));
        checkpoint(&input);
        let opts = WriterOptions {
            overwrite: true,
            ..WriterOptions::default()
        };
        CheckpointWriter::create(&input, &out, &opts)
            .unwrap()
            .finish(&Map::new())
            .unwrap();
        let finished = out.join(MANIFEST_FILE);
        CheckpointWriter::create(&input, &out, &opts)
            .unwrap()
            .abort();
        assert!(finished.exists() && !out.join(JOURNAL_FILE).exists());
        let mut w = CheckpointWriter::create(&input, &out, &opts).unwrap();
        w.close_shard(1).unwrap();
        assert!(!finished.exists() && out.join(JOURNAL_FILE).exists());
    }
}
