//! Reading: one memory map per shard, every header validated when the
//! checkpoint is opened (the checks of the safetensors crate, with messages
//! that name the file, the tensor and the fix), tensors handed out as borrowed
//! byte slices in file order; a sharded checkpoint's index is checked
//! against the shard headers.

use super::index::{Index, INDEX_FILE};
use super::json::{first_duplicate, JsonEntries};
use crate::error::{Error, Result};
use memmap2::{Mmap, MmapOptions, UncheckedAdvice};
use safetensors::Dtype;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The file of a single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";

/// The safetensors limit on the JSON header (100 MB).
pub const MAX_HEADER: u64 = 100_000_000;

/// One tensor's entry in a shard header.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte range inside the shard's data section.
    pub start: usize,
    pub end: usize,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn nbytes(&self) -> usize {
        self.end - self.start
    }

    /// The safetensors spelling of the dtype (`BF16`, `I8`, ...).
    pub fn dtype_name(&self) -> String {
        self.dtype.to_string()
    }
}

/// A parsed shard header.
#[derive(Debug, Clone)]
pub struct Header {
    /// The free-form `__metadata__` map.
    pub metadata: Option<BTreeMap<String, String>>,
    /// Tensors in file order (increasing offsets).
    pub tensors: Vec<TensorInfo>,
    /// Where the data section starts: the 8-byte length plus the JSON.
    pub data_start: usize,
}

#[derive(serde::Deserialize)]
struct RawInfo {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (usize, usize),
}

/// The dtype spelled `name` in safetensors (`"BF16"`, `"I8"`, ...).
pub fn parse_dtype(name: &str) -> Option<Dtype> {
    serde_json::from_value(Value::String(name.to_string())).ok()
}

