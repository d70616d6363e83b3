"""The compressed-tensors sparse formats in plain torch + numpy, written from the
package's compressors (compressed_tensors 0.14.0.1, ``sparse_bitmask.py`` and
``sparse_24_bitmask.py``; see docs/formats.md): what a checkpoint compressed by
the package holds, to compare symprune's output with where the package is absent."""

from __future__ import annotations

import numpy as np
import torch


def pack(mask: torch.Tensor) -> torch.Tensor:
    """``pack_bitmasks``: one bit per element along the last axis, little bit order."""
    return torch.from_numpy(np.packbits(mask.numpy(), axis=-1, bitorder="little"))


def bitmask(module: str, w: torch.Tensor) -> dict[str, torch.Tensor]:
    """``BitmaskCompressor.compress_weight``: nonzeros, bitmask, row offsets, shape."""
    mask = w != 0
    counts = mask.sum(dim=-1)
    return {
        f"{module}.shape": torch.tensor(list(w.shape)),
        f"{module}.compressed": w[mask],
        f"{module}.bitmask": pack(mask),
        f"{module}.row_offsets": torch.cumsum(counts, 0) - counts,
    }


def sparse24(module: str, w: torch.Tensor) -> dict[str, torch.Tensor]:
    """``Sparse24BitMaskCompressor.compress_weight``: the two largest magnitudes of
    every group of four (``torch.topk``, whose tie order picks the zeros of sparser
    groups), as ``[rows, cols / 2]`` values and a bitmask."""
    groups = w.view(-1, 4)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(1, groups.abs().topk(2, dim=1).indices, True)
    mask = mask.view(w.shape)
    rows, cols = w.shape
    return {
        f"{module}.shape": torch.tensor(list(w.shape)).reshape(-1, 1),
        f"{module}.compressed": w[mask].reshape(rows, cols // 2),
        f"{module}.bitmask": pack(mask),
    }


def compress(
    tensors: dict[str, torch.Tensor], fmt: str, targets: set[str]
) -> dict[str, torch.Tensor]:
    """A shard's tensors as the package compresses them: ``X.weight`` of every module
    ``X`` in ``targets`` replaced by its compressed tensors, the rest as they are."""
    one = bitmask if fmt == "sparse-bitmask" else sparse24
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        module = name.removesuffix(".weight")
        if name.endswith(".weight") and module in targets:
            out.update(one(module, t))
        else:
            out[name] = t
    return out
