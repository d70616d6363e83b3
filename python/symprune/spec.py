"""What a pruning run does, validated once at the edge and passed whole to either engine.

The names, parameters and defaults all come from the Rust core
(:data:`VOCABULARY`); nothing here restates them. ``None`` always means "the
core's default". This module needs no torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from symprune import _core
from symprune.errors import InvalidInputError

VOCABULARY: dict[str, Any] = _core.vocabulary()
"""Every method, refiner and pattern with its parameters (name, default, kind, doc)."""

METHODS: tuple[str, ...] = tuple(VOCABULARY["method_names"])
REFINERS: tuple[str, ...] = tuple(VOCABULARY["refiner_names"])
PATTERNS: tuple[str, ...] = tuple(VOCABULARY["patterns"])
SAVE_FORMATS: tuple[str, ...] = tuple(VOCABULARY["save_formats"])
"""Every save format; all but ``dense`` are compressed-tensors sparse formats."""
DEFAULT_SAVE_FORMAT: str = VOCABULARY["default_save_format"]


def _patterns(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def selection_rule(
    targets: str | Sequence[str] | None = None, ignore: str | Sequence[str] | None = None
) -> _core.Selection:
    """The core's selection rule with ``targets`` / ``ignore`` regexes (``re:`` optional)."""
    return _core.Selection(_patterns(targets), _patterns(ignore))


def parse_param(text: str) -> tuple[str, Any]:
    """``NAME=VALUE``: VALUE as JSON (numbers, true/false), else as a string."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise InvalidInputError(f"param: {text!r} is not NAME=VALUE")
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = value
    return name.strip().replace("-", "_"), parsed


def parse_refinement(text: str) -> tuple[str, dict[str, Any]]:
    """A refinement as the report grid names it: ``NAME`` or ``NAME:P=V[;P=V...]``
    (e.g. ``r2dsnot:decision=exact``); returns the name and its parameters."""
    name, _, rest = text.partition(":")
    return name, dict(parse_param(p) for p in rest.split(";") if p)


class PruneSpec:
    """A pruning request: method (with ``params``), target, refinement, tensor selection.

    ``pattern`` is ``per-row`` (default), ``per-matrix``, ``adaptive`` (all at
    ``sparsity``) or ``N:M``; ``None`` anywhere is the core's default. Every name and
    parameter is checked by the core when the spec is made: an unknown name, an unknown
    parameter or a value of the wrong type raises
    :class:`~symprune.errors.InvalidInputError`. Afterwards ``method``, ``pattern`` and
    ``sparsity`` hold the canonical values (``sparsity`` is N/M for N:M), ``params`` /
    ``refine_params`` what was given. A spec is immutable.
    """

    __slots__ = (
        "method",
        "params",
        "sparsity",
        "pattern",
        "refine",
        "refine_params",
        "targets",
        "ignore",
        "request",
        "selection",
    )

    method: str
    params: Mapping[str, Any]
    sparsity: float
    pattern: str
    refine: str | None
    refine_params: Mapping[str, Any]
    targets: str | Sequence[str] | None
    ignore: str | Sequence[str] | None
    request: _core.Request
    selection: _core.Selection

    def __init__(
        self,
        method: str | None = None,
        params: Mapping[str, Any] | None = None,
        sparsity: float | None = None,
        pattern: str | None = None,
        refine: str | None = None,
        refine_params: Mapping[str, Any] | None = None,
        targets: str | Sequence[str] | None = None,
        ignore: str | Sequence[str] | None = None,
    ) -> None:
        params, refine_params = dict(params or {}), dict(refine_params or {})
        request = _core.Request(method, params, pattern, sparsity, refine, refine_params)
        values = {
            "method": request.method,
            "params": MappingProxyType(params),
            "sparsity": request.sparsity,
            "pattern": request.pattern,
            "refine": request.refine,
            "refine_params": MappingProxyType(refine_params),
            "targets": targets,
            "ignore": ignore,
            "request": request,
            "selection": selection_rule(targets, ignore),
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"PruneSpec is immutable; make a new one instead of setting {name}")

    def __repr__(self) -> str:
        return f"PruneSpec({self.describe()!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PruneSpec) and self.describe() == other.describe()

    def __hash__(self) -> int:
        return hash(repr(self))

    @property
    def nm(self) -> tuple[int, int] | None:
        """``(n, m)`` of an N:M pattern."""
        return self.request.nm

    def runs_shard_by_shard(self, with_stats_file: bool) -> bool:
        """Whether the Rust engine does it alone (no model, no calibration)."""
        return self.request.runs_shard_by_shard(with_stats_file)

    @property
    def effective_params(self) -> dict[str, Any]:
        """The method's parameters with the core's defaults filled in."""
        return self.request.describe()["parameters"]

    @property
    def effective_refine_params(self) -> dict[str, Any]:
        """The refinement's parameters with the core's defaults filled in."""
        return self.request.describe()["refine_parameters"]

    def describe(self) -> dict[str, Any]:
        """The run's fields of ``sparsity.json``, as both engines write them."""
        return {**self.request.describe(), "selection": self.selection.describe()}

    def label(self) -> str:
        """E.g. ``wanda + dsnot (2:4)`` or ``ria (0.5 per-row)``."""
        target = self.pattern if self.nm else f"{self.sparsity:g} {self.pattern}"
        return f"{self.method}{' + ' + self.refine if self.refine else ''} ({target})"


