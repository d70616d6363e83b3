"""A/B in one script: the streamed Wanda 50% job on SmolLM2 (16x256 windows, CPU)
with and without releasing a tensor's mapped shard pages once it is copied out.

    python benches/ab_mapped_pages.py keep      # the pages stay mapped (before issue 12)
    python benches/ab_mapped_pages.py release   # today's reader
"""

import sys

from symprune import api, data
from symprune.checkpoint import io
from symprune.util import peak_rss_mb


class _NoRelease:
    """The Rust reader, with release() doing nothing."""

    def __init__(self, core):
        self._c = core

    def release(self, name):
        pass

    def __getattr__(self, k):
        return getattr(self._c, k)


if sys.argv[1] == "keep":
    original = io.CheckpointReader.__init__

    def init(self, path):
        original(self, path)
        self._core = _NoRelease(self._core)

    io.CheckpointReader.__init__ = init
r = api.prune(
    data.builtin_model(),
    f"/tmp/symprune-ab-{sys.argv[1]}",
    method="wanda",
    nsamples=16,
    seqlen=256,
    progress=False,
    overwrite=True,
    device="cpu",
)
print(sys.argv[1], f"peak {peak_rss_mb():.0f} MiB, {r.seconds:.1f} s;", r.memory_breakdown())
