"""Type stubs of the Rust extension module (see symprune.ops for the documented API)."""

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
    alpha: float = 0.5,
    gamma: float = 0.0,
    p: float = 1.0,
    same_sign: bool = True,
    on_reject: str = "stop",
    tensor: str = "",
) -> tuple[npt.NDArray[np.bool_], dict[str, Any]]: ...
