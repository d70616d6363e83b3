"""The method registry: the only place that knows the list of methods.

A method is a small function of one linear layer's weight (PyTorch
orientation, (out, in)), its finalized statistics and the prune settings; it
returns the boolean prune mask (``True`` = prune) and may update the weight
in place (SparseGPT). Refinements (DSnoT, R²-DSnoT) take an initial mask and
return a refined one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from symprune.errors import InvalidInputError


@dataclass(frozen=True)
class PruneSettings:
    """What to prune to: ``sparsity`` with a comparison ``group``, or an N:M ``pattern``."""

    sparsity: float = 0.5
    group: str = "per-row"
    pattern: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        return self.pattern or f"{self.sparsity:g} {self.group}"


# weight (torch, (out, in), on the compute device), stats, hessian-or-None, settings, tensor name
MethodFn = Callable[[torch.Tensor, dict[str, np.ndarray], Any, PruneSettings, str], np.ndarray]
# weight, initial mask, stats, settings, refinement params, tensor name, initial scores
RefineFn = Callable[
    [
        torch.Tensor,
        np.ndarray,
        dict[str, np.ndarray],
        PruneSettings,
        dict[str, Any],
        str,
        np.ndarray | None,
    ],
    np.ndarray,
]


# weight, stats, settings, tensor name -> the method's score matrix (score methods only)
ScoreFn = Callable[[torch.Tensor, dict[str, np.ndarray], PruneSettings, str], np.ndarray]


@dataclass(frozen=True)
class Method:
    name: str
    fn: MethodFn
    data_free: bool
    needs_hessian: bool = False
    updates_weights: bool = False
    score_fn: ScoreFn | None = None  # N:M refinement picks inside a group by these


METHODS: dict[str, Method] = {}
REFINERS: dict[str, RefineFn] = {}


def register(
    name: str,
    *,
    data_free: bool = False,
    needs_hessian: bool = False,
    updates_weights: bool = False,
    score_fn: ScoreFn | None = None,
) -> Callable[[MethodFn], MethodFn]:
    def wrap(fn: MethodFn) -> MethodFn:
        METHODS[name] = Method(name, fn, data_free, needs_hessian, updates_weights, score_fn)
        return fn

    return wrap


def register_refiner(name: str) -> Callable[[RefineFn], RefineFn]:
    def wrap(fn: RefineFn) -> RefineFn:
        REFINERS[name] = fn
        return fn

    return wrap


def get(name: str) -> Method:
    if name not in METHODS:
        raise InvalidInputError(f"method {name!r} is not one of {', '.join(sorted(METHODS))}")
    return METHODS[name]


def get_refiner(name: str) -> RefineFn:
    if name not in REFINERS:
        raise InvalidInputError(
            f"refinement {name!r} is not one of {', '.join(sorted(REFINERS)) or 'none available'}"
        )
    return REFINERS[name]


# Importing the families registers them.
from symprune.methods import refine, scores, sparsegpt  # noqa: E402, F401
