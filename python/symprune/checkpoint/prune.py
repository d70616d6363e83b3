"""Pruning a checkpoint shard to shard in Rust (data-free methods, or a data-aware
score from a statistics file), and finishing a shard-parallel run's output."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from symprune import _core
from symprune.checkpoint.io import rust_progress
from symprune.errors import InvalidInputError
from symprune.spec import PruneSpec
from symprune.util import peak_rss_mb


@dataclass(frozen=True)
class TensorReport:
    name: str
    shape: tuple[int, ...]
    dtype: str
    sparsity: float
    zeros: int
    numel: int
    seconds: float
    resumed: bool
    # The refiner's layer-wise loss before/after (methods.md §9), where it computes it.
    loss_before: float | None = None
    loss_after: float | None = None


@dataclass(frozen=True)
class PruneReport:
    """What :func:`prune_checkpoint` did."""

    input: str
    output: str
    tensors: list[TensorReport]
    sparsity: float
    zeros: int
    numel: int
    bytes_written: int
    resumed_shards: int
    skipped_files: list[str]
    seconds: float
    peak_rss_mb: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """A small table of the totals."""
        resumed = sum(t.resumed for t in self.tensors)
        pruned = f"{len(self.tensors)}" + (f" ({resumed} from an earlier run)" if resumed else "")
        rows = [
            ("tensors pruned", pruned),
            ("parameters", f"{self.numel:,}"),
            ("achieved sparsity", f"{self.sparsity:.4f}"),
            ("bytes written", f"{self.bytes_written:,} ({self.bytes_written / 2**30:.2f} GiB)"),
            ("seconds", f"{self.seconds:.2f}"),
            ("peak RSS", f"{self.peak_rss_mb:.0f} MiB"),
            ("output", self.output),
        ]
        if self.skipped_files:
            rows.append(("not copied", ", ".join(self.skipped_files)))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def prune_checkpoint(
    model: str | Path,
    output: str | Path,
    spec: PruneSpec | None = None,
    *,
    stats: str | Path | None = None,
    overwrite: bool = False,
    progress: bool | Callable[[TensorReport], None] = False,
    rank: int = 0,
    world_size: int = 1,
    **fields: Any,
) -> PruneReport:
    """Prunes the checkpoint in ``model`` into ``output``, shard by shard, in Rust.

    ``spec`` (or its ``fields``: ``method``, ``params``, ``sparsity``, ``pattern``,
    ``targets``, ``ignore``, ``refine``, ``refine_params``; see
    :class:`~symprune.spec.PruneSpec`) must be a score method. ``magnitude``,
    ``symmetric`` and ``ria``/``lp-ria``/``stochria`` with ``a=0`` need no data; the
    others, and every refinement, read ``stats``, a safetensors file from
    ``symprune calibrate`` with F32 ``X.in_sq`` / ``X.out_sq`` (``X.sum`` / ``X.var``
    for DSnoT and R²-DSnoT; ``X.gram`` from ``--gram`` for ``swaps`` and
    ``decision=exact``) per weight ``X.weight``; a refined tensor's mask is refined
    before it is applied (the whole tensor at once). By default the
    linear weights of the decoder blocks are pruned. ``progress=True`` shows a bar.
    A re-run after an interruption resumes and gives byte-identical output.

    With ``world_size`` > 1 this process prunes only the shards ``k`` with
    ``k % world_size == rank`` (its part; the report covers them alone) and
    leaves the output unfinished; once every rank is done, :func:`finalize`
    completes it, byte-identical to a single process's output.
    """
    if spec is None:
        spec = PruneSpec(**fields)
    elif fields:
        raise InvalidInputError("spec: give either a PruneSpec or its fields, not both")
    data = _core.prune_checkpoint(
        str(model),
        str(output),
        spec.request,
        spec.selection,
        stats=None if stats is None else str(stats),
        overwrite=overwrite,
        progress=rust_progress(
            progress, "prune", lambda t: TensorReport(**{**t, "shape": tuple(t["shape"])})
        ),
        rank=rank,
        world=world_size,
    )
    return PruneReport(
        input=str(model),
        output=str(output),
        tensors=[TensorReport(**{**t, "shape": tuple(t["shape"])}) for t in data["tensors"]],
        sparsity=data["sparsity"],
        zeros=data["achieved"]["zeros"],
        numel=data["achieved"]["numel"],
        bytes_written=data["bytes_written"],
        resumed_shards=data["resumed_shards"],
        skipped_files=data["skipped_files"],
        seconds=data["seconds"],
        peak_rss_mb=peak_rss_mb(),
    )


@dataclass(frozen=True)
class Finalized:
    """What :func:`finalize` did: the whole checkpoint's achieved sparsity."""

    output: str
    tensors: dict[str, float]  # achieved sparsity of every pruned tensor
    sparsity: float
    zeros: int
    numel: int
    bytes_written: int
    skipped_files: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        rows = [
            ("tensors pruned", str(len(self.tensors))),
            ("parameters", f"{self.numel:,}"),
            ("achieved sparsity", f"{self.sparsity:.4f}"),
            ("output", self.output),
        ]
        if self.skipped_files:
            rows.append(("not copied", ", ".join(self.skipped_files)))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def finalize(output: str | Path) -> Finalized:
    """Finishes the output of a shard-parallel :func:`prune_checkpoint` once every
    rank has written its shards: copies the non-weight files and writes the index
    and ``sparsity.json`` (from the parts' journals, which name the input).
    Names the shards still missing, and the ranks that write them, otherwise."""
    data = _core.finalize(str(output))
    counts = data["tensors"]
    zeros = sum(c["zeros"] for c in counts.values())
    numel = sum(c["numel"] for c in counts.values())
    return Finalized(
        output=str(output),
        tensors={n: c["zeros"] / c["numel"] if c["numel"] else 0.0 for n, c in counts.items()},
        sparsity=zeros / numel if numel else 0.0,
        zeros=zeros,
        numel=numel,
        bytes_written=data["bytes_written"],
        skipped_files=data["skipped_files"],
    )
