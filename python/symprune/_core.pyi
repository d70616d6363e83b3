"""Type stubs of the Rust extension module (see symprune.ops for the documented API)."""

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

__version__: str

Matrix = npt.NDArray[np.float32] | npt.NDArray[np.uint16]
Params = dict[str, bool | int | float | str] | None

MANIFEST_FILE: str

def vocabulary() -> dict[str, Any]: ...

class Request:
    def __init__(
        self,
        method: str | None = None,
        params: Params = None,
        pattern: str | None = None,
        sparsity: float | None = None,
        refine: str | None = None,
        refine_params: Params = None,
    ) -> None: ...
    def describe(self) -> dict[str, Any]: ...
    def runs_shard_by_shard(self, with_stats_file: bool) -> bool: ...
    @property
    def method(self) -> str: ...
    @property
    def refine(self) -> str | None: ...
    @property
    def pattern(self) -> str: ...
    @property
    def nm(self) -> tuple[int, int] | None: ...
    @property
    def sparsity(self) -> float: ...
    @property
    def needs_hessian(self) -> bool: ...
    @property
    def updates_weights(self) -> bool: ...
    @property
    def data_free(self) -> bool: ...

class Selection:
    def __init__(self, targets: list[str] = ..., ignore: list[str] = ...) -> None: ...
    def selects(self, name: str, shape: list[int], dtype: str) -> bool: ...
    def describe(self) -> dict[str, list[str]]: ...

def score(
    weight: Matrix,
    dtype: str,
    method: str,
    params: Params = None,
    in_sq: npt.NDArray[np.float32] | None = None,
    out_sq: npt.NDArray[np.float32] | None = None,
    tensor: str = "",
) -> npt.NDArray[np.float32]: ...
def mask_of(
    scores: Matrix,
    dtype: str,
    pattern: str | None = None,
    sparsity: float | None = None,
    tensor: str = "",
) -> npt.NDArray[np.bool_]: ...
def apply_mask(weight: Matrix, dtype: str, mask: npt.NDArray[np.bool_]) -> int: ...

class RefineReport:
    @property
    def swaps(self) -> int: ...
    @property
    def swaps_per_row(self) -> npt.NDArray[np.uint32]: ...
    @property
    def rows_stopped(self) -> int: ...
    @property
    def cycles(self) -> int: ...

def refine(
    refine: str,
    weight: Matrix,
    dtype: str,
    prune_mask: npt.NDArray[np.bool_],
    in_sq: npt.NDArray[np.float32],
    act_sum: npt.NDArray[np.float32],
    act_var: npt.NDArray[np.float32],
    *,
    params: Params = None,
    pattern: str | None = None,
    initial_scores: npt.NDArray[np.float32] | None = None,
    tensor: str = "",
) -> tuple[npt.NDArray[np.bool_], RefineReport]: ...

class CheckpointReader:
    def __init__(self, path: str) -> None: ...
    def names(self) -> list[str]: ...
    def info(self, name: str) -> tuple[str, list[int]]: ...
    def shards(self) -> list[str]: ...
    def metadata(self) -> dict[str, str]: ...
    def tensor_bytes(self, name: str) -> npt.NDArray[np.uint8]: ...

class CheckpointWriter:
    def __init__(
        self, input: str, output: str, overwrite: bool = False, run_key: str = ""
    ) -> None: ...
    def is_resumed(self, name: str) -> bool: ...
    def write_tensor(self, name: str, dtype: str, data: npt.NDArray[np.uint8]) -> None: ...
    def finish(self, run: dict[str, Any]) -> dict[str, Any]: ...
    def abort(self) -> None: ...

def prune_checkpoint(
    input: str,
    output: str,
    request: Request,
    selection: Selection,
    *,
    stats: str | None = None,
    overwrite: bool = False,
    progress: Callable[[str, dict[str, Any]], None] | None = None,
    rank: int = 0,
    world: int = 1,
) -> dict[str, Any]: ...
def finalize(output: str) -> dict[str, Any]: ...
def inspect(path: str, selection: Selection, pattern: str | None = None) -> dict[str, Any]: ...
