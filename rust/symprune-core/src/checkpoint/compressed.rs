//! Compressed-tensors sparse checkpoints: writing a pruned checkpoint in
//! `sparse-bitmask` or `sparse-24-bitmask` and decompressing one back to
//! dense, exactly as the `compressed-tensors` package lays them out
//! (docs/formats.md).
//!
//! Both directions stream one tensor at a time from the memory-mapped input,
//! in row blocks written in parallel straight to their offsets, so memory
//! stays bounded by a block per thread however large the checkpoint is. Each
//! output shard is written under a temporary name, fsynced and renamed into
//! place; the input is never written, and an output that is, contains or
//! shares a file with the input is refused (see [`super::fsutil`]). One
//! output shard per input shard; the index gets the new names and
//! `total_size`; `config.json` gets (or loses) the `quantization_config`
//! block. Finished shards are recorded in a journal, so an interrupted run,
//! run again with the same input and settings, resumes from the first
//! unfinished shard and ends with the same bytes; the journal goes once the
//! output is finished.

use super::fsutil::{self, LockRange, OwnedDir, Protected, MARKER_FILE};
use super::index::INDEX_FILE;
use super::journal::JOURNAL_FILE;
use super::reader::{Checkpoint, Shard, TensorInfo};
use super::selection::Selection;
use super::writer::{fingerprint, is_weight_file};
use super::zeros::{count_zeros, is_zero, zero_mask};
use crate::error::{Error, Result};
use crate::rng::fnv1a64;
use crate::vocab::SaveFormat;
use rayon::prelude::*;
use safetensors::Dtype;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The model config that carries the compression block.
pub const CONFIG_FILE: &str = "config.json";
/// The `compressed-tensors` release whose format is written (docs/formats.md §1).
pub const COMPRESSED_TENSORS_VERSION: &str = "0.14.0.1";
/// Bytes of input per parallel block of rows.
const BLOCK_BYTES: usize = 4 << 20;
/// Bytes copied per write for tensors kept as they are.
const COPY_BYTES: usize = 64 << 20;

/// One tensor stored compressed (or, decompressing, restored to dense).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TensorEntry {
    /// The dense weight's name (`….weight`).
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: String,
    pub nonzeros: u64,
    pub numel: u64,
    pub dense_bytes: u64,
    /// Bytes of its compressed tensors (values, bitmask, row offsets, shape).
    pub compressed_bytes: u64,
}

/// A selected tensor that the format cannot hold, written dense and listed
/// in the config's `ignore`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeftDense {
    pub name: String,
    pub reason: String,
}

/// What a compression or decompression did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The compressed format written or read.
    pub format: String,
    /// The tensors converted, in file order.
    pub tensors: Vec<TensorEntry>,
    /// Selected tensors written dense (compression only).
    pub left_dense: Vec<LeftDense>,
    /// Exact zeros over every floating-point tensor, as `global_sparsity`.
    pub global_sparsity: f64,
    /// Tensor bytes in the input and in the output (headers excluded).
    pub input_tensor_bytes: u64,
    pub output_tensor_bytes: u64,
    /// Every byte written into the output directory.
    pub bytes_written: u64,
    pub shards: usize,
    /// Shards finished by an interrupted earlier run of the same settings.
    pub resumed_shards: usize,
    /// Input files not copied (other weight formats, folders).
    pub skipped_files: Vec<String>,
    pub seconds: f64,
}

/// Progress events of a compression; the callback returns `false` to stop.
#[derive(Debug)]
pub enum Progress<'a> {
    Start { tensors: usize },
    Tensor(&'a TensorEntry),
}

/// The tensor names of one compressed weight `module` (docs/formats.md §2).
fn part_names(format: SaveFormat, module: &str) -> Vec<String> {
    let suffixes: &[&str] = match format {
        SaveFormat::Sparse24Bitmask => &["compressed", "bitmask", "shape"],
        _ => &["compressed", "bitmask", "row_offsets", "shape"],
    };
    suffixes.iter().map(|s| format!("{module}.{s}")).collect()
}

/// The parameter suffixes of a format, as `compression_param_names` lists them.
fn param_suffixes(format: SaveFormat) -> &'static [&'static str] {
    match format {
        SaveFormat::Sparse24Bitmask => &["shape", "compressed", "bitmask"],
        _ => &["shape", "compressed", "bitmask", "row_offsets"],
    }
}

/// Which four-element positions `sparse-24-bitmask` flags, by the group's
/// nonzero pattern (bit `i` = element `i`): the nonzeros, topped up to two
/// with the zeros that `torch.topk` picks among ties (docs/formats.md §3).
/// `None` for groups with more than two nonzeros.
fn flags_24(nonzero: u8) -> Option<u8> {
    match nonzero.count_ones() {
        2 => Some(nonzero),
        0 | 1 => Some(match nonzero {
            0b0001 => 0b0101,
            0b0010 => 0b1010,
            _ => 0b1100,
        }),
        _ => None,
    }
}

/// One entry of an output header.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    len: usize,
}

impl Entry {
    /// The input tensor `t` as it is.
    fn dense(t: &TensorInfo) -> Entry {
        Entry {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
            len: t.nbytes(),
        }
    }
}

/// A safetensors header as the safetensors crate writes it: compact JSON,
/// `__metadata__` first, the entries in file order, padded with spaces to a
/// multiple of 8 bytes (at least `min_len`). Returns the 8-byte length and
/// the JSON.
fn render_header(
    metadata: &Option<BTreeMap<String, String>>,
    entries: &[Entry],
    min_len: usize,
) -> Vec<u8> {
    let mut json = String::from("{");
    if let Some(meta) = metadata {
        json.push_str("\"__metadata__\":");
        json.push_str(&serde_json::to_string(meta).expect("JSON"));
    }
    let mut offset = 0usize;
    for e in entries {
        if json.len() > 1 {
            json.push(',');
        }
        let info = json!({"dtype": e.dtype.to_string(), "shape": e.shape});
        json.push_str(&serde_json::to_string(&e.name).expect("JSON"));
        json.push_str(&format!(
            ":{{\"dtype\":{},\"shape\":{},\"data_offsets\":[{},{}]}}",
            info["dtype"],
            info["shape"],
            offset,
            offset + e.len
        ));
        offset += e.len;
    }
    json.push('}');
    let mut n = json.len().max(min_len);
    n += (8 - n % 8) % 8;
    let mut out = (n as u64).to_le_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out.resize(8 + n, b' ');
    out
}

/// A finished output shard as the journal records it: enough to check that it
/// is still in place, and to report, index and configure it without reading
/// it again.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ShardDone {
    /// The file's length and the digest of its header.
    len: u64,
    header: String,
    /// Its tensors, in file order (the index's entries).
    names: Vec<String>,
    tensors: Vec<TensorEntry>,
    left_dense: Vec<LeftDense>,
    /// Exact zeros and elements of its floating-point tensors.
    zeros: u64,
    numel: u64,
    /// Tensor bytes read and written.
    bytes_in: u64,
    bytes_out: u64,
}

impl ShardDone {
    /// Whether `path` is still the shard recorded: a whole regular file with
    /// the same header.
    fn in_place(&self, path: &Path) -> bool {
        let read = || -> std::io::Result<bool> {
            let f = fsutil::open_nofollow(path)?;
            let meta = f.metadata()?;
            if !meta.is_file() || meta.len() != self.len {
                return Ok(false);
            }
            let mut n = [0u8; 8];
            f.read_exact_at(&mut n, 0)?;
            let n = u64::from_le_bytes(n);
            if !matches!(n.checked_add(8), Some(end) if end <= self.len) {
                return Ok(false);
            }
            let mut head = vec![0u8; 8 + n as usize];
            f.read_exact_at(&mut head, 0)?;
            Ok(header_digest(&head) == self.header)
        };
        read().unwrap_or(false)
    }

    /// Records the shard's tensors, in file order.
    fn hold(&mut self, entries: Vec<Entry>) {
        self.bytes_out = entries.iter().map(|e| e.len as u64).sum();
        self.names = entries.into_iter().map(|e| e.name).collect();
    }

    /// Exact zeros over the floating-point elements (`global_sparsity`).
    fn sparsity(&self) -> f64 {
        if self.numel == 0 {
            0.0
        } else {
            self.zeros as f64 / self.numel as f64
        }
    }

    /// The report of the run whose [`totals`] these are.
    fn report(
        self,
        format: SaveFormat,
        out: &Output,
        checkpoint: &Checkpoint,
        resumed_shards: usize,
        skipped_files: Vec<String>,
        started: Instant,
    ) -> Report {
        Report {
            format: format.name().into(),
            global_sparsity: self.sparsity(),
            tensors: self.tensors,
            left_dense: self.left_dense,
            input_tensor_bytes: self.bytes_in,
            output_tensor_bytes: self.bytes_out,
            bytes_written: out.bytes_written,
            shards: checkpoint.shards.len(),
            resumed_shards,
            skipped_files,
            seconds: started.elapsed().as_secs_f64(),
        }
    }
}

fn header_digest(header: &[u8]) -> String {
    format!("{:016x}", fnv1a64(header))
}

/// The journal of an unfinished output: the input, the run's settings and
/// the shards finished so far.
#[derive(Debug, Default, Serialize, Deserialize)]
struct RunJournal {
    input: String,
    run: String,
    done: BTreeMap<String, ShardDone>,
}

/// The output directory of one run: claimed and locked, checked against the
/// input; shards finished by an interrupted run of the same input and
/// settings are taken over.
struct Output {
    dir: OwnedDir,
    journal: RunJournal,
    bytes_written: u64,
    finished: bool,
}

