"""Activation statistics of linear layers (methods.md §2), gathered by forward hooks.

Every statistic is kept as an additive pair — a float64 sum and a count — so
that data-parallel workers can all-reduce them and get the single-process
result up to float summation order. :meth:`LinearStats.finalize` turns the
sums into the float32 vectors the kernels take:

- ``in_sq[j]  = (1/N) Σ_seq Σ_tok x_j²``
- ``sum[j]    = (1/N) Σ_seq Σ_tok x_j``
- ``var[j]    = Σ_seq t_seq · popvar_seq(x_j) / Σ_seq t_seq`` (each sequence is a batch)
- ``out_sq[i] = (1/N) Σ_seq Σ_tok y_i²``
- ``hessian   = (2/N) Σ_seq Σ_tok x xᵀ`` (only when asked for; SparseGPT)

with ``N`` the number of sequences. Treating every sequence as its own batch
makes ``var`` independent of how sequences are grouped into forward passes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

STAT_NAMES = ("in_sq", "sum", "var", "out_sq")

# Tokens per float64 upcast (whole sequences, at least one): bounds its memory.
_CHUNK_TOKENS = 4096


@dataclass
class LinearStats:
    """Additive activation statistics of one linear layer."""

    in_features: int
    out_features: int
    hessian: bool = False
    sequences: int = 0
    tokens: int = 0
    sums: dict[str, torch.Tensor] = field(default_factory=dict)

    def _acc(self, key: str, value: torch.Tensor) -> None:
        if key in self.sums:
            self.sums[key] += value
        else:
            self.sums[key] = value.clone()

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Adds a batch: inputs ``x`` (b, t, in) and outputs ``y`` (b, t, out)."""
        b, t = x.shape[0], x.shape[1]
        group = max(1, _CHUNK_TOKENS // t)  # sequences per float64 upcast
        for s in range(0, b, group):
            xd = x[s : s + group].double()
            yd = y[s : s + group].double()
            var, mean = torch.var_mean(xd, dim=1, unbiased=False)
            self._acc("in_sq", (xd * xd).sum(dim=(0, 1)))
            self._acc("sum", (mean * t).sum(0))
            self._acc("var", (var * t).sum(0))  # Σ_seq t · popvar_seq
            self._acc("out_sq", (yd * yd).sum(dim=(0, 1)))
            if self.hessian:
                xf = x[s : s + group].reshape(-1, x.shape[-1]).float()
                self._acc("hessian", xf.t() @ xf)
        self.sequences += b
        self.tokens += b * t

    def finalize(self) -> dict[str, np.ndarray]:
        """The float32 statistics (plus ``hessian`` as float32 torch on its device)."""
        if self.sequences == 0:
            raise RuntimeError("no calibration data reached this layer")
        n, tok = self.sequences, self.tokens
        out: dict[str, np.ndarray] = {
            "in_sq": (self.sums["in_sq"] / n).float().cpu().numpy(),
            "sum": (self.sums["sum"] / n).float().cpu().numpy(),
            "var": (self.sums["var"] / tok).float().cpu().numpy(),
            "out_sq": (self.sums["out_sq"] / n).float().cpu().numpy(),
        }
        return out

    def hessian_matrix(self) -> torch.Tensor:
        """``(2/N) Σ x xᵀ`` in float32."""
        return self.sums["hessian"] * (2.0 / self.sequences)

    def state(self) -> list[torch.Tensor]:
        """The additive tensors, in a fixed order (for all-reduce)."""
        keys = ["in_sq", "sum", "var", "out_sq"] + (["hessian"] if self.hessian else [])
        return [self.sums[k] for k in keys]


def linear_modules(layer: nn.Module) -> dict[str, nn.Module]:
    """The linear sub-modules of a decoder layer, by relative name.

    ``nn.Linear`` and transformers' ``Conv1D`` (GPT-2 stores its weight as (in, out)).
    """
    found = {}
    for name, module in layer.named_modules():
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            found[name] = module
    return found


def weight_of(module: nn.Module) -> torch.Tensor:
    """A linear module's weight tensor (as stored: GPT-2's Conv1D is (in, out))."""
    weight = module.weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(module).__name__}.weight is not a tensor")
    return weight


def is_transposed(module: nn.Module) -> bool:
    """True when the module stores its weight as (in, out) (transformers' Conv1D)."""
    return type(module).__name__ == "Conv1D"


@contextmanager
def collecting(
    modules: dict[str, nn.Module], seqlen: int, *, hessian: bool = False
) -> Iterator[dict[str, LinearStats]]:
    """Hooks that fill one :class:`LinearStats` per module while the block is active.

    Every calibration sequence has ``seqlen`` tokens (no padding), which restores
    the sequences of layers that flatten their input to (tokens, features) (OPT).
    """
    stats: dict[str, LinearStats] = {}
    handles = []
    for name, module in modules.items():
        rows, cols = weight_of(module).shape
        out_f, in_f = (cols, rows) if is_transposed(module) else (rows, cols)
        stats[name] = LinearStats(in_f, out_f, hessian=hessian)

        def hook(mod, args, output, _s=stats[name]):
            x = args[0].detach().reshape(-1, seqlen, args[0].shape[-1])
            _s.add(x, output.detach().reshape(x.shape[0], seqlen, -1))

        handles.append(module.register_forward_hook(hook))
    try:
        yield stats
    finally:
        for h in handles:
            h.remove()
