"""Reading and writing safetensors checkpoints, one tensor at a time.

A checkpoint is a Hugging Face directory with a single ``model.safetensors``
or shards listed by ``model.safetensors.index.json``. :class:`CheckpointReader`
hands out tensors as zero-copy numpy or torch views of the memory map;
:class:`CheckpointWriter` writes a pruned copy by in-place substitution (same
shards, headers and offsets; untouched tensors and the non-weight files are
copied byte for byte), resumable after an interruption, and finished by
``sparsity.json``, the manifest of the run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from symprune import _core
from symprune.errors import InvalidInputError

MANIFEST: str = _core.MANIFEST_FILE

Item = TypeVar("Item")


def rust_progress(
    progress: bool | Callable[[Item], None],
    desc: str,
    convert: Callable[[dict[str, Any]], Item],
) -> Callable[[str, dict[str, Any]], None]:
    """The Rust engine's progress callback ("start", then one event per tensor): a tqdm
    bar (``progress=True``), the user's callback on each converted event, or nothing."""
    bar: Any = None

    def on_event(kind: str, data: dict[str, Any]) -> None:
        nonlocal bar
        if kind == "start":
            if progress is True:
                from tqdm import tqdm

                bar = tqdm(total=data["tensors"], unit="tensor", desc=desc, leave=False)
            return
        item = convert(data)
        if bar is not None:
            bar.set_postfix_str(data["name"], refresh=False)
            bar.update(1)
            if bar.n == bar.total:
                bar.close()
        elif callable(progress):
            progress(item)

    return on_event


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
        # The copy is what the caller keeps; the mapped pages would only add to RSS.
        self._core.release(name)
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
