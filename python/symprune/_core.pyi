"""Type stubs of the Rust extension module (see symprune.ops for the documented API)."""

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