/// Parses and validates the header of a safetensors file whose full contents
/// are `file`; `path` names it in errors. Never panics on any input.
pub fn parse_header(file: &[u8], path: &Path) -> Result<Header> {
    let bad = |msg: String| Error::checkpoint(path, msg);
    let corrupt = "the file is truncated or not safetensors; re-download or re-export it";
    let Some(prefix) = file.get(..8) else {
        return Err(bad(format!(
            "{} bytes is too short for a safetensors header (8-byte length + JSON); {corrupt}",
            file.len()
        )));
    };
    let n = u64::from_le_bytes(prefix.try_into().expect("8 bytes"));
    if n > MAX_HEADER {
        return Err(bad(format!(
            "header length {n} exceeds the 100 MB safetensors limit; {corrupt}"
        )));
    }
    let data_start = 8 + n as usize;
    let Some(json) = file.get(8..data_start) else {
        return Err(bad(format!(
            "header length {n} runs past the end of the file ({} bytes); {corrupt}",
            file.len()
        )));
    };
    let json = std::str::from_utf8(json)
        .map_err(|e| bad(format!("header is not valid UTF-8 ({e}); {corrupt}")))?;
    let JsonEntries(entries) = serde_json::from_str(json).map_err(|e| {
        bad(format!(
            "header is not a valid JSON object ({e}); {corrupt}"
        ))
    })?;
    if let Some(name) = first_duplicate(entries.iter().map(|(k, _)| k.as_str())) {
        return Err(Error::tensor(
            path,
            name,
            format!("appears twice in the header; {corrupt}"),
        ));
    }

    let mut metadata = None;
    let mut tensors = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        if name == "__metadata__" {
            let map: BTreeMap<String, String> = serde_json::from_value(value).map_err(|e| {
                bad(format!(
                    "__metadata__ must map strings to strings ({e}); {corrupt}"
                ))
            })?;
            metadata = Some(map);
            continue;
        }
        let raw: RawInfo = serde_json::from_value(value).map_err(|e| {
            Error::tensor(
                path,
                &name,
                format!("invalid header entry ({e}); {corrupt}"),
            )
        })?;
        let dtype = parse_dtype(&raw.dtype).ok_or_else(|| {
            Error::tensor(
                path,
                &name,
                format!(
                    "unknown dtype {:?}; safetensors knows BOOL, U8, I8, I16, U16, I32, U32, \
                     I64, U64, F16, BF16, F32, F64, C64 and the F4/F6/F8 formats",
                    raw.dtype
                ),
            )
        })?;
        let (start, end) = raw.data_offsets;
        tensors.push(TensorInfo {
            name,
            dtype,
            shape: raw.shape,
            start,
            end,
        });
    }
    tensors.sort_by_key(|t| (t.start, t.end));

    let data_len = file.len() - data_start;
    let mut expected = 0usize;
    let mut previous: Option<&str> = None;
    for t in &tensors {
        let err = |msg: String| Error::tensor(path, &t.name, format!("{msg}; {corrupt}"));
        let (s, e) = (t.start, t.end);
        if e < s {
            return Err(err(format!(
                "data_offsets [{s}, {e}] end before they start"
            )));
        }
        if s < expected {
            return Err(err(format!(
                "data_offsets [{s}, {e}] overlap the previous tensor {}, which ends at {expected}",
                previous.unwrap_or("?")
            )));
        }
        if s > expected {
            return Err(err(format!(
                "data_offsets [{s}, {e}] leave a gap after byte {expected} (offsets must be contiguous)"
            )));
        }
        if e > data_len {
            return Err(err(format!(
                "data_offsets [{s}, {e}] run past the end of the data ({data_len} bytes)"
            )));
        }
        // Every dimension is bounded, also in a tensor with a zero dimension
        // (whose size would not tell): as if each zero were one, the bits
        // must fit the address space.
        let span = t
            .shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d.max(1)))
            .and_then(|n| n.checked_mul(t.dtype.bitsize()))
            .filter(|&bits| bits / 8 <= isize::MAX as usize);
        if span.is_none() {
            return Err(err(format!(
                "shape {:?} of {} has dimensions beyond any file's size (their product overflows)",
                t.shape, t.dtype
            )));
        }
        let bits = t
            .shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .and_then(|numel| numel.checked_mul(t.dtype.bitsize()));
        match bits {
            Some(bits) if bits % 8 == 0 && bits / 8 == e - s => {}
            Some(bits) if bits % 8 == 0 => {
                return Err(err(format!(
                    "shape {:?} of {} needs {} bytes but data_offsets [{s}, {e}] hold {}",
                    t.shape,
                    t.dtype,
                    bits / 8,
                    e - s
                )))
            }
            _ => {
                return Err(err(format!(
                    "shape {:?} of {} does not fill a whole number of bytes (or overflows)",
                    t.shape, t.dtype
                )))
            }
        }
        expected = e;
        previous = Some(&t.name);
    }
    if expected != data_len {
        return Err(bad(format!(
            "{} bytes follow the last tensor (the data section is {data_len} bytes, the tensors \
             cover {expected}); {corrupt}",
            data_len - expected
        )));
    }
    Ok(Header {
        metadata,
        tensors,
        data_start,
    })
}

/// One memory-mapped `.safetensors` file.
#[derive(Debug)]
pub struct Shard {
    /// The file name (as the index spells it).
    pub file: String,
    pub path: PathBuf,
    pub header: Header,
    handle: File,
    // Shared and read-only: a private writable map would be charged in full
    // against the commit limit, and fails for shards larger than RAM.
    map: Mmap,
    lookup: HashMap<String, usize>,
}

