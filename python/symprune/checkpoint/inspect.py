"""Per-tensor sparsity of a checkpoint, and whether an N:M pattern holds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from symprune import _core
from symprune.spec import selection_rule


@dataclass(frozen=True)
class TensorSparsity:
    name: str
    dtype: str
    shape: tuple[int, ...]
    numel: int
    zeros: int | None
    selected: bool
    nm_violations: int | None

    @property
    def sparsity(self) -> float | None:
        if self.zeros is None:
            return None
        return self.zeros / self.numel if self.numel else 0.0


@dataclass(frozen=True)
class Inspection:
    """The sparsity of a checkpoint (see :func:`inspect`)."""

    path: str
    pattern: str | None
    tensors: list[TensorSparsity]
    selected_sparsity: float
    total_sparsity: float
    nm_ok: bool | None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for entry, t in zip(out["tensors"], self.tensors, strict=True):
            entry["sparsity"] = t.sparsity
        return out

    def table(self) -> str:
        """One line per tensor, then the totals."""
        head = ["tensor", "dtype", "shape", "sparsity"] + ([self.pattern] if self.pattern else [])
        rows = []
        for t in self.tensors:
            row = [
                t.name + (" *" if t.selected else ""),
                t.dtype,
                "x".join(map(str, t.shape)) or "scalar",
                "-" if t.sparsity is None else f"{t.sparsity:.4f}",
            ]
            if self.pattern:
                v = t.nm_violations
                row.append("-" if v is None else "ok" if v == 0 else f"{v} groups break it")
            rows.append(row)
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in [head, *rows]
        ]
        lines.append(f"* selected (pruned by default): sparsity {self.selected_sparsity:.4f}")
        lines.append(f"all tensors: sparsity {self.total_sparsity:.4f}")
        if self.pattern:
            verdict = "holds" if self.nm_ok else "does NOT hold"
            lines.append(f"{self.pattern} {verdict} on every selected tensor")
        return "\n".join(lines)


def inspect(
    path: str | Path,
    *,
    pattern: str | None = None,
    targets: str | Sequence[str] | None = None,
    ignore: str | Sequence[str] | None = None,
) -> Inspection:
    """Per-tensor sparsity (fraction of exact zeros) of the checkpoint in ``path``;
    with ``pattern="N:M"`` also how many groups of M inputs break N:M. ``targets`` /
    ``ignore`` choose the "selected" tensors as in :func:`prune_checkpoint`."""
    data = _core.inspect(str(path), selection_rule(targets, ignore), pattern)

    def ratio(c: dict[str, int]) -> float:
        return c["zeros"] / c["numel"] if c["numel"] else 0.0

    return Inspection(
        path=str(path),
        pattern=data["pattern"],
        tensors=[TensorSparsity(**{**t, "shape": tuple(t["shape"])}) for t in data["tensors"]],
        selected_sparsity=ratio(data["selected"]),
        total_sparsity=ratio(data["total"]),
        nm_ok=data["nm_ok"],
    )
