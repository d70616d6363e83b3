//! The journal of an unfinished output: which shards are finished (with the
//! zeros written into them), for which input and settings, so that a rerun
//! resumes them. A part of a shard-parallel run keeps its own journal.

use super::fsutil::{self, is_temp};
use super::reader::Checkpoint;
use super::zeros::ZeroCount;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Where a whole run records finished shards (removed once the output is
/// finished); a part of a shard-parallel run uses its own name, see [`Part`].
pub const JOURNAL_FILE: &str = ".symprune-journal.json";

/// One process's share of a shard-parallel run: shard `s` belongs to rank
/// `s % world`. Each part writes its shards and its journal
/// `.symprune-journal.<rank>-of-<world>.json`, and never removes another
/// part's files; [`super::writer::finalize`] finishes the output.
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

    pub(crate) fn is_whole(&self) -> bool {
        self.world == 1
    }

    /// Whether a file of this name may be another part's work in progress
    /// (its shards or temporary files), found in a shared output.
    pub(crate) fn may_find(&self, input: &Checkpoint, name: &str) -> bool {
        !self.is_whole()
            && (is_temp(name)
                || (input.shards.iter().enumerate())
                    .any(|(s, shard)| shard.file == name && !self.owns(s)))
    }

    pub(crate) fn journal_file(&self) -> String {
        if self.is_whole() {
            JOURNAL_FILE.to_string()
        } else {
            format!(".symprune-journal.{}-of-{}.json", self.rank, self.world)
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Journal {
    pub input: String,
    pub run: String,
    /// Where the input is, for `finalize` (which is given only the output).
    #[serde(default)]
    pub input_dir: PathBuf,
    #[serde(default)]
    pub part: Part,
    /// The manifest's run fields, recorded by a part when all its shards are done.
    #[serde(default)]
    pub manifest: Option<Map<String, Value>>,
    /// Finished shards, each with the zero counts of the tensors written into it.
    pub done: BTreeMap<String, BTreeMap<String, ZeroCount>>,
}

impl Journal {
    /// Whether `other` records (part of) this same run: same input, same non-empty key.
    pub fn continues(&self, other: &Journal) -> bool {
        !other.run.is_empty() && other.input == self.input && other.run == self.run
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string(self).expect("JSON");
        fsutil::write_atomic(dir, &self.part.journal_file(), text.as_bytes())
    }
}

pub(crate) fn is_journal(name: &str) -> bool {
    name.starts_with(".symprune-journal.") && name.ends_with(".json")
}

/// The journals in `dir` (name, contents; `None` when unreadable or a
/// link, which is never followed), by name.
pub(crate) fn read_journals(dir: &Path) -> Result<Vec<(String, Option<Journal>)>> {
    let mut found = Vec::new();
    for name in fsutil::entries(dir)? {
        let name = name.to_string_lossy();
        if is_journal(&name) {
            let mut bytes = Vec::new();
            let journal = fsutil::open_nofollow(&dir.join(&*name))
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .ok()
                .and_then(|_| serde_json::from_slice(&bytes).ok());
            found.push((name.into_owned(), journal));
        }
    }
    Ok(found)
}