impl Shard {
    /// Maps and validates one safetensors file.
    pub fn open(path: &Path) -> Result<Shard> {
        // Non-blocking, so that a FIFO in its place fails instead of waiting.
        let handle = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(Error::io(path))?;
        let meta = handle.metadata().map_err(Error::io(path))?;
        if !meta.is_file() {
            return Err(Error::checkpoint(
                path,
                "is not a regular file; pass a safetensors file",
            ));
        }
        let len = meta.len();
        if len < 8 {
            // Report it like any other short header (an empty file cannot be mapped).
            parse_header(&[0u8; 8][..len as usize], path)?;
        }
        // SAFETY: the map is read-only; a concurrent truncation of the input
        // by another process would fault on access, so every access to the
        // tensors first checks the size (see `check_intact`).
        let map = unsafe { MmapOptions::new().map(&handle) }.map_err(Error::io(path))?;
        let header = parse_header(&map, path)?;
        let lookup = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Shard {
            file,
            path: path.to_path_buf(),
            header,
            handle,
            map,
            lookup,
        })
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// The open input file (for kernel-side copies).
    pub fn handle(&self) -> &File {
        &self.handle
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The 8-byte length and the JSON header, byte for byte.
    pub fn header_bytes(&self) -> &[u8] {
        &self.map[..self.header.data_start]
    }

    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.lookup.get(name).map(|&i| &self.header.tensors[i])
    }

    /// Fails if the file is now shorter than when it was mapped (another
    /// process truncated or rewrote it), before reading the map there would
    /// kill the process with SIGBUS.
    pub fn check_intact(&self) -> Result<()> {
        let now = self.handle.metadata().map_err(Error::io(&self.path))?.len();
        if now < self.map.len() as u64 {
            return Err(Error::checkpoint(
                &self.path,
                format!(
                    "shrank from {} to {now} bytes while being read (another program truncated \
                     or rewrote it); the input must not change during a run, restore it and run \
                     again",
                    self.map.len()
                ),
            ));
        }
        Ok(())
    }

    /// A tensor's bytes, once sure the file still holds them.
    pub fn data(&self, t: &TensorInfo) -> Result<&[u8]> {
        self.check_intact()?;
        let base = self.header.data_start;
        Ok(&self.map[base + t.start..base + t.end])
    }

    /// The absolute file offset of a tensor's first byte.
    pub fn offset(&self, t: &TensorInfo) -> usize {
        self.header.data_start + t.start
    }

    /// Drops the pages of `len` bytes at file offset `start` from this
    /// process; the next access reads them again (from the page cache). Keeps
    /// the resident set at one tensor while a whole checkpoint streams by.
    pub fn release(&self, start: usize, len: usize) {
        if len == 0 || start >= self.map.len() {
            return;
        }
        let len = len.min(self.map.len() - start);
        // SAFETY: the map is read-only and file-backed, so the dropped pages
        // hold exactly the file's bytes and reading them again gives the same
        // values. A failure only costs memory.
        let _ = unsafe {
            self.map
                .unchecked_advise_range(UncheckedAdvice::DontNeed, start, len)
        };
    }
}

/// A borrowed tensor: its header entry and its bytes.
#[derive(Debug, Clone, Copy)]
pub struct TensorRef<'a> {
    pub info: &'a TensorInfo,
    pub data: &'a [u8],
}

/// A Hugging Face checkpoint directory: a single `model.safetensors`, or
/// shards listed by `model.safetensors.index.json`.
#[derive(Debug)]
pub struct Checkpoint {
    pub dir: PathBuf,
    /// Shards in file-name order (the index's shards, or the single file).
    pub shards: Vec<Shard>,
    pub index: Option<Index>,
    lookup: HashMap<String, usize>,
}

