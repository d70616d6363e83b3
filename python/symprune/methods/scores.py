"""Score-then-mask methods (methods.md §3): one Rust score, one Rust mask."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from symprune import ops
from symprune.methods import PruneSettings, register

# Which statistics each score reads, and which of the settings' params it takes.
_SCORES = {
    "magnitude": ((), ()),
    "wanda": (("in_sq",), ()),
    "ria": (("in_sq",), ("a",)),
    "lp-ria": (("in_sq",), ("a", "p")),
    "stochria": (("in_sq",), ("a", "beta", "seed", "activation")),
    "symmetric": ((), ()),
    "symwanda": (("in_sq", "out_sq"), ("lam",)),
    "owanda": (("out_sq",), ()),
}


def score_of(
    name: str,
    weight: torch.Tensor,
    stats: dict[str, np.ndarray],
    settings: PruneSettings,
    tensor: str,
) -> np.ndarray:
    """The score matrix of ``weight`` (moved to the CPU for the Rust kernel)."""
    needs, params = _SCORES[name]
    kwargs: dict[str, Any] = {k: settings.params[k] for k in params if k in settings.params}
    w = weight.detach().cpu()
    return ops.score(
        w,
        name,
        in_sq=stats.get("in_sq") if "in_sq" in needs else None,
        out_sq=stats.get("out_sq") if "out_sq" in needs else None,
        tensor=tensor,
        **kwargs,
    )


def mask_of(scores: np.ndarray, settings: PruneSettings, tensor: str) -> np.ndarray:
    return ops.mask(
        scores, settings.sparsity, group=settings.group, pattern=settings.pattern, tensor=tensor
    )


def _make(name: str) -> None:
    def method(weight, stats, hessian, settings, tensor):
        return mask_of(score_of(name, weight, stats, settings, tensor), settings, tensor)

    def scores(weight, stats, settings, tensor):
        return score_of(name, weight, stats, settings, tensor)

    register(name, data_free=not _SCORES[name][0], score_fn=scores)(method)


for _name in _SCORES:
    _make(_name)
