"""The Python API, shaped like llm-compressor's ``oneshot``: one call prunes a model.

``symprune.prune(model=..., output=..., method=..., sparsity=...)`` picks the
cheapest faithful path:

- data-free methods (magnitude, symmetric) and pruning from a stored
  statistics file run shard → shard entirely in Rust, never loading the model;
- data-aware methods calibrate and prune layer by layer (methods.md §8),
  streaming the layers from the shards, on the GPU when there is one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from symprune import checkpoint, data, methods
from symprune.errors import InvalidInputError
from symprune.evaluate import perplexity
from symprune.pipeline import (
    Calibration,
    Report,
    TensorRecord,
    calibrate_streamed,
    default_device,
    prune_streamed,
)

# Parameters the Rust checkpoint engine understands.
_ENGINE_PARAMS = ("a", "p", "beta", "seed", "activation", "lam")


def default_calibration(device: str, nsamples: int | None, seqlen: int | None) -> tuple[int, int]:
    """The published 128 × 2048 on a GPU; a CPU-sized 16 × 512 otherwise."""
    on_gpu = device.startswith("cuda")
    return nsamples or (128 if on_gpu else 16), seqlen or (2048 if on_gpu else 512)


def default_evaluation(
    device: str, seqlen: int, eval_seqlen: int | None, eval_windows: int | None
) -> tuple[int, int | None]:
    """Perplexity window and count: ``min(seqlen, 512)``; all windows on a GPU, 32 on the CPU."""
    windows = eval_windows if eval_windows is not None else (None if device != "cpu" else 32)
    return eval_seqlen or min(seqlen, 512), windows


def default_output(method: str, sparsity: float, pattern: str | None, refine: str | None) -> Path:
    target = pattern.replace(":", "of") if pattern else f"{round(sparsity * 100)}pct"
    return (
        Path("pruned") / f"{data.DEFAULT_MODEL}-{method}{'-' + refine if refine else ''}-{target}"
    )


def prune(
    model: str | Path | None = None,
    output: str | Path | None = None,
    *,
    method: str = "wanda",
    sparsity: float = 0.5,
    pattern: str | None = None,
    group: str = "per-row",
    refine: str | None = None,
    refine_params: dict[str, Any] | None = None,
    calibration: str = "builtin",
    nsamples: int | None = None,
    seqlen: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    stats: str | Path | None = None,
    device: str | None = None,
    offload_activations: bool = False,
    targets: str | None = None,
    ignore: str | None = None,
    overwrite: bool = False,
    evaluate: bool = False,
    eval_seqlen: int | None = None,
    eval_windows: int | None = None,
    progress: bool = True,
    **params: Any,
) -> Report:
    """Prunes ``model`` (a HF checkpoint folder; None = built-in SmolLM2-135M) into ``output``.

    ``method``: magnitude, wanda, ria, lp-ria, stochria, symmetric, symwanda,
    owanda or sparsegpt; its parameters go in ``params`` (``a``, ``p``, ``beta``,
    ``seed``, ``activation``, ``lam``, ``blocksize``, ``percdamp``). Target:
    ``sparsity`` with ``group`` (per-row, per-matrix, adaptive) or ``pattern="N:M"``.
    ``refine``: dsnot or r2dsnot after the initial mask (``refine_params`` for
    their switches). ``calibration``: "builtin" (Wikipedia), a .txt or a .jsonl
    file; ``nsamples`` windows of ``seqlen`` tokens drawn with ``seed``.
    ``evaluate`` adds dense and pruned perplexity on the built-in test split.
    """
    spec = methods.get(method)
    device = device or default_device()
    if output is None:
        if model is not None:
            raise InvalidInputError("output: required when a model folder is given")
        output = default_output(method, sparsity, pattern, refine)
    model_dir = Path(model) if model is not None else data.builtin_model()
    n, s = default_calibration(device, nsamples, seqlen)
    calib = Calibration(source=calibration, nsamples=n, seqlen=s, seed=seed, batch_size=batch_size)

    if refine is None and (stats is not None or spec.data_free) and not spec.updates_weights:
        report = _prune_in_rust(
            model_dir,
            output,
            spec.name,
            sparsity,
            pattern,
            group,
            stats,
            targets,
            ignore,
            overwrite,
            progress,
            params,
        )
    else:
        if stats is not None:
            raise InvalidInputError(
                "stats: a statistics file serves the data-free engine only; "
                f"{method}{' with --refine' if refine else ''} calibrates layer by layer"
            )
        report = prune_streamed(
            model_dir,
            output,
            method=method,
            sparsity=sparsity,
            pattern=pattern,
            group=group,
            params=params,
            refine=refine,
            refine_params=refine_params,
            calibration=calib,
            device=device,
            offload_activations=offload_activations,
            targets=targets,
            ignore=ignore,
            overwrite=overwrite,
            progress=progress,
        )
    if evaluate:
        length, windows = default_evaluation(device, calib.seqlen, eval_seqlen, eval_windows)
        for name, folder in (("dense", model_dir), ("pruned", Path(output))):
            report.perplexity[name] = perplexity(
                folder, seqlen=length, max_windows=windows, device=device
            )
    return report


def _prune_in_rust(
    model_dir,
    output,
    method,
    sparsity,
    pattern,
    group,
    stats,
    targets,
    ignore,
    overwrite,
    progress,
    params,
) -> Report:
    unknown = set(params) - set(_ENGINE_PARAMS)
    if unknown:
        raise InvalidInputError(f"{method}: unknown parameters {sorted(unknown)}")
    rust = checkpoint.prune_checkpoint(
        model_dir,
        output,
        method=method,
        sparsity=sparsity,
        pattern=pattern,
        group=group,
        stats=stats,
        targets=targets,
        ignore=ignore,
        overwrite=overwrite,
        progress=progress,
        **params,
    )
    return Report(
        model=str(model_dir),
        output=str(output),
        method=method,
        refine=None,
        settings={
            "sparsity": sparsity,
            "pattern": pattern,
            "group": group,
            "stats": str(stats) if stats else None,
            **params,
        },
        device="cpu (Rust engine)",
        tensors=[TensorRecord(t.name, t.shape, t.sparsity) for t in rust.tensors if t.numel],
        seconds=rust.seconds,
        peak_rss_mb=rust.peak_rss_mb,
    )


def calibrate(
    model: str | Path | None = None,
    output: str | Path = "stats.safetensors",
    *,
    calibration: str = "builtin",
    nsamples: int | None = None,
    seqlen: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    device: str | None = None,
    targets: str | None = None,
    ignore: str | None = None,
    progress: bool = True,
) -> Path:
    """Stores the dense model's activation statistics for pruning later (``stats=``)."""
    device = device or default_device()
    n, s = default_calibration(device, nsamples, seqlen)
    calib = Calibration(source=calibration, nsamples=n, seqlen=s, seed=seed, batch_size=batch_size)
    return calibrate_streamed(
        model,
        output,
        calibration=calib,
        device=device,
        targets=targets,
        ignore=ignore,
        progress=progress,
    )


__all__ = ["calibrate", "perplexity", "prune"]