impl Checkpoint {
    /// Opens and validates every header of the checkpoint in `dir`.
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        if !dir.is_dir() {
            return Err(Error::checkpoint(
                dir,
                "is not a directory; pass the folder that holds model.safetensors (or the \
                 shards and model.safetensors.index.json)",
            ));
        }
        let (single, index_path) = (dir.join(SINGLE_FILE), dir.join(INDEX_FILE));
        let (shards, index) = match (single.is_file(), index_path.is_file()) {
            (true, true) => {
                return Err(Error::checkpoint(
                    dir,
                    format!(
                        "holds both {SINGLE_FILE} and {INDEX_FILE}; it is ambiguous which \
                         is the model, remove one of them"
                    ),
                ))
            }
            (true, false) => (vec![Shard::open(&single)?], None),
            (false, true) => {
                let index = Index::read(&index_path)?;
                let shards = index
                    .shard_files()
                    .into_iter()
                    .map(|f| Shard::open(&dir.join(f)))
                    .collect::<Result<Vec<_>>>()?;
                (shards, Some(index))
            }
            (false, false) => {
                return Err(Error::checkpoint(
                    dir,
                    format!(
                        "has neither {SINGLE_FILE} nor {INDEX_FILE}; pass a Hugging Face \
                         safetensors checkpoint directory"
                    ),
                ))
            }
        };
        let mut lookup = HashMap::new();
        for (s, shard) in shards.iter().enumerate() {
            for t in &shard.header.tensors {
                if let Some(first) = lookup.insert(t.name.clone(), s) {
                    return Err(Error::tensor(
                        &shard.path,
                        &t.name,
                        format!(
                            "is also in shard {}; every tensor must be stored once, \
                             remove the stale shard",
                            shards[first].file
                        ),
                    ));
                }
            }
        }
        if let Some(index) = &index {
            index.check_against(&index_path, &shards)?;
        }
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            shards,
            index,
            lookup,
        })
    }

    /// Every tensor, shard by shard, in file order.
    pub fn tensors(&self) -> impl Iterator<Item = (&Shard, &TensorInfo)> {
        self.shards
            .iter()
            .flat_map(|s| s.header.tensors.iter().map(move |t| (s, t)))
    }

    /// A tensor by name.
    pub fn get(&self, name: &str) -> Option<(&Shard, &TensorInfo)> {
        let shard = &self.shards[*self.lookup.get(name)?];
        Some((shard, shard.get(name)?))
    }

    /// A tensor by name, or an error naming it.
    pub fn tensor(&self, name: &str) -> Result<TensorRef<'_>> {
        let (shard, info) = self.get(name).ok_or_else(|| {
            Error::tensor(
                &self.dir,
                name,
                "is not in this checkpoint; list the names with the reader's names()",
            )
        })?;
        Ok(TensorRef {
            info,
            data: shard.data(info)?,
        })
    }

    /// Drops the mapped pages of the tensor `name` from this process (see
    /// [`Shard::release`]): a caller that copied it out keeps resident memory
    /// to what it holds, not to everything it read.
    pub fn release(&self, name: &str) {
        if let Some((shard, info)) = self.get(name) {
            shard.release(shard.offset(info), info.nbytes());
        }
    }

    /// The index of the shard holding `name`.
    pub fn shard_of(&self, name: &str) -> Option<usize> {
        self.lookup.get(name).copied()
    }
}

