"""Compressed-tensors sparse checkpoints (``sparse-bitmask``, ``sparse-24-bitmask``),
written and decompressed shard to shard in Rust (docs/formats.md).

Writing needs no ``compressed-tensors`` package; transformers (with it installed)
and vLLM read the result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from symprune import _core
from symprune.checkpoint.io import rust_progress
from symprune.spec import VOCABULARY, selection_rule
from symprune.util import peak_rss_mb

COMPRESSED_FORMATS: tuple[str, ...] = tuple(VOCABULARY["compressed_formats"])
"""The compressed-tensors sparse formats (every save format but dense)."""
DEFAULT_COMPRESSED_FORMAT: str = VOCABULARY["default_compressed_format"]


@dataclass(frozen=True)
class CompressedTensor:
    """One weight stored compressed (or, decompressing, restored to dense)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    nonzeros: int
    numel: int
    dense_bytes: int
    compressed_bytes: int


@dataclass(frozen=True)
class LeftDense:
    """A selected tensor the format cannot hold: written dense, listed in ``ignore``."""

    name: str
    reason: str


@dataclass(frozen=True)
class CompressReport:
    """What :func:`compress` or :func:`decompress` did."""

    input: str
    output: str
    format: str
    tensors: list[CompressedTensor]
    left_dense: list[LeftDense]
    global_sparsity: float
    input_tensor_bytes: int
    output_tensor_bytes: int
    bytes_written: int
    shards: int
    resumed_shards: int
    skipped_files: list[str]
    seconds: float
    peak_rss_mb: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """A small table of the totals, and a line per tensor left dense."""
        ratio = self.output_tensor_bytes / self.input_tensor_bytes if self.input_tensor_bytes else 0
        rows = [
            ("format", self.format),
            ("tensors converted", str(len(self.tensors))),
            ("global sparsity", f"{self.global_sparsity:.4f}"),
            (
                "tensor bytes",
                f"{self.input_tensor_bytes:,} -> {self.output_tensor_bytes:,} ({ratio:.3f}x)",
            ),
            ("seconds", f"{self.seconds:.2f}"),
            *([("resumed shards", str(self.resumed_shards))] if self.resumed_shards else []),
            ("peak RSS", f"{self.peak_rss_mb:.0f} MiB"),
            ("output", self.output),
        ]
        if self.skipped_files:
            rows.append(("not copied", ", ".join(self.skipped_files)))
        rows += [("left dense", f"{t.name}: {t.reason}") for t in self.left_dense]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _tensor(data: dict[str, Any]) -> CompressedTensor:
    return CompressedTensor(**{**data, "shape": tuple(data["shape"])})


def _report(input: str | Path, output: str | Path, data: dict[str, Any]) -> CompressReport:
    return CompressReport(
        input=str(input),
        output=str(output),
        format=data["format"],
        tensors=[_tensor(t) for t in data["tensors"]],
        left_dense=[LeftDense(**t) for t in data["left_dense"]],
        global_sparsity=data["global_sparsity"],
        input_tensor_bytes=data["input_tensor_bytes"],
        output_tensor_bytes=data["output_tensor_bytes"],
        bytes_written=data["bytes_written"],
        shards=data["shards"],
        resumed_shards=data["resumed_shards"],
        skipped_files=data["skipped_files"],
        seconds=data["seconds"],
        peak_rss_mb=peak_rss_mb(),
    )


def compress(
    model: str | Path,
    output: str | Path,
    format: str = DEFAULT_COMPRESSED_FORMAT,
    *,
    targets: str | Sequence[str] | None = None,
    ignore: str | Sequence[str] | None = None,
    progress: bool | Callable[[CompressedTensor], None] = False,
) -> CompressReport:
    """Writes the pruned checkpoint ``model`` into ``output`` in a compressed-tensors
    sparse ``format`` (:data:`COMPRESSED_FORMATS`), one tensor at a time.

    The tensors compressed are those pruning selects (``targets`` / ``ignore`` as for
    pruning). One a format cannot hold (not 2:4 for ``sparse-24-bitmask``, not a
    ``.weight``, or no smaller as a bitmask) is written dense, listed in the config's
    ``ignore`` and in :attr:`CompressReport.left_dense` with the reason. ``output``
    must be a new or empty directory. Finished shards are journaled: a run stopped or
    failed midway, run again with the same input, format and selection, resumes
    (:attr:`CompressReport.resumed_shards`) and ends with the same bytes.
    """
    data = _core.compress_checkpoint(
        str(model),
        str(output),
        format,
        selection_rule(targets, ignore),
        progress=rust_progress(progress, "compress", _tensor),
    )
    return _report(model, output, data)


def decompress(model: str | Path, output: str | Path) -> CompressReport:
    """Writes the compressed-tensors sparse checkpoint ``model`` into ``output`` as a
    dense one (the ``quantization_config`` block removed from ``config.json``); what
    :func:`compress` wrote from shards laid out as safetensors writes them comes back
    byte for byte (docs/formats.md §4). Malformed inputs raise
    :class:`~symprune.errors.CheckpointError` naming the file and tensor before
    anything is written; an interrupted run resumes as :func:`compress` does."""
    return _report(model, output, _core.decompress_checkpoint(str(model), str(output)))
