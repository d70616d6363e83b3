"""symprune: fast, memory-lean post-training pruning of large language models."""

from __future__ import annotations

from symprune import ops
from symprune._core import __version__
from symprune.errors import CheckpointError, InvalidInputError, ModelError, SymPruneError

__all__ = [
    "CheckpointError",
    "InvalidInputError",
    "ModelError",
    "SymPruneError",
    "__version__",
    "ops",
]
