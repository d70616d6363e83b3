"""symprune: fast, memory-lean post-training pruning of large language models."""

from __future__ import annotations

from typing import Any

from symprune import ops
from symprune._core import __version__
from symprune.errors import (
    CheckpointError,
    DistributedError,
    InvalidInputError,
    ModelError,
    SymPruneError,
)

# The model-level API needs torch and transformers; import it on first use so
# that `symprune.ops` and the checkpoint tools stay light.
_LAZY = {"prune": "api", "calibrate": "api", "perplexity": "evaluation.perplexity"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"symprune.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'symprune' has no attribute {name!r}")


__all__ = [
    "CheckpointError",
    "DistributedError",
    "InvalidInputError",
    "ModelError",
    "SymPruneError",
    "__version__",
    "calibrate",
    "ops",
    "perplexity",
    "prune",
]