impl Output {
    /// Claims `output` for the run `run` (its settings, as text) on `input`.
    fn claim(input: &Checkpoint, output: &Path, run: String) -> Result<Output> {
        if output.as_os_str().is_empty() {
            return Err(Error::invalid(
                "output",
                "is an empty path; name the output directory (\".\" for the current one)",
            ));
        }
        let protected = Protected::input(&input.dir)?;
        let out = fsutil::resolve(output);
        protected.check_dir(&out)?;
        let dir = OwnedDir::claim(&out, LockRange::Whole)?;
        protected.check_dir(&out)?;
        let mut journal = RunJournal {
            input: fingerprint(input)?,
            run,
            done: BTreeMap::new(),
        };
        let previous = read_journal(&out)?;
        let held: Vec<_> = fsutil::entries(&out)?
            .into_iter()
            .filter(|n| {
                let n = n.to_string_lossy();
                n != MARKER_FILE && n != JOURNAL_FILE && !fsutil::is_temp(&n)
            })
            .collect();
        match previous {
            Some(Some(j)) if j.input == journal.input && j.run == journal.run => {
                journal.done = (j.done.into_iter())
                    .filter(|(file, done)| done.in_place(&out.join(file)))
                    .collect();
            }
            // An interrupted run that finished nothing has nothing to lose.
            Some(Some(j)) if j.done.is_empty() && held.is_empty() => {}
            Some(_) => {
                return Err(Error::checkpoint(
                    &out,
                    format!(
                        "holds an interrupted run of another input or other settings \
                         ({JOURNAL_FILE}); run that command again to resume it, or remove the \
                         directory"
                    ),
                ))
            }
            None if !held.is_empty() => {
                return Err(Error::checkpoint(
                    &out,
                    format!(
                        "exists and is not empty (holds {}); choose another output directory",
                        fsutil::some_names(&held)
                    ),
                ))
            }
            None => {}
        }
        let out = Output {
            dir,
            journal,
            bytes_written: 0,
            finished: false,
        };
        out.save_journal()?;
        Ok(out)
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn save_journal(&self) -> Result<()> {
        let text = serde_json::to_string(&self.journal).expect("JSON");
        fsutil::write_atomic(self.path(), JOURNAL_FILE, text.as_bytes())
    }

    /// What an interrupted run finished of the shard `file`.
    fn resumed(&self, file: &str) -> Option<&ShardDone> {
        self.journal.done.get(file)
    }

    /// Records the shard `file`, now in place.
    fn record(&mut self, file: &str, done: ShardDone) -> Result<()> {
        self.journal.done.insert(file.to_string(), done);
        self.save_journal()
    }

    fn write(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        fsutil::write_atomic(self.dir.path(), name, bytes)?;
        self.bytes_written += bytes.len() as u64;
        Ok(())
    }

    /// Copies the input's other files (not weights, nor `config.json`, which
    /// the caller writes; symprune's `sparsity.json` is kept); returns those
    /// skipped.
    fn copy_other_files(&mut self, input: &Checkpoint) -> Result<Vec<String>> {
        let mut skipped = Vec::new();
        for name in fsutil::entries(&input.dir)? {
            let name = name.to_string_lossy().into_owned();
            let src = input.dir.join(&name);
            let is_shard = input.shards.iter().any(|s| s.file == name);
            if name.starts_with('.') || is_shard || name == INDEX_FILE || name == CONFIG_FILE {
                continue;
            }
            if is_weight_file(&name) || !src.is_file() {
                skipped.push(name);
                continue;
            }
            self.bytes_written += fsutil::copy_atomic(&src, self.dir.path(), &name)?;
        }
        Ok(skipped)
    }

    /// Copies the other files, writes the index and `config.json`, syncs,
    /// and removes the journal: the output is finished. Returns the files
    /// not copied.
    fn finish(
        &mut self,
        checkpoint: &Checkpoint,
        total: u64,
        config: &Map<String, Value>,
    ) -> Result<Vec<String>> {
        let skipped = self.copy_other_files(checkpoint)?;
        if let Some(index) = &checkpoint.index {
            let mut index = index.clone();
            let map: Map<String, Value> = (checkpoint.shards.iter())
                .filter_map(|s| self.journal.done.get(&s.file).map(|d| (s, d)))
                .flat_map(|(s, d)| d.names.iter().map(|n| (n.clone(), s.file.clone().into())))
                .collect();
            index.json.insert("weight_map".into(), Value::Object(map));
            self.write(INDEX_FILE, index.render(total).as_bytes())?;
        }
        self.write(CONFIG_FILE, render_json(config).as_bytes())?;
        fsutil::sync_dir(self.path())?;
        fsutil::remove_entry(&self.path().join(JOURNAL_FILE))?;
        fsutil::sync_dir(self.path())?;
        self.finished = true;
        Ok(skipped)
    }

    /// The finished shards' records, in the input's shard order.
    fn shards<'a>(&'a self, checkpoint: &'a Checkpoint) -> impl Iterator<Item = &'a ShardDone> {
        (checkpoint.shards.iter()).filter_map(|s| self.journal.done.get(&s.file))
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        // A run stopped before finishing a shard leaves nothing to resume.
        if !self.finished && self.journal.done.is_empty() {
            let _ = fsutil::remove_entry(&self.path().join(JOURNAL_FILE));
        }
    }
}

/// The journal in `dir`: `None` without one, `Some(None)` when unreadable.
fn read_journal(dir: &Path) -> Result<Option<Option<RunJournal>>> {
    let path = dir.join(JOURNAL_FILE);
    let mut bytes = Vec::new();
    match fsutil::open_nofollow(&path) {
        Ok(mut f) => f.read_to_end(&mut bytes).map_err(Error::io(&path))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(_) => return Ok(Some(None)),
    };
    Ok(Some(serde_json::from_slice(&bytes).ok()))
}

/// A shard being written under its temporary name.
struct ShardFile {
    tmp: PathBuf,
    file: File,
    /// Where the data section starts.
    base: u64,
    /// Bytes of data written so far.
    pos: u64,
    committed: bool,
}

impl Drop for ShardFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fsutil::remove_entry(&self.tmp);
        }
    }
}

impl ShardFile {
    fn create(out: &Output, name: &str, base: usize) -> Result<ShardFile> {
        let (tmp, file) = fsutil::create_temp(out.path(), name)?;
        Ok(ShardFile {
            tmp,
            file,
            base: base as u64,
            pos: 0,
            committed: false,
        })
    }

    fn write_at(&self, data_offset: u64, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all_at(bytes, self.base + data_offset)
            .map_err(Error::io(&self.tmp))
    }

    /// Appends a tensor kept as it is, copied from the input map a chunk at
    /// a time (each chunk's pages dropped once written); returns its zeros
    /// and elements if it is floating-point, counted on the way.
    fn copy(&mut self, shard: &Shard, t: &TensorInfo) -> Result<(u64, u64)> {
        let data = shard.data(t)?;
        let float = is_float(t.dtype);
        let mut zeros = 0;
        for (k, chunk) in data.chunks(COPY_BYTES).enumerate() {
            if float {
                zeros += count_zeros(t.dtype, chunk).expect("whole elements");
            }
            self.write_at(self.pos + (k * COPY_BYTES) as u64, chunk)?;
            shard.release(shard.offset(t) + k * COPY_BYTES, chunk.len());
        }
        self.pos += data.len() as u64;
        Ok(if float {
            (zeros, t.numel() as u64)
        } else {
            (0, 0)
        })
    }

    /// Writes the header at the start, fsyncs, renames into place and
    /// records the shard (`done`, completed with the file's length and
    /// header) in the journal.
    fn finish(
        mut self,
        out: &mut Output,
        name: &str,
        header: &[u8],
        mut done: ShardDone,
    ) -> Result<()> {
        assert!(header.len() as u64 <= self.base, "header fits its space");
        self.file
            .write_all_at(header, 0)
            .and_then(|_| self.file.sync_all())
            .map_err(Error::io(&self.tmp))?;
        fsutil::commit(&self.tmp, &out.path().join(name))?;
        self.committed = true;
        out.bytes_written += self.base + self.pos;
        done.len = self.base + self.pos;
        done.header = header_digest(header);
        out.record(name, done)
    }
}

/// Reads `config.json` of `dir` as a JSON object (`None` without one).
fn read_config(dir: &Path) -> Result<Option<Map<String, Value>>> {
    let path = dir.join(CONFIG_FILE);
    let mut text = String::new();
    match fsutil::open_nofollow(&path) {
        Ok(mut f) => f.read_to_string(&mut text).map_err(Error::io(&path))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&path)(e)),
    };
    match serde_json::from_str(&text) {
        Ok(Value::Object(map)) => Ok(Some(map)),
        _ => Err(Error::checkpoint(
            &path,
            "is not a JSON object; restore the model's config.json",
        )),
    }
}

fn render_json(map: &Map<String, Value>) -> String {
    let mut text = serde_json::to_string_pretty(map).expect("JSON");
    text.push('\n');
    text
}

/// Whether `global_sparsity` counts tensors of `dtype`.
fn is_float(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64)
}

/// Zeros and elements of a floating-point tensor's bytes (others: none).
fn float_zeros(t: &TensorInfo, data: &[u8]) -> (u64, u64) {
    match count_zeros(t.dtype, data) {
        Some(z) if is_float(t.dtype) => (z, t.numel() as u64),
        _ => (0, 0),
    }
}

/// A selected tensor, checked against the format.
enum Plan {
    Bitmask { row_nonzeros: Vec<u64> },
    TwoFour,
    Dense(String),
}

/// Nonzeros per row of a `rows x cols` matrix of `size`-byte elements.
fn row_nonzeros(data: &[u8], cols: usize, size: usize, mask: u64) -> Vec<u64> {
    fn count<const N: usize>(data: &[u8], cols: usize, mask: u64) -> Vec<u64> {
        data.par_chunks(cols * N)
            .map(|row| {
                row.chunks_exact(N)
                    .filter(|e| !is_zero::<N>(e, mask))
                    .count() as u64
            })
            .collect()
    }
    match size {
        2 => count::<2>(data, cols, mask),
        4 => count::<4>(data, cols, mask),
        _ => count::<8>(data, cols, mask),
    }
}

/// The nonzero pattern of a four-element group, element `i` at bit `i`.
#[inline]
fn group_pattern<const N: usize>(group: &[u8], mask: u64) -> u8 {
    (0..4).fold(0u8, |bits, i| {
        bits | (!is_zero::<N>(&group[i * N..], mask) as u8) << i
    })
}