// The index is checked here, where the shards it maps are read, so that
// `index` needs nothing from this module.
impl Index {
    /// Fails unless the index and the shard headers list the same tensors in
    /// the same places.
    pub fn check_against(&self, path: &Path, shards: &[Shard]) -> Result<()> {
        let mapped: HashMap<&str, &str> = self
            .weight_map
            .iter()
            .map(|(t, s)| (t.as_str(), s.as_str()))
            .collect();
        for shard in shards {
            for t in &shard.header.tensors {
                match mapped.get(t.name.as_str()) {
                    Some(&s) if s == shard.file => {}
                    Some(&s) => {
                        return Err(Error::tensor(
                            path,
                            &t.name,
                            format!(
                                "is mapped to {s} but stored in {}; regenerate the index",
                                shard.file
                            ),
                        ))
                    }
                    None => {
                        return Err(Error::tensor(
                            path,
                            &t.name,
                            format!(
                                "is stored in {} but missing from weight_map; regenerate the index",
                                shard.file
                            ),
                        ))
                    }
                }
            }
        }
        for (tensor, shard) in &self.weight_map {
            let holder = shards.iter().find(|s| &s.file == shard);
            if holder.and_then(|s| s.get(tensor)).is_none() {
                return Err(Error::tensor(
                    path,
                    tensor,
                    format!(
                        "is mapped to {shard}, which does not contain it; regenerate the index"
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::testutil::file;
    use proptest::prelude::*;

    fn err(bytes: &[u8]) -> String {
        parse_header(bytes, Path::new("x.safetensors"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn parses_a_valid_header() {
        let h = r#"{"__metadata__":{"format":"pt"},"b":{"dtype":"BF16","shape":[2],"data_offsets":[8,12]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        let header = parse_header(&file(h, &[0; 12]), Path::new("x")).unwrap();
        assert_eq!(header.tensors[0].name, "a");
        assert_eq!(header.tensors[1].dtype, Dtype::BF16);
        assert_eq!(header.metadata.unwrap()["format"], "pt");
        assert_eq!(header.data_start, 8 + h.len());
    }

    #[test]
    fn malformed_headers_say_what_is_wrong() {
        assert!(err(&[1, 2, 3]).contains("too short"));
        let mut huge = (MAX_HEADER + 1).to_le_bytes().to_vec();
        huge.extend([b'{'; 16]);
        assert!(err(&huge).contains("100 MB"));
        let mut past = 1000u64.to_le_bytes().to_vec();
        past.extend(b"{}");
        assert!(err(&past).contains("runs past the end of the file"));
        assert!(err(&file("{not json", &[])).contains("not a valid JSON"));
        let t = |entries: &str, data: usize| err(&file(entries, &vec![0; data]));
        assert!(t(
            r#"{"w":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}}"#,
            1
        )
        .contains("unknown dtype \"Q4\""));
        let overlap = r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#;
        assert!(t(overlap, 6).contains("tensor b: data_offsets [2, 6] overlap"));
        let gap = r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[1,5]}}"#;
        assert!(t(gap, 5).contains("leave a gap"));
        let past_end = r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#;
        assert!(t(past_end, 3).contains("run past the end of the data"));
        let shape = r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
        assert!(t(shape, 8).contains("needs 12 bytes"));
        assert!(t(past_end, 6).contains("2 bytes follow the last tensor"));
        let dup = r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#;
        assert!(t(dup, 2).contains("tensor a: appears twice"));
        let overflow =
            r#"{"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#;
        assert!(t(overflow, 8).contains("overflows"));
    }

    #[test]
    fn every_dimension_is_bounded_even_without_elements() {
        let huge = format!(
            r#"{{"w":{{"dtype":"F32","shape":[0,{}],"data_offsets":[0,0]}}}}"#,
            usize::MAX
        );
        let e = err(&file(&huge, &[]));
        assert!(
            e.contains("tensor w: shape [0, 18446744073709551615] of F32 has dimensions beyond")
        );
        let empty = r#"{"w":{"dtype":"F32","shape":[0,8],"data_offsets":[0,0]}}"#;
        let header = parse_header(&file(empty, &[]), Path::new("x")).unwrap();
        assert_eq!(
            (header.tensors[0].numel(), header.tensors[0].nbytes()),
            (0, 0)
        );
    }

    #[test]
    fn a_shard_that_shrinks_while_mapped_is_detected() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("model.safetensors");
        let h = r#"{"w":{"dtype":"F32","shape":[1024],"data_offsets":[0,4096]}}"#;
        std::fs::write(&path, file(h, &[1; 4096])).unwrap();
        let shard = Shard::open(&path).unwrap();
        let t = shard.get("w").unwrap();
        assert_eq!(shard.data(t).unwrap()[0], 1);
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(100)
            .unwrap();
        let e = shard.data(t).unwrap_err().to_string();
        assert!(e.contains("model.safetensors: shrank from"), "{e}");
        let fifo = tmp.path().join("fifo.safetensors");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = Shard::open(&fifo).unwrap_err().to_string();
        assert!(e.contains("is not a regular file"), "{e}");
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_header(&bytes, Path::new("x"));
        }

        #[test]
        fn random_headers_never_panic(json in "\\{(\"[ab]\":\\{\"dtype\":\"(F32|U8|F4)\",\"shape\":\\[[0-9]{1,3}(,[0-9]{1,2})?\\],\"data_offsets\":\\[[0-9]{1,2},[0-9]{1,3}\\]\\},?){0,3}\\}",
                                       tail in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_header(&file(&json, &tail), Path::new("x"));
        }
    }
}
