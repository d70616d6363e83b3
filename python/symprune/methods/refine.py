"""Training-free mask refinement (methods.md §5, §7): DSnoT and R²-DSnoT, in Rust.

Both keep every row's count (and N:M) and never change weights; after
SparseGPT they run on its updated weights, as the reference does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from symprune import ops
from symprune.errors import InvalidInputError
from symprune.methods import PruneSettings, register_refiner

_DSNOT = {"max_cycles", "threshold", "var_power", "same_sign"}
_R2DSNOT = _DSNOT | {"ri_phase", "alpha", "gamma", "p", "on_reject"}


def _checked(name: str, params: dict[str, Any], allowed: set[str]) -> dict[str, Any]:
    unknown = set(params) - allowed
    if unknown:
        raise InvalidInputError(
            f"{name}: unknown parameters {sorted(unknown)}; allowed: {sorted(allowed)}"
        )
    return params


def _register(
    name: str, kernel: Callable[..., np.ndarray], allowed: set[str], takes_initial_scores: bool
) -> None:
    def refine(
        weight: torch.Tensor,
        mask: np.ndarray,
        stats: dict[str, np.ndarray],
        settings: PruneSettings,
        params: dict[str, Any],
        tensor: str = "",
        initial_scores: np.ndarray | None = None,
    ) -> np.ndarray:
        extra = {"initial_scores": initial_scores} if takes_initial_scores else {}
        return kernel(
            weight.detach().cpu(),
            mask,
            stats["in_sq"],
            stats["sum"],
            stats["var"],
            pattern=settings.pattern,
            tensor=tensor,
            **extra,
            **_checked(name, params, allowed),
        )

    register_refiner(name)(refine)


_register("dsnot", ops.dsnot, _DSNOT, takes_initial_scores=True)
# R²-DSnoT's N:M pick uses its own prune score (methods.md §7), not the initial one.
_register("r2dsnot", ops.r2dsnot, _R2DSNOT, takes_initial_scores=False)