/// The first group of four (row, column) with more than two nonzeros.
fn first_dense_group(data: &[u8], cols: usize, size: usize, mask: u64) -> Option<(usize, usize)> {
    fn find<const N: usize>(data: &[u8], cols: usize, mask: u64) -> Option<(usize, usize)> {
        data.par_chunks(cols * N)
            .enumerate()
            .find_map_first(|(r, row)| {
                row.chunks_exact(4 * N)
                    .position(|g| flags_24(group_pattern::<N>(g, mask)).is_none())
                    .map(|g| (r, 4 * g))
            })
    }
    match size {
        2 => find::<2>(data, cols, mask),
        4 => find::<4>(data, cols, mask),
        _ => find::<8>(data, cols, mask),
    }
}

/// Packs the rows of `chunk` (`cols` elements of `N` bytes each) as
/// `sparse-bitmask`: their nonzeros, in order, into `values` and one bit per
/// element into `bits`; returns the bytes of values written. Every element
/// is copied and only the nonzeros advance the position (no branch on the
/// data), so `values` must hold one element more than the nonzeros.
fn pack_bitmask<const N: usize>(
    chunk: &[u8],
    cols: usize,
    mask: u64,
    values: &mut [u8],
    bits: &mut [u8],
) -> usize {
    let mut pos = 0;
    for (row, out) in chunk
        .chunks_exact(cols * N)
        .zip(bits.chunks_exact_mut(cols.div_ceil(8)))
    {
        for (byte, octet) in out.iter_mut().zip(row.chunks(8 * N)) {
            let mut flags = 0u8;
            for (i, e) in octet.chunks_exact(N).enumerate() {
                let keep = !is_zero::<N>(e, mask) as usize;
                values[pos..pos + N].copy_from_slice(e);
                pos += keep * N;
                flags |= (keep as u8) << i;
            }
            *byte = flags;
        }
    }
    pos
}

/// Packs the rows of `chunk` (planned as 2:4) as `sparse-24-bitmask`: two
/// values per group of four into `values`, four flag bits per group into
/// `bits`; returns the nonzeros among them.
fn pack_24<const N: usize>(
    chunk: &[u8],
    cols: usize,
    mask: u64,
    values: &mut [u8],
    bits: &mut [u8],
) -> u64 {
    let mut nonzeros = 0u64;
    let mut pos = 0;
    for (row, out) in chunk
        .chunks_exact(cols * N)
        .zip(bits.chunks_exact_mut(cols.div_ceil(8)))
    {
        for (g, group) in row.chunks_exact(4 * N).enumerate() {
            let pattern = group_pattern::<N>(group, mask);
            let flags = flags_24(pattern).expect("planned as 2:4");
            let (i, j) = (
                flags.trailing_zeros(),
                (flags & (flags - 1)).trailing_zeros(),
            );
            for k in [i, j] {
                let k = k as usize * N;
                values[pos..pos + N].copy_from_slice(&group[k..k + N]);
                pos += N;
            }
            out[g / 2] |= flags << (4 * (g % 2));
            nonzeros += pattern.count_ones() as u64;
        }
    }
    nonzeros
}

fn plan_tensor(format: SaveFormat, t: &TensorInfo, data: &[u8]) -> Plan {
    let (size, mask) = zero_mask(t.dtype).expect("the selection only picks float tensors");
    let (rows, cols) = (t.shape[0], t.shape[1]);
    if !t.name.ends_with(".weight") {
        return Plan::Dense(
            "is not a `.weight` parameter; compressed-tensors compresses only weights".into(),
        );
    }
    match format {
        SaveFormat::Sparse24Bitmask => {
            if cols % 4 != 0 {
                return Plan::Dense(format!(
                    "has {cols} columns, not a multiple of 4, so it cannot be 2:4"
                ));
            }
            match first_dense_group(data, cols, size, mask) {
                Some((r, c)) => Plan::Dense(format!(
                    "is not 2:4: row {r}, columns {c}..{} hold more than 2 nonzeros",
                    c + 3
                )),
                None => Plan::TwoFour,
            }
        }
        _ => {
            let row_nonzeros = row_nonzeros(data, cols, size, mask);
            let nnz: u64 = row_nonzeros.iter().sum();
            let stored = nnz as usize * size + rows * cols.div_ceil(8) + rows * 8 + 16;
            if stored >= t.nbytes() {
                return Plan::Dense(format!(
                    "would take {stored} bytes as a bitmask, not less than its {} dense bytes \
                     ({nnz} nonzeros of {})",
                    t.nbytes(),
                    t.numel()
                ));
            }
            Plan::Bitmask { row_nonzeros }
        }
    }
}

/// `0` and the running totals of `counts`.
fn prefix_sums(counts: &[u64]) -> Vec<u64> {
    let mut sums = Vec::with_capacity(counts.len() + 1);
    sums.push(0);
    for n in counts {
        sums.push(sums.last().expect("one") + n);
    }
    sums
}

/// Rows per parallel block of a matrix with `row_bytes` bytes per row.
fn block_rows(row_bytes: usize) -> usize {
    (BLOCK_BYTES / row_bytes.max(1)).max(1)
}

/// Writes one compressed weight at the shard's current position; returns
/// its entries (in file order) and its nonzeros (exact: 2:4 stores some
/// zeros among its values).
fn write_compressed(
    file: &mut ShardFile,
    shard: &Shard,
    t: &TensorInfo,
    module: &str,
    plan: &Plan,
) -> Result<(Vec<Entry>, u64)> {
    let (size, mask) = zero_mask(t.dtype).expect("float");
    let (rows, cols) = (t.shape[0], t.shape[1]);
    let mask_row = cols.div_ceil(8);
    let data = shard.data(t)?;
    let block = block_rows(cols * size);
    let (format, offsets) = match plan {
        Plan::Bitmask { row_nonzeros } => (SaveFormat::SparseBitmask, prefix_sums(row_nonzeros)),
        Plan::TwoFour => (
            SaveFormat::Sparse24Bitmask,
            (0..=rows).map(|r| (r * cols / 2) as u64).collect(),
        ),
        Plan::Dense(_) => unreachable!("dense tensors are copied"),
    };
    let stored = offsets[rows];
    let values_at = file.pos;
    let mask_at = values_at + stored * size as u64;
    let nnz = data
        .par_chunks(block * cols * size)
        .enumerate()
        // Buffers per worker: fresh pages per block would fault on every write.
        .map_init(
            || (Vec::new(), Vec::new()),
            |(values, bits), (b, chunk)| -> Result<u64> {
                let r0 = b * block;
                let n_rows = chunk.len() / (cols * size);
                let first = offsets[r0] as usize;
                let len = (offsets[r0 + n_rows] as usize - first) * size;
                // One element of slack for the unconditional copies.
                values.resize(len + size, 0);
                bits.clear();
                bits.resize(n_rows * mask_row, 0);
                let (v, m) = (&mut values[..], &mut bits[..]);
                let nnz = match (format, size) {
                    (SaveFormat::Sparse24Bitmask, 2) => pack_24::<2>(chunk, cols, mask, v, m),
                    (SaveFormat::Sparse24Bitmask, 4) => pack_24::<4>(chunk, cols, mask, v, m),
                    (SaveFormat::Sparse24Bitmask, _) => pack_24::<8>(chunk, cols, mask, v, m),
                    (_, 2) => (pack_bitmask::<2>(chunk, cols, mask, v, m) / 2) as u64,
                    (_, 4) => (pack_bitmask::<4>(chunk, cols, mask, v, m) / 4) as u64,
                    _ => (pack_bitmask::<8>(chunk, cols, mask, v, m) / 8) as u64,
                };
                file.write_at(values_at + (first * size) as u64, &values[..len])?;
                file.write_at(mask_at + (r0 * mask_row) as u64, bits)?;
                shard.release(shard.offset(t) + r0 * cols * size, chunk.len());
                Ok(nnz)
            },
        )
        .try_reduce(|| 0, |a, b| Ok(a + b))?;
    let mut tail = Vec::new();
    let mut entries = vec![
        Entry {
            name: format!("{module}.compressed"),
            dtype: t.dtype,
            shape: match format {
                SaveFormat::Sparse24Bitmask => vec![rows, cols / 2],
                _ => vec![stored as usize],
            },
            len: stored as usize * size,
        },
        Entry {
            name: format!("{module}.bitmask"),
            dtype: Dtype::U8,
            shape: vec![rows, mask_row],
            len: rows * mask_row,
        },
    ];
    if format == SaveFormat::SparseBitmask {
        tail.extend(
            offsets[..rows]
                .iter()
                .flat_map(|o| (*o as i64).to_le_bytes()),
        );
        entries.push(Entry {
            name: format!("{module}.row_offsets"),
            dtype: Dtype::I64,
            shape: vec![rows],
            len: rows * 8,
        });
    }
    tail.extend(
        [rows as i64, cols as i64]
            .iter()
            .flat_map(|d| d.to_le_bytes()),
    );
    entries.push(Entry {
        name: format!("{module}.shape"),
        dtype: Dtype::I64,
        shape: match format {
            SaveFormat::Sparse24Bitmask => vec![2, 1],
            _ => vec![2],
        },
        len: 16,
    });
    file.write_at(mask_at + (rows * mask_row) as u64, &tail)?;
    file.pos = mask_at + (rows * mask_row + tail.len()) as u64;
    Ok((entries, nnz))
}

/// Entries whose header is at least as long as any header the shard can
/// get: every selected tensor both compressed at full density and dense.
fn header_bound(shard: &Shard, format: SaveFormat, selection: &Selection) -> usize {
    let mut entries = Vec::new();
    let mut total = 0usize;
    for t in &shard.header.tensors {
        let dense = Entry::dense(t);
        if selection.selects(t) {
            let module = t.name.strip_suffix(".weight").unwrap_or(&t.name);
            let (rows, cols) = (t.shape[0], t.shape[1]);
            let widest = t.nbytes() + rows * cols.div_ceil(8) + rows * 8 + 16;
            for name in part_names(format, module) {
                entries.push(Entry {
                    name,
                    dtype: t.dtype,
                    shape: vec![t.numel(), cols],
                    len: widest,
                });
                total += widest;
            }
        }
        total += dense.len;
        entries.push(dense);
    }
    // Every offset is at most `total`, which the widest entry stands for.
    if let Some(last) = entries.last_mut() {
        last.len = total;
    }
    render_header(&shard.header.metadata, &entries, 0).len()
}

