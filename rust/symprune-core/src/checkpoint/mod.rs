//! Streaming safetensors checkpoints: read a Hugging Face checkpoint directory
//! one tensor at a time from memory maps, prune the selected weights, and
//! write a checkpoint with the same shards, headers and offsets.
//!
//! Memory stays bounded by one tensor (plus its scores and mask) however large
//! the checkpoint is: input pages are dropped from the process after use,
//! untouched tensors are copied file-to-file by the kernel, and pruned tensors
//! are written in row blocks straight to their offsets.

pub mod fsutil;
#[cfg(test)]
mod fuzz;
pub mod index;
pub mod inspect;
pub mod journal;
pub mod manifest;
pub mod prune;
pub mod reader;
pub mod selection;
pub mod writer;
pub mod zeros;

pub use fsutil::MARKER_FILE;
pub use inspect::{inspect, Inspection, TensorSparsity};
pub use journal::Part;
pub use manifest::MANIFEST_FILE;
pub use prune::{prune_checkpoint, Plan, Progress, Report, TensorReport};
pub use reader::{parse_dtype, Checkpoint, Shard, TensorInfo, TensorRef};
pub use safetensors::Dtype as StorageDtype;
pub use selection::Selection;
pub use writer::{finalize, CheckpointWriter, FinishReport, WriterOptions};
pub use zeros::ZeroCount;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

/// The entries of a JSON object in file order, duplicates kept, so that a
/// name given twice is reported instead of silently overwritten.
pub(crate) struct JsonEntries(pub Vec<(String, Value)>);

impl<'de> Deserialize<'de> for JsonEntries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = JsonEntries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<JsonEntries, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    out.push(entry);
                }
                Ok(JsonEntries(out))
            }
        }
        d.deserialize_map(Entries)
    }
}

/// The first name that occurs twice in `names`.
pub(crate) fn first_duplicate<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut seen = std::collections::HashSet::new();
    names.into_iter().find(|n| !seen.insert(*n))
}
