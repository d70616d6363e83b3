"""Perplexity ordering on the real model and text: dense < wanda < magnitude at 50%."""

from __future__ import annotations

import pytest

import symprune
from symprune.evaluation.perplexity import perplexity

pytestmark = pytest.mark.real

EVAL = dict(seqlen=256, max_windows=8, device="cpu")


def test_dense_beats_wanda_beats_magnitude(smollm2_dir, tmp_path, record_property):
    common = dict(sparsity=0.5, device="cpu", progress=False)
    symprune.prune(smollm2_dir, tmp_path / "magnitude", method="magnitude", **common)
    symprune.prune(
        smollm2_dir, tmp_path / "wanda", method="wanda", nsamples=8, seqlen=128, **common
    )
    ppl = {
        "dense": perplexity(smollm2_dir, **EVAL),
        "wanda": perplexity(tmp_path / "wanda", **EVAL),
        "magnitude": perplexity(tmp_path / "magnitude", **EVAL),
    }
    for name, value in ppl.items():
        record_property(f"ppl_{name}", value)
    print(ppl)
    assert ppl["dense"] < ppl["wanda"] < ppl["magnitude"], ppl
    assert ppl["dense"] < 30  # the converted checkpoint is a working language model
