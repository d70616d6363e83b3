"""Training-free mask refinement (methods.md §5, §7): every refiner of the core, in Rust.

Each keeps every row's count (and N:M) and never changes weights; after
SparseGPT it runs on the updated weights, as the reference does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from symprune import _core, ops
from symprune.methods import register_refiner
from symprune.spec import REFINERS, VOCABULARY, PruneSpec


def _make(name: str) -> None:
    def refine(
        weight: torch.Tensor,
        mask: np.ndarray,
        stats: dict[str, np.ndarray],
        gram: torch.Tensor | None,
        spec: PruneSpec,
        tensor: str = "",
        initial_scores: np.ndarray | None = None,
    ) -> tuple[np.ndarray, _core.RefineReport]:
        # DSnoT picks inside N:M groups by the initial method's scores;
        # R²-DSnoT by its own prune score (methods.md §7).
        uses = VOCABULARY["refiners"][name]["uses_initial_scores"]
        extra: dict[str, Any] = {"initial_scores": initial_scores} if uses else {}
        if gram is not None and spec.request.refine_needs_gram:
            # The Gram matrix of the layer's inputs (§9); SparseGPT's 2/N factor is
            # harmless, the tolerance is relative.
            extra["gram"] = gram.detach().float().cpu().numpy()
        return ops.refine(
            name,
            weight.detach().cpu(),
            mask,
            stats["in_sq"],
            stats["sum"],
            stats["var"],
            pattern=spec.pattern,
            tensor=tensor,
            **extra,
            **spec.refine_params,
        )

    register_refiner(name, refine)


for _name in REFINERS:
    _make(_name)