def check_count(name: str, value: Any, *, minimum: int = 1, optional: bool = False) -> None:
    """Refuses anything but a whole number >= ``minimum`` (``None`` too, if ``optional``)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInputError(f"{name}: {value!r} must be a whole number >= {minimum}")


@dataclass(frozen=True)
class Calibration:
    """Where the calibration tokens come from, and how many (methods.md §8).

    ``nsamples`` / ``seqlen`` of ``None`` are chosen by :func:`sized_for` for the device;
    every given number is checked when the object is made.
    """

    source: str = "builtin"  # "builtin", a .txt file or a .jsonl file of {"text": ...}
    nsamples: int | None = None
    seqlen: int | None = None
    seed: int = 0
    batch_size: int = 8

    def __post_init__(self) -> None:
        check_count("nsamples", self.nsamples, optional=True)
        # A window needs a token and its successor.
        check_count("seqlen", self.seqlen, minimum=2, optional=True)
        check_count("seed", self.seed, minimum=0)
        check_count("batch_size", self.batch_size)

    def sized_for(self, device: str) -> Calibration:
        """The published 128 × 2048 on a GPU; a CPU-sized 16 × 512 otherwise."""
        on_gpu = device.startswith("cuda")
        return Calibration(
            self.source,
            (128 if on_gpu else 16) if self.nsamples is None else self.nsamples,
            (2048 if on_gpu else 512) if self.seqlen is None else self.seqlen,
            self.seed,
            self.batch_size,
        )

    def size(self) -> tuple[int, int]:
        """``(nsamples, seqlen)`` of a sized calibration."""
        if self.nsamples is None or self.seqlen is None:
            raise InvalidInputError("calibration: nsamples and seqlen must be set (see sized_for)")
        return self.nsamples, self.seqlen

    def describe(self) -> dict[str, Any]:
        return {
            "calibration": self.source,
            "nsamples": self.nsamples,
            "seqlen": self.seqlen,
            "seed": self.seed,
        }


def evaluation_windows(
    device: str,
    calibration_seqlen: int | None = None,
    seqlen: int | None = None,
    windows: int | None = None,
) -> tuple[int, int | None]:
    """The perplexity windows ``(seqlen, count)`` every command uses unless told: windows
    of ``min(calibration seqlen, 512)`` tokens; all of them on a GPU, the first 32 on
    the CPU (``None``: all)."""
    check_count("eval_seqlen", seqlen, minimum=2, optional=True)
    check_count("eval_windows", windows, optional=True)
    if seqlen is None:
        seqlen = min(calibration_seqlen or 512, 512)
    if windows is None and not device.startswith("cuda"):
        windows = 32
    return seqlen, windows


def method_info(name: str) -> dict[str, Any]:
    """The core's description of method ``name`` (parameters, needs)."""
    if name not in VOCABULARY["methods"]:
        raise InvalidInputError(f"method {name!r} is not one of {', '.join(METHODS)}")
    return VOCABULARY["methods"][name]


__all__ = [
    "METHODS",
    "PATTERNS",
    "REFINERS",
    "VOCABULARY",
    "Calibration",
    "PruneSpec",
    "check_count",
    "evaluation_windows",
    "method_info",
    "selection_rule",
]
