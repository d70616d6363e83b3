"""Type stubs of the Rust extension module (see symprune.ops for the documented API)."""

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

__version__: str

def score(
    weight: npt.NDArray[np.float32] | npt.NDArray[np.uint16],
    dtype: str,
    method: str,
    in_sq: npt.NDArray[np.float32] | None = None,
    out_sq: npt.NDArray[np.float32] | None = None,
    *,
    a: float = 0.5,
    p: float = 1.0,
    beta: float = 0.1,
    seed: int = 0,
    activation: bool = True,
    lam: float = 1.0,
    tensor: str = "",
) -> npt.NDArray[np.float32]: ...
def mask_of(
    scores: npt.NDArray[np.float32] | npt.NDArray[np.uint16],
    dtype: str,
    group: str,
    sparsity: float = 0.0,
    n: int = 0,
    m: int = 0,
    tensor: str = "",
) -> npt.NDArray[np.bool_]: ...
def apply_mask(
    weight: npt.NDArray[np.float32] | npt.NDArray[np.uint16],
    dtype: str,
    mask: npt.NDArray[np.bool_],
) -> int: ...
def dsnot(
    weight: npt.NDArray[np.float32] | npt.NDArray[np.uint16],
    dtype: str,
    prune_mask: npt.NDArray[np.bool_],
    in_sq: npt.NDArray[np.float32],
    act_sum: npt.NDArray[np.float32],
    act_var: npt.NDArray[np.float32],
    *,
    n: int = 0,
    m: int = 0,
    initial_scores: npt.NDArray[np.float32] | None = None,
    max_cycles: int = 50,
    threshold: float = 0.1,
    var_power: float = 1.0,
    same_sign: bool | None = None,
    tensor: str = "",
) -> tuple[npt.NDArray[np.bool_], dict[str, Any]]: ...
def r2dsnot(
    weight: npt.NDArray[np.float32] | npt.NDArray[np.uint16],
    dtype: str,
    prune_mask: npt.NDArray[np.bool_],
    in_sq: npt.NDArray[np.float32],
    act_sum: npt.NDArray[np.float32],
    act_var: npt.NDArray[np.float32],
    *,
    n: int = 0,
    m: int = 0,
    max_cycles: int = 50,
    threshold: float = 0.1,
    var_power: float = 1.0,
    ri_phase: str = "prune",
    alpha: float = 1.0,
    gamma: float = 0.0,
    p: float = 1.0,
    same_sign: bool = True,
    on_reject: str = "stop",
    tensor: str = "",
) -> tuple[npt.NDArray[np.bool_], dict[str, Any]]: ...

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
    def finish(self, manifest: str) -> str: ...
    def abort(self) -> None: ...

def prune_checkpoint(
    input: str,
    output: str,
    method: str,
    *,
    group: str = "per-row",
    sparsity: float = 0.5,
    n: int = 0,
    m: int = 0,
    a: float = 0.5,
    p: float = 1.0,
    beta: float = 0.1,
    seed: int = 0,
    activation: bool = True,
    lam: float = 1.0,
    targets: list[str] = ...,
    ignore: list[str] = ...,
    stats: str | None = None,
    overwrite: bool = False,
    progress: Callable[[str, str], None] | None = None,
    rank: int = 0,
    world: int = 1,
) -> str: ...
def finalize(output: str) -> str: ...
def inspect(
    path: str, n: int = 0, m: int = 0, targets: list[str] = ..., ignore: list[str] = ...
) -> str: ...
def check_output_file(path: str, input: str) -> None: ...
def write_output_file(path: str, data: bytes, input: str) -> None: ...
