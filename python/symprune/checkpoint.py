"""Streaming checkpoints: read, prune, write and inspect safetensors checkpoints.

A checkpoint is a Hugging Face directory with a single ``model.safetensors``
or shards listed by ``model.safetensors.index.json``. Everything here runs in
Rust on memory maps, one tensor at a time, so memory stays near one tensor
(plus its scores and mask) however large the checkpoint is:

- :class:`CheckpointReader` hands out tensors as zero-copy numpy or torch views;
- :class:`CheckpointWriter` writes a pruned copy by in-place substitution (same
  shards, headers and offsets; untouched tensors and the non-weight files are
  copied byte for byte), resumable after an interruption, and finished by
  ``sparsity.json``, the manifest of the run;
- :func:`prune_checkpoint` prunes with a data-free method, or a data-aware one
  from a statistics file, shard to shard entirely in Rust; ``rank`` /
  ``world_size`` split the shards among processes, and :func:`finalize`
  finishes their common output;
- :func:`inspect` measures per-tensor sparsity and checks an N:M pattern.

Malformed files raise :class:`~symprune.errors.CheckpointError` naming the
file, the tensor and the fix; so does an output that could harm anything
outside it (see :class:`CheckpointWriter`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from symprune import _core
from symprune.errors import InvalidInputError
from symprune.spec import PruneSpec, selection_rule
from symprune.util import peak_rss_mb

MANIFEST: str = _core.MANIFEST_FILE

# numpy has no bfloat16 or float8: those cross as their raw bits.
_NUMPY = {
    "BOOL": np.bool_,
    "U8": np.uint8,
    "I8": np.int8,
    "I16": np.int16,
    "U16": np.uint16,
    "F16": np.float16,
    "BF16": np.uint16,
    "I32": np.int32,
    "U32": np.uint32,
    "F32": np.float32,
    "F64": np.float64,
    "I64": np.int64,
    "U64": np.uint64,
    "C64": np.complex64,
}
for _f8 in ("F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ"):
    _NUMPY[_f8] = np.uint8

_FLOATS = ("F32", "F16", "BF16")


def _torch_dtype(name: str) -> Any:
    import torch

    special = {
        "BF16": torch.bfloat16,
        "F8_E5M2": torch.float8_e5m2,
        "F8_E4M3": torch.float8_e4m3fn,
        "F8_E4M3FNUZ": torch.float8_e4m3fnuz,
        "F8_E5M2FNUZ": torch.float8_e5m2fnuz,
    }
    if name in special:
        return special[name]
    return torch.from_numpy(np.zeros(0, _NUMPY[name])).dtype


def _is_torch(x: object) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


class CheckpointReader:
    """A checkpoint directory, memory-mapped; tensors are read one at a time.

    :meth:`numpy` returns read-only views of the map (no copy); :meth:`torch`
    returns a tensor of its own (one copy), since torch has no read-only tensors.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._core = _core.CheckpointReader(str(self.path))
        self._names = self._core.names()
        self._known = set(self._names)

    def names(self) -> list[str]:
        """Tensor names, shard by shard in file order."""
        return list(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._known

    def dtype(self, name: str) -> str:
        """The safetensors dtype name (``"BF16"``, ``"I8"``, ...)."""
        return self._core.info(name)[0]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._core.info(name)[1])

    @property
    def shards(self) -> list[str]:
        return self._core.shards()

    @property
    def metadata(self) -> dict[str, str]:
        """The ``__metadata__`` of the shards, merged."""
        return self._core.metadata()

    def numpy(self, name: str) -> np.ndarray:
        """A read-only view (no copy); BF16 and F8 come as their raw bits (uint16 / uint8)."""
        dtype, shape = self._core.info(name)
        raw = self._core.tensor_bytes(name)
        if dtype not in _NUMPY:  # sub-byte formats (F4, F6): packed bytes
            return raw
        return raw.view(_NUMPY[dtype]).reshape(shape)

    def torch(self, name: str) -> Any:
        """A copy as a torch tensor of the stored dtype (bfloat16 included)."""
        import torch

        dtype, shape = self._core.info(name)
        if dtype not in _NUMPY:
            raise InvalidInputError(f"{name}: dtype {dtype} has no torch equivalent; use numpy()")
        # Viewed as the element type in numpy, so torch only reinterprets equal-sized
        # elements (an empty byte array has no unit stride to view as wider ones).
        raw = self._core.tensor_bytes(name).view(_NUMPY[dtype]).copy()  # torch: no read-only
        return torch.from_numpy(raw).view(_torch_dtype(dtype)).reshape(shape)