/// Writes the pruned checkpoint `input` into `output` in the compressed
/// `format`; tensors chosen by `selection` (the pruning rule) are compressed
/// unless the format cannot hold them (reported, listed in `ignore`). An
/// interrupted run of the same input, format and selection is resumed.
pub fn compress_checkpoint(
    input: &Path,
    output: &Path,
    format: SaveFormat,
    selection: &Selection,
    progress: &mut dyn FnMut(Progress) -> bool,
) -> Result<Report> {
    let started = Instant::now();
    if format == SaveFormat::Dense {
        return Err(Error::invalid(
            "format",
            "dense is not a compressed format; use sparse-bitmask or sparse-24-bitmask (and \
             decompress to get a dense checkpoint back)",
        ));
    }
    let checkpoint = Checkpoint::open(input)?;
    let mut config = read_config(&checkpoint.dir)?.unwrap_or_default();
    if config.contains_key("quantization_config") {
        return Err(Error::checkpoint(
            checkpoint.dir.join(CONFIG_FILE),
            "already has a quantization_config (a quantized or compressed checkpoint); \
             compress a dense checkpoint (decompress this one first if it is sparse)",
        ));
    }
    let selected = checkpoint
        .tensors()
        .filter(|(_, t)| selection.selects(t))
        .count();
    if selected == 0 {
        return Err(Error::checkpoint(
            input,
            "no tensor matches the selection (2-D F32/F16/BF16 weights, by default the linear \
             layers of the decoder blocks); check targets/ignore against `symprune inspect`",
        ));
    }
    let run = format!("compress {} {}", format.name(), selection.describe());
    let mut out = Output::claim(&checkpoint, output, run)?;
    let stopped = || {
        Error::checkpoint(
            output,
            "interrupted; the finished shards are kept: run the same command again to resume",
        )
    };
    if !progress(Progress::Start { tensors: selected }) {
        return Err(stopped());
    }
    let mut resumed_shards = 0;
    for shard in &checkpoint.shards {
        if let Some(done) = out.resumed(&shard.file) {
            resumed_shards += 1;
            if !done.tensors.iter().all(|t| progress(Progress::Tensor(t))) {
                return Err(stopped());
            }
            continue;
        }
        let (file, header, done) = compress_shard(&out, shard, format, selection, &mut |entry| {
            progress(Progress::Tensor(entry))
        })?
        .ok_or_else(stopped)?;
        file.finish(&mut out, &shard.file, &header, done)?;
    }
    let totals = totals(out.shards(&checkpoint));
    let module = |name: &str| name.strip_suffix(".weight").unwrap_or(name).to_string();
    let sparsity_config = json!({
        "format": format.name(),
        "global_sparsity": totals.sparsity(),
        "ignore": totals.left_dense.iter().map(|t| module(&t.name)).collect::<Vec<_>>(),
        "registry_requires_subclass": false,
        "sparsity_structure": match format {
            SaveFormat::Sparse24Bitmask => "2:4",
            _ => "unstructured",
        },
        "targets": totals.tensors.iter().map(|t| module(&t.name)).collect::<Vec<_>>(),
    });
    config.insert(
        "quantization_config".into(),
        json!({
            "quant_method": "compressed-tensors",
            "sparsity_config": sparsity_config,
            "transform_config": {},
            "version": COMPRESSED_TENSORS_VERSION,
        }),
    );
    let skipped_files = out.finish(&checkpoint, totals.bytes_out, &config)?;
    Ok(totals.report(
        format,
        &out,
        &checkpoint,
        resumed_shards,
        skipped_files,
        started,
    ))
}

/// A shard written under its temporary name, its header, and its record.
type WrittenShard = (ShardFile, Vec<u8>, ShardDone);

/// Writes the compressed form of `shard`; `None` when `on_tensor` (told of
/// each compressed tensor) asks to stop.
fn compress_shard(
    out: &Output,
    shard: &Shard,
    format: SaveFormat,
    selection: &Selection,
    on_tensor: &mut dyn FnMut(&TensorEntry) -> bool,
) -> Result<Option<WrittenShard>> {
    let reserved = header_bound(shard, format, selection);
    let mut file = ShardFile::create(out, &shard.file, reserved)?;
    let mut entries = Vec::new();
    let mut done = ShardDone::default();
    for t in &shard.header.tensors {
        let data = shard.data(t)?;
        done.bytes_in += data.len() as u64;
        let plan = if selection.selects(t) {
            Some(plan_tensor(format, t, data))
        } else {
            None
        };
        match plan {
            Some(plan @ (Plan::Bitmask { .. } | Plan::TwoFour)) => {
                let module = t.name.strip_suffix(".weight").expect("checked");
                let (parts, nnz) = write_compressed(&mut file, shard, t, module, &plan)?;
                let stored: usize = parts.iter().map(|p| p.len).sum();
                let n = t.numel() as u64;
                let entry = TensorEntry {
                    name: t.name.clone(),
                    shape: t.shape.clone(),
                    dtype: t.dtype_name(),
                    nonzeros: nnz,
                    numel: n,
                    dense_bytes: t.nbytes() as u64,
                    compressed_bytes: stored as u64,
                };
                (done.zeros, done.numel) = (done.zeros + n - nnz, done.numel + n);
                entries.extend(parts);
                if !on_tensor(&entry) {
                    return Ok(None);
                }
                done.tensors.push(entry);
            }
            other => {
                if let Some(Plan::Dense(reason)) = other {
                    done.left_dense.push(LeftDense {
                        name: t.name.clone(),
                        reason,
                    });
                }
                let (z, n) = file.copy(shard, t)?;
                (done.zeros, done.numel) = (done.zeros + z, done.numel + n);
                entries.push(Entry::dense(t));
            }
        }
    }
    let header = render_header(&shard.header.metadata, &entries, reserved - 8);
    done.hold(entries);
    Ok(Some((file, header, done)))
}

/// The run as one shard: its shards' tensors, zeros and bytes summed.
fn totals<'a>(shards: impl Iterator<Item = &'a ShardDone>) -> ShardDone {
    let mut t = ShardDone::default();
    for d in shards {
        t.tensors.extend(d.tensors.iter().cloned());
        t.left_dense.extend(d.left_dense.iter().cloned());
        t.zeros += d.zeros;
        t.numel += d.numel;
        t.bytes_in += d.bytes_in;
        t.bytes_out += d.bytes_out;
    }
    t
}

/// One compressed weight of an input shard, validated.
pub(crate) struct Compressed<'a> {
    pub(crate) module: String,
    pub(crate) dtype: Dtype,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) values: (&'a Shard, &'a TensorInfo),
    pub(crate) bitmask: (&'a Shard, &'a TensorInfo),
    /// Where each row's values start (`rows + 1` entries).
    pub(crate) offsets: Vec<u64>,
}

/// The compressed format of the checkpoint in `dir`: `None` when its
/// `config.json` (if any) has no `quantization_config.sparsity_config`, an
/// error when that names a format symprune does not read.
pub(crate) fn sparse_format(dir: &Path) -> Result<Option<SaveFormat>> {
    let sparse = read_config(dir)?
        .and_then(|c| c.get("quantization_config").cloned())
        .is_some_and(|qc| qc.get("sparsity_config").is_some_and(|s| !s.is_null()));
    if !sparse {
        return Ok(None);
    }
    read_format(dir).map(|(format, _)| Some(format))
}

/// The compressed weight that the tensor `name` is a part of, if any.
pub(crate) fn part_of<'m, 'a>(
    found: &'m HashMap<String, Compressed<'a>>,
    format: SaveFormat,
    name: &str,
) -> Option<&'m Compressed<'a>> {
    param_suffixes(format)
        .iter()
        .find_map(|s| name.strip_suffix(&format!(".{s}")))
        .and_then(|m| found.get(m))
}

/// The compressed format named by a checkpoint's `config.json`.
fn read_format(dir: &Path) -> Result<(SaveFormat, Map<String, Value>)> {
    let path = dir.join(CONFIG_FILE);
    let bad = |msg: String| Error::checkpoint(&path, msg);
    let config = read_config(dir)?.ok_or_else(|| {
        bad(
            "does not exist; a compressed-tensors checkpoint names its format in \
             config.json (quantization_config.sparsity_config)"
                .into(),
        )
    })?;
    let Some(qc) = config.get("quantization_config") else {
        return Err(bad(
            "has no quantization_config; this is not a compressed-tensors sparse checkpoint".into(),
        ));
    };
    if qc.get("config_groups").is_some_and(|g| !g.is_null()) {
        return Err(bad(
            "quantization_config describes quantized weights (config_groups); symprune \
             decompresses sparsity only"
                .into(),
        ));
    }
    let format = match qc.get("sparsity_config").and_then(|s| s.get("format")) {
        Some(Value::String(f)) => f,
        Some(other) => {
            return Err(bad(format!(
                "quantization_config.sparsity_config.format is {other}, not a format name"
            )))
        }
        None => {
            return Err(bad(
                "quantization_config has no sparsity_config.format; this is not a sparse \
                 compressed-tensors checkpoint"
                    .into(),
            ))
        }
    };
    match SaveFormat::parse(format) {
        Ok(f) if f != SaveFormat::Dense => Ok((f, config)),
        _ => Err(bad(format!(
            "quantization_config.sparsity_config.format {format:?} is not a sparse format \
             symprune reads (sparse-bitmask, sparse-24-bitmask)"
        ))),
    }
}

