//! Streaming safetensors checkpoints: read a Hugging Face checkpoint directory
//! one tensor at a time from memory maps, prune the selected weights, and
//! write a checkpoint with the same shards, headers and offsets.
//!
//! Memory stays bounded by one tensor (plus its scores and mask) however large
//! the checkpoint is: input pages are dropped from the process after use,
//! untouched tensors are copied file-to-file by the kernel, and pruned tensors
//! are written in row blocks straight to their offsets.

pub mod compressed;
pub mod fsutil;
#[cfg(test)]
mod fuzz;
pub mod index;
pub mod inspect;
pub mod journal;
mod json;
pub mod manifest;
pub mod prune;
pub mod reader;
pub mod selection;
#[cfg(test)]
mod testutil;
pub mod writer;
pub mod zeros;

pub use compressed::{compress_checkpoint, decompress_checkpoint};
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
