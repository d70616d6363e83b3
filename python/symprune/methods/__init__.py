"""The method registry: which Python function carries out each method of the core.

The list of methods, their parameters and defaults belong to the Rust core
(:data:`symprune.spec.VOCABULARY`); here each name gets its implementation. A
method is a small function of one linear layer's weight (PyTorch orientation,
(out, in)), its finalized statistics, the Hessian (when the method needs it)
and the :class:`~symprune.spec.PruneSpec`; it returns the boolean prune mask
(``True`` = prune) and may update the weight in place (SparseGPT). A refiner
takes an initial mask and returns a refined one. The families are imported on
first use, so that importing the registry needs no torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from symprune.errors import InvalidInputError
from symprune.spec import METHODS, REFINERS, PruneSpec

if TYPE_CHECKING:
    import torch

# weight (torch, (out, in), on the compute device), stats, hessian-or-None, spec, tensor name
MethodFn = Callable[["torch.Tensor", dict[str, np.ndarray], Any, PruneSpec, str], np.ndarray]
# weight, stats, spec, tensor name -> the method's score matrix (score methods only)
ScoreFn = Callable[["torch.Tensor", dict[str, np.ndarray], PruneSpec, str], np.ndarray]
# weight, initial mask, stats, Gram matrix-or-None, spec, tensor name, initial scores
# -> refined mask and the refiner's report (swaps, loss before/after where computed)
RefineFn = Callable[
    [
        "torch.Tensor",
        np.ndarray,
        dict[str, np.ndarray],
        Any,
        PruneSpec,
        str,
        "np.ndarray | None",
    ],
    tuple[np.ndarray, Any],
]


@dataclass(frozen=True)
class Method:
    name: str
    fn: MethodFn
    score_fn: ScoreFn | None = None  # N:M refinement picks inside a group by these


_METHODS: dict[str, Method] = {}
_REFINERS: dict[str, RefineFn] = {}
_FAMILIES = ("scores", "sparsegpt", "refine")


def register(name: str, fn: MethodFn, score_fn: ScoreFn | None = None) -> None:
    if name not in METHODS:
        raise InvalidInputError(f"method {name!r} is not one of the core's: {', '.join(METHODS)}")
    _METHODS[name] = Method(name, fn, score_fn)


def register_refiner(name: str, fn: RefineFn) -> None:
    if name not in REFINERS:
        raise InvalidInputError(f"refinement {name!r} is not one of {', '.join(REFINERS)}")
    _REFINERS[name] = fn


def _missing() -> set[str]:
    return set(METHODS) - set(_METHODS) | set(REFINERS) - set(_REFINERS)


def _load() -> None:
    # By what is missing, not by emptiness: a family imported directly
    # (``symprune.methods.sparsegpt``) registers only its own methods.
    if _missing():
        for family in _FAMILIES:
            importlib.import_module(f"symprune.methods.{family}")
        if _missing():
            raise RuntimeError(f"no implementation for {sorted(_missing())}")


def get(name: str) -> Method:
    _load()
    if name not in _METHODS:
        raise InvalidInputError(f"method {name!r} is not one of {', '.join(METHODS)}")
    return _METHODS[name]


def get_refiner(name: str) -> RefineFn:
    _load()
    if name not in _REFINERS:
        raise InvalidInputError(f"refinement {name!r} is not one of {', '.join(REFINERS)}")
    return _REFINERS[name]
