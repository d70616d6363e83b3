"""What a pruning run reports, layer by layer and tensor by tensor (torch-free)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class LayerRecord:
    index: int
    seconds: float
    sparsity: float
    recon_error: float
    peak_rss_mb: float
    peak_gpu_mb: float | None
    # The layer's summed layer-wise loss before and after refinement (see TensorRecord).
    loss_before: float | None = None
    loss_after: float | None = None
    # Resident memory at the layer's end (util.resident_mb): rss, anon, file MiB.
    resident_mb: dict[str, float] = field(default_factory=dict)


@dataclass
class TensorRecord:
    name: str
    shape: tuple[int, ...]
    sparsity: float
    # The layer-wise loss ‖X(W − W̃)‖² before and after refinement (methods.md §9),
    # where the refiner computes it (swaps; r2dsnot with decision=exact).
    loss_before: float | None = None
    loss_after: float | None = None


@dataclass
class Report:
    """What a pruning run did, layer by layer and tensor by tensor."""

    model: str
    output: str | None
    method: str
    refine: str | None
    settings: dict[str, Any]  # the run as sparsity.json describes it
    device: str
    layers: list[LayerRecord] = field(default_factory=list)
    tensors: list[TensorRecord] = field(default_factory=list)
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    bytes_written: int = 0
    masks: dict[str, np.ndarray] | None = None
    perplexity: dict[str, float] = field(default_factory=dict)
    # The windows behind ``perplexity``: {"seqlen": L, "windows": K or None (all)}.
    perplexity_windows: dict[str, int | None] = field(default_factory=dict)
    # A compressed save format: {"format", "dense_tensor_bytes", "stored_tensor_bytes",
    # "left_dense"}; empty for a dense output.
    compression: dict[str, Any] = field(default_factory=dict)
    # Resident memory (util.resident_mb) once the model skeleton, the tokenized
    # windows and the first activations are in place, before the first layer.
    resident_after_setup_mb: dict[str, float] = field(default_factory=dict)

    @property
    def sparsity(self) -> float:
        total = sum(int(np.prod(t.shape)) for t in self.tensors)
        return sum(t.sparsity * np.prod(t.shape) for t in self.tensors) / max(total, 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("masks")
        d["overall_sparsity"] = self.sparsity
        return d

    def memory_breakdown(self) -> str | None:
        """Where the resident memory was: after setup, and at the end of the
        layer that held the most (anonymous: tensors and heap; file: mapped
        shards and libraries); None when the run streamed no layers."""
        if not (self.resident_after_setup_mb and self.layers):
            return None
        setup = self.resident_after_setup_mb
        top = max(self.layers, key=lambda r: r.resident_mb.get("rss", 0.0))
        at = top.resident_mb

        def part(m: dict[str, float]) -> str:
            return f"{m.get('anon', 0):.0f} anon + {m.get('file', 0):.0f} file MiB"

        return f"after setup {part(setup)}; most at layer {top.index}: {part(at)}"

    def refinement(self) -> str | None:
        """The summed layer-wise loss before and after refinement, where the refiner
        computed it (methods.md §9); ``None`` otherwise."""
        losses = [(t.loss_before, t.loss_after) for t in self.tensors if t.loss_before is not None]
        if not losses:
            return None
        before = sum(b for b, _ in losses)
        after = sum(a or 0.0 for _, a in losses)
        if before == 0:
            # SparseGPT's updated weights are exact zeros where it pruned: δ = 0.
            return "0 before refinement on every tensor: nothing to refine (the mask was kept)"
        return f"{before:.4g} -> {after:.4g} ({(after / before - 1) * 100:+.1f}%)"

    def summary(self) -> str:
        """A small table of the totals (and perplexity when evaluated)."""
        numel = sum(int(np.prod(t.shape)) for t in self.tensors)
        method = self.method + (f" + {self.refine}" if self.refine else "")
        pattern = self.settings["pattern"]
        target = pattern if ":" in pattern else f"{self.settings['sparsity']:g} {pattern}"
        rows = [
            ("model", self.model),
            ("method", f"{method} ({target})"),
            ("tensors pruned", str(len(self.tensors))),
            ("parameters", f"{numel:,}"),
            ("achieved sparsity", f"{self.sparsity:.4f}"),
            ("bytes written", f"{self.bytes_written:,} ({self.bytes_written / 2**30:.2f} GiB)"),
            ("seconds", f"{self.seconds:.2f} on {self.device}"),
            ("peak RSS", f"{self.peak_rss_mb:.0f} MiB"),
        ]
        memory = self.memory_breakdown()
        if memory is not None:
            rows.append(("memory", memory))
        refined = self.refinement()
        if refined is not None:
            rows.append(("layer-wise loss", refined))
        rows.append(("output", str(self.output)))
        if self.compression:
            c = self.compression
            ratio = c["stored_tensor_bytes"] / max(c["dense_tensor_bytes"], 1)
            rows.append(
                (
                    "stored as",
                    f"{c['format']}: tensor bytes {c['dense_tensor_bytes']:,} -> "
                    f"{c['stored_tensor_bytes']:,} ({ratio:.3f}x)",
                )
            )
            rows += [("left dense", line) for line in c["left_dense"]]
        elif pattern == "2:4":
            rows.append(
                ("tip", "--save-format sparse-24-bitmask stores 2:4 for vLLM's sparse kernels")
            )
        if self.perplexity:
            count = self.perplexity_windows.get("windows")
            windows = f"{'all' if count is None else f'first {count}'} test windows of "
            windows += f"{self.perplexity_windows.get('seqlen')} tokens"
            rows += [
                (f"perplexity {k}", f"{v:.3f} ({windows})") for k, v in self.perplexity.items()
            ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


__all__ = ["LayerRecord", "Report", "TensorRecord"]
