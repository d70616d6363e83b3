"""Small torch-free helpers shared by every stage."""

from __future__ import annotations

import os
import resource


def launched_rank() -> int:
    """This process's rank as set by torchrun (0 when not launched as several ranks)."""
    return int(os.environ.get("RANK", "0"))


def launched_world() -> int:
    """How many ranks torchrun started (1 when not launched as several ranks)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


__all__ = ["launched_rank", "launched_world", "peak_rss_mb"]
