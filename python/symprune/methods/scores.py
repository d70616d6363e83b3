"""Score-then-mask methods (methods.md §3): one Rust score, one Rust mask, for every
score method of the core."""

from __future__ import annotations

import numpy as np
import torch

from symprune import ops
from symprune.methods import register
from symprune.spec import VOCABULARY, PruneSpec


def _score(
    name: str, weight: torch.Tensor, stats: dict[str, np.ndarray], spec: PruneSpec, tensor: str
) -> np.ndarray:
    """The score matrix of ``weight`` (moved to the CPU for the Rust kernel)."""
    info = VOCABULARY["methods"][name]
    return ops.score(
        weight.detach().cpu(),
        name,
        in_sq=stats.get("in_sq") if info["needs_in_stats"] else None,
        out_sq=stats.get("out_sq") if info["needs_out_stats"] else None,
        tensor=tensor,
        **spec.params,
    )


def _make(name: str) -> None:
    def scores(weight, stats, spec, tensor):
        return _score(name, weight, stats, spec, tensor)

    def method(weight, stats, hessian, spec, tensor):
        return ops.mask(
            scores(weight, stats, spec, tensor), spec.sparsity, pattern=spec.pattern, tensor=tensor
        )

    register(name, method, score_fn=scores)


for _name in ops.SCORES:
    _make(_name)
