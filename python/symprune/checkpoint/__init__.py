"""The Rust-engine side: safetensors checkpoints read, pruned, written and
inspected shard by shard, one tensor at a time, so memory stays near one tensor
(plus its scores and mask) however large the checkpoint is.

- :mod:`~symprune.checkpoint.io`: :class:`CheckpointReader` (zero-copy numpy or
  torch views) and :class:`CheckpointWriter` (a pruned copy by in-place
  substitution, resumable, finished by ``sparsity.json``);
- :mod:`~symprune.checkpoint.prune`: :func:`prune_checkpoint` (data-free methods,
  or a data-aware score from a statistics file, shard to shard entirely in Rust;
  ``rank`` / ``world_size`` split the shards) and :func:`finalize`;
- :mod:`~symprune.checkpoint.inspect`: :func:`inspect`, per-tensor sparsity and
  an N:M check.
- :mod:`~symprune.checkpoint.compress`: :func:`compress` into the
  compressed-tensors sparse formats (``sparse-bitmask``, ``sparse-24-bitmask``)
  and :func:`decompress` back to dense.

Malformed files raise :class:`~symprune.errors.CheckpointError` naming the
file, the tensor and the fix; so does an output that could harm anything
outside it (see :class:`CheckpointWriter`).
"""

from symprune.checkpoint.compress import (
    COMPRESSED_FORMATS,
    DEFAULT_COMPRESSED_FORMAT,
    CompressedTensor,
    CompressReport,
    LeftDense,
    compress,
    decompress,
)
from symprune.checkpoint.inspect import Inspection, TensorSparsity, inspect
from symprune.checkpoint.io import (
    MANIFEST,
    CheckpointReader,
    CheckpointWriter,
    check_output_file,
    read_manifest,
    write_output_file,
)
from symprune.checkpoint.prune import (
    Finalized,
    PruneReport,
    TensorReport,
    finalize,
    prune_checkpoint,
)
from symprune.spec import SAVE_FORMATS

__all__ = [
    "COMPRESSED_FORMATS",
    "SAVE_FORMATS",
    "DEFAULT_COMPRESSED_FORMAT",
    "CompressReport",
    "CompressedTensor",
    "LeftDense",
    "compress",
    "decompress",
    "MANIFEST",
    "CheckpointReader",
    "CheckpointWriter",
    "Finalized",
    "Inspection",
    "PruneReport",
    "TensorReport",
    "TensorSparsity",
    "check_output_file",
    "finalize",
    "inspect",
    "prune_checkpoint",
    "read_manifest",
    "write_output_file",
]
