"""symprune's exceptions: one root, :class:`SymPruneError`, for everything."""

from __future__ import annotations


class SymPruneError(Exception):
    """Root of every error symprune raises on purpose."""


class InvalidInputError(SymPruneError, ValueError):
    """An argument, array or statistic is malformed (shape, dtype, range, NaN/Inf)."""


class CheckpointError(SymPruneError):
    """A checkpoint file or directory is malformed, missing or not writable."""


class ModelError(SymPruneError):
    """A model cannot be handled (unknown layout, missing config or weights)."""


class DistributedError(SymPruneError):
    """Another rank of a distributed run failed, or the ranks lost contact."""