class CheckpointWriter:
    """Writes a pruned copy of ``input`` into ``output`` by in-place substitution.

    Call :meth:`write` for each pruned tensor (same name, shape and dtype as in
    the input; torch float tensors are cast to the stored dtype), then
    :meth:`finish`. As a context manager it finishes on a clean exit and
    aborts on an exception, which leaves nothing that looks finished: temporary
    files go, shards already completed stay with a journal, and a writer with
    the same non-empty ``run_key`` (a string naming the pruning settings) on the
    same input resumes from them; without a key nothing is ever resumed.

    Nothing outside ``output`` is ever written: it may not be, contain or share a
    file with the input (compared by device and inode); it must be new, empty, or
    a symprune output (it carries a ``.symprune-output`` marker), and one writer
    at a time holds its lock. Files are created new and renamed into place, never
    written through a link. ``overwrite`` replaces a finished output by staging the
    new one beside it and swapping it in when finished, so a failed or killed run
    leaves the old one whole (a rerun resumes the staged shards); an interrupted
    run of other settings is cleared when this run first writes.
    """

    def __init__(
        self,
        input: str | Path,
        output: str | Path,
        *,
        overwrite: bool = False,
        run_key: str = "",
    ):
        self.input = Path(input)
        self.output = Path(output)
        # The path as given: Path("") would turn an empty one into ".".
        self._core = _core.CheckpointWriter(str(self.input), os.fspath(output), overwrite, run_key)
        self._reader = CheckpointReader(self.input)
        self._finished = False

    def is_resumed(self, name: str) -> bool:
        """Whether ``name``'s shard was completed by an interrupted run (writes are skipped)."""
        return self._core.is_resumed(name)

    def write(self, name: str, tensor: Any) -> None:
        """Writes the pruned ``tensor`` (numpy array or torch tensor) in place of ``name``."""
        if name not in self._reader:
            raise InvalidInputError(f"{name}: not in the input checkpoint {self.input}")
        dtype, shape = self._reader.dtype(name), self._reader.shape(name)
        if _is_torch(tensor):
            import torch

            t = tensor.detach().to("cpu")
            if t.is_floating_point() and dtype in _FLOATS:
                t = t.to(_torch_dtype(dtype))
            expected = _torch_dtype(dtype) if dtype in _NUMPY else torch.uint8
            if t.dtype != expected:
                raise InvalidInputError(
                    f"{name}: a {t.dtype} tensor cannot be written as {dtype} (expected "
                    f"{expected}); cast it first"
                )
            raw, got_shape = t.contiguous().view(torch.uint8).numpy(), tuple(t.shape)
        else:
            arr = np.asarray(tensor)
            expected = np.dtype(_NUMPY.get(dtype, np.uint8))
            if arr.dtype != expected:
                raise InvalidInputError(
                    f"{name}: a {arr.dtype} array cannot be written as {dtype} (expected "
                    f"{expected}{', the raw bits' if dtype == 'BF16' else ''}); cast it first"
                )
            raw, got_shape = np.ascontiguousarray(arr).view(np.uint8), arr.shape
        if got_shape != shape:
            raise InvalidInputError(
                f"{name}: shape {got_shape} differs from the checkpoint's {shape}; "
                "pruning must not change shapes"
            )
        self._core.write_tensor(name, dtype, raw.reshape(-1))

    def finish(self, run: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Completes the output; ``run`` holds the run's fields for ``sparsity.json``
        (:meth:`symprune.spec.PruneSpec.describe`), to which the achieved sparsity of
        every written tensor and the symprune version are added. Returns what was
        written."""
        done = self._core.finish(dict(run or {}))
        self._finished = True
        return done

    def abort(self) -> None:
        """Stops without finishing (see the class documentation)."""
        self._core.abort()

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None and not self._finished:
            try:
                self.finish()
            except BaseException:
                self.abort()
                raise
        elif exc_type is not None:
            self.abort()


def check_output_file(path: str | Path, model: str | Path) -> None:
    """Fails unless the file ``path`` may be written next to the checkpoint ``model``:
    it is none of the checkpoint's files (compared by device and inode, so neither a
    hard link nor a link to one) and not inside its directory."""
    _core.check_output_file(os.fspath(path), os.fspath(model))


def write_output_file(path: str | Path, data: bytes, model: str | Path) -> None:
    """Checks ``path`` as :func:`check_output_file` does, then replaces it with ``data``
    through a new temporary file (never writing through a link), fsynced and renamed."""
    _core.write_output_file(os.fspath(path), data, os.fspath(model))


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The ``sparsity.json`` of a pruned checkpoint directory."""
    return json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8"))


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


def _bar(
    progress: bool | Callable[[TensorReport], None],
) -> Callable[[str, dict[str, Any]], None]:
    """The Rust progress callback: a tqdm bar (``True``), a user callback, or nothing."""
    bar: Any = None

    def on_event(kind: str, data: dict[str, Any]) -> None:
        nonlocal bar
        if kind == "start":
            if progress is True:
                from tqdm import tqdm

                bar = tqdm(total=data["tensors"], unit="tensor", desc="prune", leave=False)
            return
        report = TensorReport(**{**data, "shape": tuple(data["shape"])})
        if bar is not None:
            bar.set_postfix_str(report.name, refresh=False)
            bar.update(1)
            if bar.n == bar.total:
                bar.close()
        elif callable(progress):
            progress(report)

    return on_event


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
    ``targets``, ``ignore``; see :class:`~symprune.spec.PruneSpec`) must be a score
    method without refinement. ``magnitude``, ``symmetric`` and ``ria``/``lp-ria``/
    ``stochria`` with ``a=0`` need no data; the others read ``stats``, a safetensors
    file with F32 ``X.in_sq`` / ``X.out_sq`` per weight ``X.weight``. By default the
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
        progress=_bar(progress),
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


__all__ = [
    "MANIFEST",
    "CheckpointReader",
    "CheckpointWriter",
    "Finalized",
    "Inspection",
    "PruneReport",
    "TensorReport",
    "TensorSparsity",
    "check_output_file",
    "finalize",
    "inspect",
    "prune_checkpoint",
    "read_manifest",
    "write_output_file",
]