/// Finds and checks the compressed weights of `checkpoint` (their parts may
/// lie in different shards): every part present, dtypes and shapes
/// consistent, the bitmask's popcount equal to the values (and to the row
/// offsets).
pub(crate) fn find_compressed(
    checkpoint: &Checkpoint,
    format: SaveFormat,
) -> Result<HashMap<String, Compressed<'_>>> {
    type Parts<'a> = HashMap<&'static str, (&'a Shard, &'a TensorInfo)>;
    let mut groups: BTreeMap<String, Parts> = BTreeMap::new();
    for (shard, t) in checkpoint.tensors() {
        for &suffix in param_suffixes(format) {
            if let Some(module) = t.name.strip_suffix(&format!(".{suffix}")) {
                groups
                    .entry(module.to_string())
                    .or_default()
                    .insert(suffix, (shard, t));
            }
        }
    }
    let mut found = HashMap::new();
    for (module, parts) in groups {
        let (shard, _) = parts.values().next().expect("one part");
        let err = |msg: String| Error::tensor(&shard.path, format!("{module}.weight"), msg);
        for &suffix in param_suffixes(format) {
            if !parts.contains_key(suffix) {
                return Err(err(format!(
                    "{module}.{suffix} is missing; a {format} weight has {}",
                    part_names(format, &module).join(", ")
                )));
            }
        }
        if checkpoint.get(&format!("{module}.weight")).is_some() {
            return Err(err(
                "is stored both dense and compressed; remove one of them".into(),
            ));
        }
        let (shape_shard, shape) = parts["shape"];
        if shape.dtype != Dtype::I64 || shape.numel() != 2 {
            return Err(err(format!(
                "{module}.shape is {} {:?}; expected the two I64 dimensions of the weight",
                shape.dtype, shape.shape
            )));
        }
        let dims: Vec<i64> = bytemuck::pod_collect_to_vec(shape_shard.data(shape)?);
        let (rows, cols) = match (usize::try_from(dims[0]), usize::try_from(dims[1])) {
            (Ok(r), Ok(c))
                if r.checked_mul(c)
                    .is_some_and(|n| n <= isize::MAX as usize / 8) =>
            {
                (r, c)
            }
            _ => return Err(err(format!("{module}.shape {dims:?} is not a valid shape"))),
        };
        let ((values_shard, values), (bitmask_shard, bitmask)) =
            (parts["compressed"], parts["bitmask"]);
        if zero_mask(values.dtype).is_none() {
            return Err(err(format!(
                "{module}.compressed is {}, which symprune cannot decompress",
                values.dtype
            )));
        }
        let mask_row = cols.div_ceil(8);
        if bitmask.dtype != Dtype::U8 || bitmask.shape != [rows, mask_row] {
            return Err(err(format!(
                "{module}.bitmask is {} {:?}; the shape [{rows}, {cols}] needs U8 [{rows}, \
                 {mask_row}] (one bit per element)",
                bitmask.dtype, bitmask.shape
            )));
        }
        let bits = bitmask_shard.data(bitmask)?;
        let tail = if cols % 8 == 0 {
            0xff
        } else {
            (1u8 << (cols % 8)) - 1
        };
        // Bits past the last column are padding, ignored as numpy's unpackbits does.
        let counts: Vec<u64> = if mask_row == 0 {
            vec![0; rows]
        } else {
            bits.par_chunks(mask_row)
                .map(|row| {
                    let (last, body) = row.split_last().expect("non-empty");
                    body.iter().map(|b| b.count_ones() as u64).sum::<u64>()
                        + (last & tail).count_ones() as u64
                })
                .collect()
        };
        bitmask_shard.release(bitmask_shard.offset(bitmask), bits.len());
        let offsets = prefix_sums(&counts);
        let total = offsets[rows];
        if values.numel() as u64 != total {
            return Err(err(format!(
                "{module}.compressed holds {} values, but the bitmask flags {total}",
                values.numel()
            )));
        }
        match format {
            SaveFormat::Sparse24Bitmask => {
                if values.shape != [rows, cols / 2] || cols % 4 != 0 {
                    return Err(err(format!(
                        "{module}.compressed is {:?}; 2:4 values of [{rows}, {cols}] are \
                         [{rows}, {}]",
                        values.shape,
                        cols / 2
                    )));
                }
                if let Some(r) = counts.iter().position(|&n| n as usize != cols / 2) {
                    return Err(err(format!(
                        "the bitmask flags {} elements in row {r}, not {} (2 of every 4)",
                        counts[r],
                        cols / 2
                    )));
                }
            }
            _ => {
                let (offsets_shard, row_offsets) = parts["row_offsets"];
                let expected: Vec<i64> = offsets[..rows].iter().map(|&o| o as i64).collect();
                let given: Option<Vec<i64>> = (row_offsets.dtype == Dtype::I64
                    && row_offsets.shape == [rows])
                .then(|| {
                    offsets_shard
                        .data(row_offsets)
                        .map(bytemuck::pod_collect_to_vec)
                })
                .transpose()?;
                if given.as_ref() != Some(&expected) {
                    return Err(err(format!(
                        "{module}.row_offsets ({} {:?}) do not match the bitmask's rows",
                        row_offsets.dtype, row_offsets.shape
                    )));
                }
                if values.shape.len() != 1 {
                    return Err(err(format!(
                        "{module}.compressed is {:?}; expected the 1-D list of nonzeros",
                        values.shape
                    )));
                }
            }
        }
        found.insert(
            module.clone(),
            Compressed {
                module,
                dtype: values.dtype,
                rows,
                cols,
                values: (values_shard, values),
                bitmask: (bitmask_shard, bitmask),
                offsets,
            },
        );
    }
    Ok(found)
}

