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


def resident_mb() -> dict[str, float]:
    """This process's resident memory now, in MiB: ``rss``, ``anon`` (heap, tensors)
    and ``file`` (mapped files: libraries, safetensors shards); Linux's
    ``/proc/self/smaps_rollup``, empty where it is missing."""
    try:
        with open("/proc/self/smaps_rollup") as f:
            fields = dict(line.split(":", 1) for line in f if line.count(":") == 1)
    except OSError:
        return {}
    kib = {k: int(v.split()[0]) for k, v in fields.items() if v.strip().endswith("kB")}
    rss, anon = kib.get("Rss", 0), kib.get("Anonymous", 0)
    return {"rss": rss / 1024, "anon": anon / 1024, "file": (rss - anon) / 1024}


__all__ = ["launched_rank", "launched_world", "peak_rss_mb", "resident_mb"]
