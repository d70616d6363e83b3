"""SparseGPT (methods.md §6): OBS pruning with lazy batched weight updates.

Float32 on the weight's device (the GPU when there is one). Unstructured
selection is per block of ``blocksize`` columns, as in the reference: the
``floor(s · rows · block)`` smallest ``w² / [H⁻¹]_jj²`` of the block (exact
count, ties by row-major index); N:M picks per group at every ``i % M == 0``
on the already-updated weights. The weight is updated in place.

The damped inverse Hessian's Cholesky factor is computed by torch (LAPACK or
cuSOLVER); the column loop runs in Rust on the CPU (rows in parallel, the GIL
released) and as torch operations on a GPU.
"""

from __future__ import annotations

import numpy as np
import torch

from symprune import _core
from symprune.errors import InvalidInputError
from symprune.methods import register
from symprune.spec import PruneSpec


def sparsegpt(
    weight: torch.Tensor,
    stats: dict[str, np.ndarray],
    hessian: torch.Tensor,
    spec: PruneSpec,
    tensor: str,
) -> np.ndarray:
    params = spec.effective_params
    blocksize, percdamp = int(params["blocksize"]), float(params["percdamp"])
    n, m = spec.nm or (0, 0)
    if n and weight.shape[1] % m:
        raise InvalidInputError(
            f"{tensor}: {weight.shape[1]} input columns are not a multiple "
            f"of M = {m}; use another pattern or exclude this tensor"
        )
    w, hinv = inverse_factor(weight, hessian, percdamp, tensor)
    mask = column_loop(w, hinv, blocksize, spec, tensor)
    weight.copy_(w.to(weight.dtype))
    return mask


def inverse_factor(
    weight: torch.Tensor, hessian: torch.Tensor, percdamp: float, tensor: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 copy of ``weight`` to prune (dead input columns zeroed) and the upper
    Cholesky factor of the damped inverse Hessian, on the weight's device."""
    w = weight.detach().float().clone()
    h = hessian.to(w.device, torch.float32).clone()
    for what, values in (("weight", w), ("Hessian of its inputs", h)):
        if not bool(torch.isfinite(values).all()):
            raise InvalidInputError(
                f"{tensor}: its {what} holds NaN or Inf; check the checkpoint and the "
                "calibration activations (a model overflowing in its dtype)"
            )
    cols = w.shape[1]
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    diag = torch.arange(cols, device=w.device)
    h[diag, diag] += percdamp * torch.mean(torch.diag(h))
    try:
        hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    except torch.linalg.LinAlgError as failed:
        raise InvalidInputError(
            f"{tensor}: the Hessian of its inputs is not positive definite even with "
            f"percdamp {percdamp}; raise percdamp (e.g. --param percdamp=0.1) or calibrate "
            "on more windows"
        ) from failed
    return w, hinv


def column_loop(
    w: torch.Tensor, hinv: torch.Tensor, blocksize: int, spec: PruneSpec, tensor: str
) -> np.ndarray:
    """Prunes the float32 ``w`` in place with the factor ``hinv``: in Rust on the CPU,
    as torch operations on a GPU; returns the mask (true = pruned)."""
    if w.device.type != "cpu":
        return torch_column_loop(w, hinv, blocksize, spec).cpu().numpy()
    factor = hinv.contiguous().numpy()
    sparsity = spec.request.sparsity
    return _core.sparsegpt(w.numpy(), factor, blocksize, spec.pattern, sparsity, tensor)


def torch_column_loop(
    w: torch.Tensor, hinv: torch.Tensor, blocksize: int, spec: PruneSpec
) -> torch.Tensor:
    """The column loop as torch operations (the GPU path): prunes the float32 ``w``
    in place with the upper factor ``hinv``; returns the mask (true = pruned)."""
    rows, cols = w.shape
    n, m = spec.nm or (0, 0)
    mask = torch.zeros_like(w, dtype=torch.bool)

    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        w1 = w[:, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        d1 = torch.diag(hinv1)
        mask1 = torch.zeros_like(w1, dtype=torch.bool)
        if not n:
            k = int(spec.request.sparsity * rows * count)
            order = torch.argsort((w1**2 / d1.reshape(1, -1) ** 2).flatten(), stable=True)
            mask1.view(-1)[order[:k]] = True
        for i in range(count):
            if n and i % m == 0:
                tmp = w1[:, i : i + m] ** 2 / d1[i : i + m].reshape(1, -1) ** 2
                mask1.scatter_(1, i + torch.argsort(tmp, dim=1, stable=True)[:, :n], True)
            col = w1[:, i]
            q = col.clone()
            q[mask1[:, i]] = 0
            q1[:, i] = q
            e = (col - q) / hinv1[i, i]
            w1[:, i:] -= e.unsqueeze(1).matmul(hinv1[i, i:].unsqueeze(0))
            err1[:, i] = e
        w[:, i1:i2] = q1
        w[:, i2:] -= err1.matmul(hinv[i1:i2, i2:])
        mask[:, i1:i2] = mask1

    return mask


register("sparsegpt", sparsegpt)