/// What a decompressed shard holds, in order.
enum Item<'a, 'b> {
    Weight(&'b Compressed<'a>),
    Kept(&'a TensorInfo),
}

/// Writes one compressed weight as its dense tensor at the current position.
fn write_dense(file: &mut ShardFile, c: &Compressed) -> Result<()> {
    let (size, _) = zero_mask(c.dtype).expect("checked");
    let ((shard, info), (bitmask_shard, bitmask)) = (c.values, c.bitmask);
    let (values, bits) = (shard.data(info)?, bitmask_shard.data(bitmask)?);
    let mask_row = c.cols.div_ceil(8);
    let block = block_rows(c.cols * size);
    let at = file.pos;
    (0..c.rows.div_ceil(block))
        .into_par_iter()
        // One buffer per worker: fresh pages per block would fault on every write.
        .try_for_each_init(Vec::new, |dense, b| -> Result<()> {
            let (r0, r1) = (b * block, ((b + 1) * block).min(c.rows));
            dense.resize((r1 - r0) * c.cols * size, 0);
            let mut v = c.offsets[r0] as usize * size;
            for (r, out) in (r0..r1).zip(dense.chunks_exact_mut(c.cols * size)) {
                let row = &bits[r * mask_row..(r + 1) * mask_row];
                v = match size {
                    2 => unpack_row::<2>(row, values, v, out),
                    4 => unpack_row::<4>(row, values, v, out),
                    _ => unpack_row::<8>(row, values, v, out),
                };
            }
            file.write_at(at + (r0 * c.cols * size) as u64, dense)
        })?;
    shard.release(shard.offset(info), values.len());
    bitmask_shard.release(bitmask_shard.offset(bitmask), bits.len());
    file.pos += (c.rows * c.cols * size) as u64;
    Ok(())
}

/// For each bitmask byte, where each of its eight elements finds its value
/// among the byte's values: its rank among the flagged ones, or 8 (a zero
/// slot) when unflagged.
const RANKS: [[u8; 8]; 256] = {
    let mut table = [[8u8; 8]; 256];
    let mut m = 0;
    while m < 256 {
        let (mut rank, mut i) = (0, 0);
        while i < 8 {
            if m >> i & 1 == 1 {
                table[m][i] = rank;
                rank += 1;
            }
            i += 1;
        }
        m += 1;
    }
    table
};

/// Fills the dense row `out` from its bitmask row and the values from byte
/// `v` on; returns where the next row's values start. Eight elements at a
/// time, without a branch on the data: the byte's values go into a small
/// buffer with a zero slot after them, and each element takes its slot.
fn unpack_row<const N: usize>(bits: &[u8], values: &[u8], mut v: usize, out: &mut [u8]) -> usize {
    let mut buf = [[0u8; N]; 9];
    for (&byte, octet) in bits.iter().zip(out.chunks_mut(8 * N)) {
        let have = octet.len() / N;
        // Bits past the last column are padding, ignored.
        let flags = if have < 8 {
            byte & ((1u8 << have) - 1)
        } else {
            byte
        };
        let count = flags.count_ones() as usize;
        let slots = buf[..8].as_flattened_mut();
        if v + 8 * N <= values.len() {
            slots.copy_from_slice(&values[v..v + 8 * N]);
        } else {
            slots[..count * N].copy_from_slice(&values[v..v + count * N]);
        }
        for (e, &rank) in octet.chunks_exact_mut(N).zip(&RANKS[flags as usize]) {
            e.copy_from_slice(&buf[rank as usize]);
        }
        v += count * N;
    }
    v
}

/// Writes the compressed-tensors checkpoint `input` (sparse-bitmask or
/// sparse-24-bitmask, as its config.json says) into `output` as a dense one;
/// everything is validated before the output is touched. An interrupted run
/// on the same input is resumed.
pub fn decompress_checkpoint(input: &Path, output: &Path) -> Result<Report> {
    let started = Instant::now();
    let checkpoint = Checkpoint::open(input)?;
    let (format, mut config) = read_format(&checkpoint.dir)?;
    let found = find_compressed(&checkpoint, format)?;
    let mut out = Output::claim(&checkpoint, output, "decompress".into())?;
    // Each weight takes the place of its first part (its parts may lie in
    // several shards, as transformers' size-based sharding leaves them).
    let mut placed = HashSet::new();
    let mut resumed_shards = 0;
    for shard in &checkpoint.shards {
        if let Some(done) = out.resumed(&shard.file) {
            resumed_shards += 1;
            let modules = done.tensors.iter().map(|t| t.name.strip_suffix(".weight"));
            placed.extend(modules.map(|m| m.expect("a weight").to_string()));
            continue;
        }
        let (file, header, done) =
            decompress_shard(&out, &checkpoint, shard, format, &found, &mut placed)?;
        file.finish(&mut out, &shard.file, &header, done)?;
    }
    config.remove("quantization_config");
    let totals = totals(out.shards(&checkpoint));
    let skipped_files = out.finish(&checkpoint, totals.bytes_out, &config)?;
    Ok(totals.report(
        format,
        &out,
        &checkpoint,
        resumed_shards,
        skipped_files,
        started,
    ))
}

/// Writes the dense form of `shard`: the weights whose first part it holds
/// (recorded in `placed`), and its other tensors as they are.
fn decompress_shard(
    out: &Output,
    checkpoint: &Checkpoint,
    shard: &Shard,
    format: SaveFormat,
    found: &HashMap<String, Compressed>,
    placed: &mut HashSet<String>,
) -> Result<WrittenShard> {
    let mut entries = Vec::new();
    let mut order: Vec<Item> = Vec::new();
    let mut done = ShardDone::default();
    for t in &shard.header.tensors {
        done.bytes_in += t.nbytes() as u64;
        match part_of(found, format, &t.name) {
            Some(c) if !placed.insert(c.module.clone()) => {}
            Some(c) => {
                let size = zero_mask(c.dtype).expect("checked").0;
                entries.push(Entry {
                    name: format!("{}.weight", c.module),
                    dtype: c.dtype,
                    shape: vec![c.rows, c.cols],
                    len: c.rows * c.cols * size,
                });
                order.push(Item::Weight(c));
            }
            None => {
                entries.push(Entry::dense(t));
                order.push(Item::Kept(t));
            }
        }
    }
    let header = render_header(&shard.header.metadata, &entries, 0);
    let mut file = ShardFile::create(out, &shard.file, header.len())?;
    for item in &order {
        match item {
            Item::Weight(c) => {
                let n = (c.rows * c.cols) as u64;
                // Flagged elements may be zeros too (2:4 groups with fewer nonzeros).
                let (flagged_zeros, _) = float_zeros(c.values.1, c.values.0.data(c.values.1)?);
                write_dense(&mut file, c)?;
                let nnz = c.offsets[c.rows] - flagged_zeros;
                let size = zero_mask(c.dtype).expect("checked").0;
                if is_float(c.dtype) {
                    (done.zeros, done.numel) = (done.zeros + n - nnz, done.numel + n);
                }
                let parts = part_names(format, &c.module);
                done.tensors.push(TensorEntry {
                    name: format!("{}.weight", c.module),
                    shape: vec![c.rows, c.cols],
                    dtype: c.dtype.to_string(),
                    nonzeros: nnz,
                    numel: n,
                    dense_bytes: n * size as u64,
                    compressed_bytes: parts
                        .iter()
                        .filter_map(|p| checkpoint.get(p))
                        .map(|(_, t)| t.nbytes() as u64)
                        .sum(),
                });
            }
            Item::Kept(t) => {
                let (z, n) = file.copy(shard, t)?;
                (done.zeros, done.numel) = (done.zeros + z, done.numel + n);
            }
        }
    }
    done.hold(entries);
    Ok((file, header, done))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::index::Index;
    use half::{bf16, f16};
    use safetensors::tensor::TensorView;
    use std::fs;

    type Tensor = (&'static str, Dtype, Vec<usize>, Vec<u8>);
    type Tensors = Vec<(String, Dtype, Vec<usize>, Vec<u8>)>;

    /// A shard as the safetensors crate (and so Hugging Face) writes it.
    fn shard_bytes(tensors: &[Tensor]) -> Vec<u8> {
        let views = tensors
            .iter()
            .map(|(n, d, s, b)| (*n, TensorView::new(*d, s.clone(), b).unwrap()));
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::tensor::serialize(views, Some(meta)).unwrap()
    }

    /// Row-major values with zeros where `keep` says no.
    fn values(rows: usize, cols: usize, keep: impl Fn(usize, usize) -> bool) -> Vec<f32> {
        (0..rows * cols)
            .map(|i| {
                let (r, c) = (i / cols, i % cols);
                if keep(r, c) {
                    (i as f32 + 1.0) * if i % 3 == 0 { -0.25 } else { 0.5 }
                } else {
                    0.0
                }
            })
            .collect()
    }

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
    fn bf16s(v: &[f32]) -> Vec<u8> {
        v.iter()
            .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
            .collect()
    }
    fn f16s(v: &[f32]) -> Vec<u8> {
        v.iter()
            .flat_map(|x| f16::from_f32(*x).to_le_bytes())
            .collect()
    }

    /// 2:4 in every group, some groups with fewer than two nonzeros.
    fn two_four(r: usize, c: usize) -> bool {
        match (r + c / 4) % 4 {
            0 => c % 4 == 1 || c % 4 == 2,
            1 => c % 4 == 0,
            2 => false,
            _ => c % 4 == 3 || c % 4 == 0,
        }
    }

    fn two_four_count(rows: usize, cols: usize) -> usize {
        (0..rows * cols)
            .filter(|i| two_four(i / cols, i % cols))
            .count()
    }

    /// A two-shard pruned model: 2:4 linears in BF16, F32 and F16, a dense
    /// embedding, a norm and an I8 tensor; an index, a config and a tokenizer.
    fn model(dir: &Path, keep: fn(usize, usize) -> bool) {
        fs::create_dir_all(dir).unwrap();
        let shards: [(&str, Vec<Tensor>); 2] = [
            (
                "model-00001-of-00002.safetensors",
                vec![
                    (
                        "model.embed_tokens.weight",
                        Dtype::F32,
                        vec![10, 8],
                        f32s(&values(10, 8, |_, _| true)),
                    ),
                    (
                        "model.layers.0.self_attn.q_proj.weight",
                        Dtype::BF16,
                        vec![6, 16],
                        bf16s(&values(6, 16, keep)),
                    ),
                    (
                        "model.layers.0.input_layernorm.weight",
                        Dtype::F32,
                        vec![8],
                        f32s(&[1.0; 8]),
                    ),
                ],
            ),
            (
                "model-00002-of-00002.safetensors",
                vec![
                    (
                        "model.layers.0.mlp.up_proj.weight",
                        Dtype::F32,
                        vec![12, 8],
                        f32s(&values(12, 8, keep)),
                    ),
                    (
                        "model.layers.1.mlp.down_proj.weight",
                        Dtype::F16,
                        vec![4, 12],
                        f16s(&values(4, 12, keep)),
                    ),
                    (
                        "model.layers.1.codes",
                        Dtype::I8,
                        vec![5],
                        vec![1, 0, 2, 0, 3],
                    ),
                ],
            ),
        ];
        let mut map = Map::new();
        for (file, tensors) in &shards {
            fs::write(dir.join(file), shard_bytes(tensors)).unwrap();
            for (n, ..) in tensors {
                map.insert(n.to_string(), Value::String(file.to_string()));
            }
        }
        let total: usize = shards.iter().flat_map(|(_, t)| t).map(|t| t.3.len()).sum();
        let index = json!({"metadata": {"total_size": 0}, "weight_map": map}).to_string();
        let index = Index::parse(&index, Path::new(INDEX_FILE)).unwrap();
        fs::write(dir.join(INDEX_FILE), index.render(total as u64)).unwrap();
        fs::write(dir.join(CONFIG_FILE), "{\"model_type\": \"llama\"}\n").unwrap();
        fs::write(dir.join("tokenizer.json"), "{}").unwrap();
    }

    fn compress(input: &Path, out: &Path, format: SaveFormat) -> Result<Report> {
        compress_checkpoint(input, out, format, &Selection::default(), &mut |_| true)
    }

    fn config(dir: &Path) -> Value {
        serde_json::from_slice(&fs::read(dir.join(CONFIG_FILE)).unwrap()).unwrap()
    }

    #[test]
    fn headers_are_rendered_as_the_safetensors_crate_writes_them() {
        let tensors: Vec<Tensor> = vec![
            ("b", Dtype::F32, vec![2], f32s(&[1.0, 2.0])),
            ("a", Dtype::BF16, vec![1, 3], bf16s(&[1.0, 0.0, 3.0])),
            ("c", Dtype::U8, vec![0], vec![]),
        ];
        let bytes = shard_bytes(&tensors);
        let path = Path::new("x.safetensors");
        let header = super::super::reader::parse_header(&bytes, path).unwrap();
        let entries: Vec<Entry> = header.tensors.iter().map(Entry::dense).collect();
        let rendered = render_header(&header.metadata, &entries, 0);
        assert_eq!(rendered, bytes[..header.data_start]);
        // Padded to a reserved length, it still parses.
        let mut padded = render_header(&header.metadata, &entries, 300);
        assert_eq!(padded.len(), 8 + 304);
        padded.extend_from_slice(&bytes[header.data_start..]);
        let again = super::super::reader::parse_header(&padded, path).unwrap();
        assert_eq!(again.tensors, header.tensors);
    }

    #[test]
    fn the_layout_is_the_one_compressed_tensors_writes() {
        // Row 0: 1 0 0 2 | 0 0 0 3 ; row 1: 0 0 0 0 | 4 0 5 0 (2:4, F32).
        let tmp = tempfile::tempdir().unwrap();
        let (input, out) = (tmp.path().join("in"), tmp.path().join("out"));
        fs::create_dir(&input).unwrap();
        let w = [
            1.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0, 4.0, 0.0, 5.0, 0.0,
        ];
        let name = "model.layers.0.mlp.up_proj.weight";
        let bytes = shard_bytes(&[(name, Dtype::F32, vec![2, 8], f32s(&w))]);
        fs::write(input.join("model.safetensors"), bytes).unwrap();
        let get = |dir: &Path, n: &str| -> (Dtype, Vec<usize>, Vec<u8>) {
            let c = Checkpoint::open(dir).unwrap();
            let t = c.tensor(n).unwrap();
            (t.info.dtype, t.info.shape.clone(), t.data.to_vec())
        };
        let m = "model.layers.0.mlp.up_proj";
        let i64s = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();

        compress(&input, &out, SaveFormat::SparseBitmask).unwrap();
        let c = |s: &str| get(&out, &format!("{m}.{s}"));
        assert_eq!(
            c("compressed"),
            (Dtype::F32, vec![5], f32s(&[1.0, 2.0, 3.0, 4.0, 5.0]))
        );
        // numpy.packbits(bitorder="little"): column c is bit c % 8 of byte c / 8.
        assert_eq!(
            c("bitmask"),
            (Dtype::U8, vec![2, 1], vec![0b1000_1001, 0b0101_0000])
        );
        assert_eq!(c("row_offsets"), (Dtype::I64, vec![2], i64s(&[0, 3])));
        assert_eq!(c("shape"), (Dtype::I64, vec![2], i64s(&[2, 8])));
        let sc = &config(&out)["quantization_config"]["sparsity_config"];
        assert_eq!(sc["format"], "sparse-bitmask");
        assert_eq!(sc["sparsity_structure"], "unstructured");
        assert_eq!(sc["targets"], json!([m]));
        assert_eq!(sc["global_sparsity"], 11.0 / 16.0);

        let out24 = tmp.path().join("out24");
        compress(&input, &out24, SaveFormat::Sparse24Bitmask).unwrap();
        let c = |s: &str| get(&out24, &format!("{m}.{s}"));
        // Groups with fewer than two nonzeros are topped up with the zeros torch.topk picks.
        let kept = [1.0, 2.0, 0.0, 3.0, 0.0, 0.0, 4.0, 5.0];
        assert_eq!(c("compressed"), (Dtype::F32, vec![2, 4], f32s(&kept)));
        assert_eq!(
            c("bitmask"),
            (Dtype::U8, vec![2, 1], vec![0b1100_1001, 0b0101_1100])
        );
        assert_eq!(c("shape"), (Dtype::I64, vec![2, 1], i64s(&[2, 8])));
        let qc = &config(&out24)["quantization_config"];
        assert_eq!(qc["quant_method"], "compressed-tensors");
        assert_eq!(qc["version"], COMPRESSED_TENSORS_VERSION);
        assert_eq!(qc["sparsity_config"]["sparsity_structure"], "2:4");
        assert_eq!(qc["sparsity_config"]["registry_requires_subclass"], false);
    }

    #[test]
    fn round_trips_byte_for_byte_in_both_formats() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("in");
        model(&input, two_four);
        for format in [SaveFormat::SparseBitmask, SaveFormat::Sparse24Bitmask] {
            let (packed, back) = (tmp.path().join(format.name()), tmp.path().join("back"));
            let report = compress(&input, &packed, format).unwrap();
            assert_eq!(report.tensors.len(), 3, "{format}");
            assert!(report.left_dense.is_empty(), "{:?}", report.left_dense);
            assert!(report.output_tensor_bytes < report.input_tensor_bytes);
            let c = Checkpoint::open(&packed).unwrap();
            assert_eq!(c.shards.len(), 2);
            assert!(c.get("model.layers.0.mlp.up_proj.bitmask").is_some());
            assert!(c.get("model.layers.0.mlp.up_proj.weight").is_none());
            assert!(c.get("model.embed_tokens.weight").is_some());
            let index: Value =
                serde_json::from_slice(&fs::read(packed.join(INDEX_FILE)).unwrap()).unwrap();
            assert_eq!(
                index["metadata"]["total_size"], report.output_tensor_bytes,
                "{format}"
            );
            assert_eq!(
                index["weight_map"]["model.layers.1.mlp.down_proj.compressed"],
                "model-00002-of-00002.safetensors"
            );
            assert_eq!(fs::read(packed.join("tokenizer.json")).unwrap(), b"{}");

            let restored = decompress_checkpoint(&packed, &back).unwrap();
            assert_eq!(restored.tensors.len(), 3);
            assert_eq!(restored.format, format.name());
            for name in [
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors",
                INDEX_FILE,
                "tokenizer.json",
            ] {
                assert!(
                    fs::read(input.join(name)).unwrap() == fs::read(back.join(name)).unwrap(),
                    "{format}: {name} differs"
                );
            }
            assert_eq!(config(&back), json!({"model_type": "llama"}));
            assert!((restored.global_sparsity - report.global_sparsity).abs() < 1e-12);
            fs::remove_dir_all(&back).unwrap();
        }
    }

    /// Every file of `dir` (but the marker) by name, with its bytes.
    fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        fsutil::entries(dir)
            .unwrap()
            .into_iter()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| n != MARKER_FILE)
            .map(|n| (n.clone(), fs::read(dir.join(&n)).unwrap()))
            .collect()
    }

    #[test]
    fn an_interrupted_run_resumes_to_the_same_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("in");
        model(&input, two_four);
        let first_shard = "model-00001-of-00002.safetensors";
        for format in [SaveFormat::SparseBitmask, SaveFormat::Sparse24Bitmask] {
            let whole = tmp.path().join(format!("whole-{format}"));
            let expected = compress(&input, &whole, format).unwrap();
            let out = tmp.path().join(format!("resumed-{format}"));
            // Stopped at the first tensor of the second shard: the first is finished.
            let mut seen = 0;
            let e = compress_checkpoint(&input, &out, format, &Selection::default(), &mut |p| {
                seen += matches!(p, Progress::Tensor(_)) as usize;
                seen < 2
            })
            .unwrap_err();
            assert!(e.to_string().contains("run the same command again"), "{e}");
            let left: Vec<String> = files(&out).into_keys().collect();
            assert_eq!(left, [JOURNAL_FILE, first_shard], "{format}");
            let first = fs::read(out.join(first_shard)).unwrap();

            // Other settings, or a changed input, are not resumed and not discarded.
            let other = match format {
                SaveFormat::SparseBitmask => SaveFormat::Sparse24Bitmask,
                _ => SaveFormat::SparseBitmask,
            };
            let e = compress(&input, &out, other).unwrap_err().to_string();
            assert!(
                e.contains("interrupted run of another input or other settings"),
                "{e}"
            );
            let e = decompress_checkpoint(&whole, &out).unwrap_err().to_string();
            assert!(e.contains("interrupted run"), "{e}");
            assert_eq!(fs::read(out.join(first_shard)).unwrap(), first);

            let mut resumed_events = 0;
            let report =
                compress_checkpoint(&input, &out, format, &Selection::default(), &mut |p| {
                    resumed_events += matches!(p, Progress::Tensor(_)) as usize;
                    true
                })
                .unwrap();
            assert_eq!(report.resumed_shards, 1);
            assert_eq!(resumed_events, expected.tensors.len());
            assert_eq!(files(&out), files(&whole), "{format}");
            assert_eq!(
                serde_json::to_value(&report.tensors).unwrap(),
                serde_json::to_value(&expected.tensors).unwrap()
            );
            assert_eq!(report.global_sparsity, expected.global_sparsity);
            assert_eq!(report.output_tensor_bytes, expected.output_tensor_bytes);
        }
    }

    #[test]
    fn a_finished_shard_that_changed_is_written_again() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("in");
        model(&input, two_four);
        let format = SaveFormat::SparseBitmask;
        let whole = tmp.path().join("whole");
        compress(&input, &whole, format).unwrap();
        let out = tmp.path().join("out");
        let mut seen = 0;
        let stop_in_second = &mut |p: Progress| {
            seen += matches!(p, Progress::Tensor(_)) as usize;
            seen < 2
        };
        compress_checkpoint(&input, &out, format, &Selection::default(), stop_in_second)
            .unwrap_err();
        let shard = out.join("model-00001-of-00002.safetensors");
        let mut bytes = fs::read(&shard).unwrap();
        bytes.truncate(bytes.len() - 4);
        fs::write(&shard, bytes).unwrap();
        let report = compress(&input, &out, format).unwrap();
        assert_eq!(report.resumed_shards, 0);
        assert_eq!(files(&out), files(&whole));

        // Decompression resumes too: a failure at the second shard (a
        // directory where its temporary file goes) keeps the first.
        let (back, again) = (tmp.path().join("back"), tmp.path().join("again"));
        decompress_checkpoint(&whole, &back).unwrap();
        drop(OwnedDir::claim(&again, LockRange::Whole).unwrap());
        let blocker = fsutil::temp_path(&again, "model-00002-of-00002.safetensors");
        fs::create_dir(&blocker).unwrap();
        let e = decompress_checkpoint(&whole, &again)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a directory"), "{e}");
        fs::remove_dir(&blocker).unwrap();
        let done = decompress_checkpoint(&whole, &again).unwrap();
        assert_eq!(done.resumed_shards, 1);
        assert_eq!(files(&again), files(&back));
    }

    #[test]
    fn weights_of_zeros_only_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("in");
        model(&input, |_, _| false);
        for format in [SaveFormat::SparseBitmask, SaveFormat::Sparse24Bitmask] {
            let (packed, back) = (tmp.path().join(format.name()), tmp.path().join("back"));
            let report = compress(&input, &packed, format).unwrap();
            assert_eq!(report.tensors.len(), 3, "{format}");
            assert!(report.tensors.iter().all(|t| t.nonzeros == 0));
            decompress_checkpoint(&packed, &back).unwrap();
            for shard in [
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors",
            ] {
                assert!(
                    fs::read(input.join(shard)).unwrap() == fs::read(back.join(shard)).unwrap()
                );
            }
            fs::remove_dir_all(&back).unwrap();
        }
    }

    #[test]
    fn tensors_the_format_cannot_hold_are_left_dense_and_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("in");
        // Row 1 of every matrix keeps three of its first four elements.
        model(&input, |r, c| two_four(r, c) || (r == 1 && c < 3));
        let out = tmp.path().join("out");
        let report = compress(&input, &out, SaveFormat::Sparse24Bitmask).unwrap();
        assert!(report.tensors.is_empty());
        assert_eq!(report.left_dense.len(), 3);
        let q = &report.left_dense[0];
        assert_eq!(q.name, "model.layers.0.self_attn.q_proj.weight");
        assert!(
            q.reason.contains("is not 2:4: row 1, columns 0..3"),
            "{}",
            q.reason
        );
        let sc = &config(&out)["quantization_config"]["sparsity_config"];
        assert_eq!(sc["ignore"][0], "model.layers.0.self_attn.q_proj");
        assert_eq!(sc["targets"], json!([]));
        let c = Checkpoint::open(&out).unwrap();
        let dense = fs::read(input.join("model-00001-of-00002.safetensors")).unwrap();
        let t = c.tensor("model.layers.0.self_attn.q_proj.weight").unwrap();
        let original = Checkpoint::open(&input).unwrap();
        assert_eq!(t.data, original.tensor(&q.name).unwrap().data);
        assert!(!dense.is_empty());

        // Unstructured: a tensor without zeros would only grow.
        let out = tmp.path().join("bitmask");
        let full = tmp.path().join("full");
        model(&full, |_, _| true);
        let e = compress(&full, &out, SaveFormat::SparseBitmask).unwrap();
        assert_eq!(e.left_dense.len(), 3);
        assert!(
            e.left_dense[0].reason.contains("not less than its"),
            "{:?}",
            e.left_dense
        );
        // A width that is not a multiple of 4.
        let odd = tmp.path().join("odd");
        fs::create_dir(&odd).unwrap();
        let w = values(2, 6, |_, c| c % 2 == 0);
        let name = "model.layers.0.mlp.up_proj.weight";
        fs::write(
            odd.join("model.safetensors"),
            shard_bytes(&[(name, Dtype::F32, vec![2, 6], f32s(&w))]),
        )
        .unwrap();
        let r = compress(&odd, &tmp.path().join("odd24"), SaveFormat::Sparse24Bitmask).unwrap();
        assert!(r.left_dense[0]
            .reason
            .contains("6 columns, not a multiple of 4"));
    }

    /// Rewrites `file` of the compressed `dir` with `edit` applied to its tensors.
    fn tamper(dir: &Path, file: &str, edit: impl FnOnce(&mut Tensors)) {
        let shard = Shard::open(&dir.join(file)).unwrap();
        let mut tensors: Vec<_> = shard
            .header
            .tensors
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    t.dtype,
                    t.shape.clone(),
                    shard.data(t).unwrap().to_vec(),
                )
            })
            .collect();
        drop(shard);
        edit(&mut tensors);
        let views = tensors
            .iter()
            .map(|(n, d, s, b)| (n.as_str(), TensorView::new(*d, s.clone(), b).unwrap()));
        let bytes = safetensors::tensor::serialize(views, None).unwrap();
        fs::write(dir.join(file), bytes).unwrap();
    }

    #[test]
    fn malformed_compressed_inputs_give_one_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("in");
        model(&input, two_four);
        let packed = tmp.path().join("packed");
        compress(&input, &packed, SaveFormat::SparseBitmask).unwrap();
        let file = "model-00002-of-00002.safetensors";
        let m = "model.layers.0.mlp.up_proj";
        let case = |name: &str, edit: &dyn Fn(&mut Tensors)| {
            let dir = tmp.path().join(name);
            fs::create_dir(&dir).unwrap();
            for entry in fsutil::entries(&packed).unwrap() {
                if entry != MARKER_FILE {
                    fs::copy(packed.join(&entry), dir.join(&entry)).unwrap();
                }
            }
            tamper(&dir, file, |t| edit(t));
            // The index lists what the shard now holds.
            let c = Shard::open(&dir.join(file)).unwrap();
            let mut index: Value =
                serde_json::from_slice(&fs::read(dir.join(INDEX_FILE)).unwrap()).unwrap();
            let map = index["weight_map"].as_object_mut().unwrap();
            map.retain(|n, f| f != file || c.get(n).is_some());
            fs::write(dir.join(INDEX_FILE), index.to_string()).unwrap();
            let out = tmp.path().join(format!("{name}.out"));
            let e = decompress_checkpoint(&dir, &out).unwrap_err().to_string();
            assert!(!out.join(file).exists(), "{name}: nothing written");
            e
        };
        let find =
            |t: &mut Tensors, s: &str| t.iter().position(|x| x.0 == format!("{m}.{s}")).unwrap();
        let e = case("short", &|t| {
            let k = find(t, "bitmask");
            t[k].2 = vec![12, 0];
            t[k].3.clear();
        });
        assert!(
            e.contains(&format!(
                "tensor {m}.weight: {m}.bitmask is U8 [12, 0]; the shape [12, 8] needs U8 [12, 1]"
            )),
            "{e}"
        );
        let e = case("values", &|t| {
            let k = find(t, "compressed");
            let n = t[k].3.len();
            t[k].3.truncate(n - 4);
            t[k].2[0] -= 1;
        });
        let n = two_four_count(12, 8);
        let msg = format!(
            "{m}.compressed holds {} values, but the bitmask flags {n}",
            n - 1
        );
        assert!(e.contains(&msg), "{e}");
        let e = case("offsets", &|t| {
            let k = find(t, "row_offsets");
            t[k].3[8] ^= 1;
        });
        assert!(
            e.contains("row_offsets (I64 [12]) do not match the bitmask's rows"),
            "{e}"
        );
        let e = case("missing", &|t| {
            let k = find(t, "shape");
            t.remove(k);
        });
        assert!(e.contains(&format!("{m}.shape is missing")), "{e}");

        let bad_config = |name: &str, text: &str| {
            let dir = tmp.path().join(name);
            fs::create_dir(&dir).unwrap();
            for entry in fsutil::entries(&packed).unwrap() {
                if entry != MARKER_FILE {
                    fs::copy(packed.join(&entry), dir.join(&entry)).unwrap();
                }
            }
            fs::write(dir.join(CONFIG_FILE), text).unwrap();
            decompress_checkpoint(&dir, &tmp.path().join(format!("{name}.out")))
                .unwrap_err()
                .to_string()
        };
        let e = bad_config(
            "fmt",
            r#"{"quantization_config": {"sparsity_config": {"format": "sparse-9"}}}"#,
        );
        assert!(e.contains("config.json: quantization_config.sparsity_config.format \"sparse-9\" is not a sparse format"), "{e}");
        let e = bad_config("none", r#"{"model_type": "llama"}"#);
        assert!(e.contains("has no quantization_config"), "{e}");
        let e = bad_config("list", "[]");
        assert!(e.contains("config.json: is not a JSON object"), "{e}");
        let e = bad_config(
            "quant",
            r#"{"quantization_config": {"config_groups": {"g": {}}, "sparsity_config": {"format": "sparse-bitmask"}}}"#,
        );
        assert!(e.contains("symprune decompresses sparsity only"), "{e}");
    }

    #[test]
    fn inspecting_a_compressed_checkpoint_equals_inspecting_it_decompressed() {
        use crate::checkpoint::inspect::inspect;
        let tmp = tempfile::tempdir().unwrap();
        let report = |dir: &Path, nm| {
            let mut v =
                serde_json::to_value(inspect(dir, nm, &Selection::default()).unwrap()).unwrap();
            v.as_object_mut().unwrap().remove("path");
            v
        };
        // 2:4 (topped-up groups included) and unstructured, with one row breaking 2:4.
        let keeps: [fn(usize, usize) -> bool; 2] =
            [two_four, |r, c| two_four(r, c) || (r == 1 && c < 3)];
        for (k, keep) in keeps.into_iter().enumerate() {
            let input = tmp.path().join(format!("in{k}"));
            model(&input, keep);
            for format in [SaveFormat::SparseBitmask, SaveFormat::Sparse24Bitmask] {
                let packed = tmp.path().join(format!("{k}-{format}"));
                let back = tmp.path().join(format!("{k}-{format}-back"));
                compress(&input, &packed, format).unwrap();
                decompress_checkpoint(&packed, &back).unwrap();
                for nm in [None, Some((2, 4)), Some((1, 4)), Some((3, 8))] {
                    let (got, want) = (report(&packed, nm), report(&back, nm));
                    assert_eq!(got, want, "{k} {format} {nm:?}");
                    assert_eq!(got, report(&input, nm), "{k} {format} {nm:?}");
                }
            }
        }
        // A short bitmask: the error decompress gives.
        let packed = tmp.path().join("0-sparse-bitmask");
        let file = "model-00002-of-00002.safetensors";
        let m = "model.layers.0.mlp.up_proj";
        tamper(&packed, file, |t| {
            let k = t
                .iter()
                .position(|x| x.0 == format!("{m}.bitmask"))
                .unwrap();
            t[k].2 = vec![12, 0];
            t[k].3.clear();
        });
        let e = inspect(&packed, None, &Selection::default())
            .unwrap_err()
            .to_string();
        let d = decompress_checkpoint(&packed, &tmp.path().join("short.out"))
            .unwrap_err()
            .to_string();
        assert_eq!(e, d);
        assert!(e.contains("needs U8 [12, 1]"), "{e}");
    }

    #[test]
    fn a_weight_whose_parts_span_shards_is_decompressed() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("in");
        model(&input, two_four);
        let packed = tmp.path().join("packed");
        compress(&input, &packed, SaveFormat::SparseBitmask).unwrap();
        let (first, second) = (
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
        );
        let name = "model.layers.0.mlp.up_proj.bitmask";
        let mut moved = None;
        tamper(&packed, second, |t| {
            let k = t.iter().position(|x| x.0 == name).unwrap();
            moved = Some(t.remove(k));
        });
        tamper(&packed, first, |t| t.push(moved.take().unwrap()));
        let index_path = packed.join(INDEX_FILE);
        let mut index: Value = serde_json::from_slice(&fs::read(&index_path).unwrap()).unwrap();
        index["weight_map"][name] = first.into();
        fs::write(&index_path, index.to_string()).unwrap();
        let back = tmp.path().join("back");
        decompress_checkpoint(&packed, &back).unwrap();
        let (original, restored) = (
            Checkpoint::open(&input).unwrap(),
            Checkpoint::open(&back).unwrap(),
        );
        for (_, t) in original.tensors() {
            assert_eq!(
                restored.tensor(&t.name).unwrap().data,
                original.tensor(&t.name).unwrap().data,
                "{}",
                t.name
            );
        }
    }

    #[test]
    fn outputs_in_the_way_are_refused_and_a_stopped_run_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("in");
        model(&input, two_four);
        let format = SaveFormat::Sparse24Bitmask;
        let e = compress(&input, &input.join("sub"), format)
            .unwrap_err()
            .to_string();
        assert!(e.contains("inside"), "{e}");
        let e = compress(&input, &input, format).unwrap_err().to_string();
        assert!(e.contains("is the input"), "{e}");
        let e = compress(&input, &tmp.path().join("x"), SaveFormat::Dense)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("format: dense is not a compressed format"),
            "{e}"
        );
        let out = tmp.path().join("out");
        let mut seen = 0;
        let e = compress_checkpoint(&input, &out, format, &Selection::default(), &mut |p| {
            seen += matches!(p, Progress::Tensor(_)) as usize;
            seen < 1 // in the first shard: nothing finished
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("interrupted"), "{e}");
        assert_eq!(fsutil::entries(&out).unwrap(), [MARKER_FILE]);
        compress(&input, &out, format).unwrap();
        let e = compress(&input, &out, format).unwrap_err().to_string();
        assert!(e.contains("exists and is not empty"), "{e}");
        let e = compress(&out, &tmp.path().join("again"), format)
            .unwrap_err()
            .to_string();
        assert!(e.contains("already has a quantization_config"), "{e}");
    }
}
