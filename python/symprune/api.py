"""The Python API, shaped like llm-compressor's ``oneshot``: one call prunes a model.

``symprune.prune(model=..., output=..., method=..., sparsity=...)`` picks the
cheapest faithful path:

- data-free methods (magnitude, symmetric) and pruning from a stored
  statistics file run shard → shard entirely in Rust, never loading the model;
- data-aware methods calibrate and prune layer by layer (methods.md §8),
  streaming the layers from the shards, on the GPU when there is one.

Under ``torchrun`` both scale out (see :mod:`symprune.distributed`): data-aware
methods calibrate data-parallel, the Rust engine splits the shards.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

from symprune import checkpoint, data, distributed, methods
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
    rank: int | None = None,
    world_size: int | None = None,
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

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the ranks cooperate through
    torch.distributed: data-parallel calibration, or the Rust engine's shards
    split among them; rank 0 finishes the output (and alone evaluates). Without
    torch.distributed, ``rank`` / ``world_size`` give this process its part of
    the shards (Rust engine only); :func:`symprune.checkpoint.finalize` then
    finishes the output.
    """
    spec = methods.get(method)
    device = device or default_device()
    in_rust = refine is None and (stats is not None or spec.data_free) and not spec.updates_weights
    parts = _check_parts(rank, world_size, in_rust, evaluate)
    if output is None:
        if model is not None:
            raise InvalidInputError("output: required when a model folder is given")
        output = default_output(method, sparsity, pattern, refine)
    model_dir = Path(model) if model is not None else data.builtin_model()
    n, s = default_calibration(device, nsamples, seqlen)
    calib = Calibration(source=calibration, nsamples=n, seqlen=s, seed=seed, batch_size=batch_size)

    with nullcontext() if parts else distributed.session(device) as ranks:
        if ranks is not None:
            device = ranks.device
        leader = ranks is None or ranks.leader
        if in_rust:
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
                progress and leader,
                params,
                parts or ((ranks.rank, ranks.world) if ranks else (0, 1)),
                ranks,
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
                progress=progress and leader,
                ranks=ranks,
            )
    if not leader:  # rank 0 evaluates the output it finished
        return report
    if evaluate:
        length, windows = default_evaluation(device, calib.seqlen, eval_seqlen, eval_windows)
        for name, folder in (("dense", model_dir), ("pruned", Path(output))):
            report.perplexity[name] = perplexity(
                folder, seqlen=length, max_windows=windows, device=device
            )
    return report


def _check_parts(
    rank: int | None, world_size: int | None, in_rust: bool, evaluate: bool
) -> tuple[int, int] | None:
    """``(rank, world_size)`` when this process is given its part of the shards."""
    if rank is None and world_size is None:
        return None
    if rank is None or world_size is None:
        raise InvalidInputError("rank and world_size: give both (or neither)")
    if not in_rust:
        raise InvalidInputError(
            "rank/world_size split the shards of the Rust engine (data-free methods, --stats); "
            "data-aware methods calibrate data-parallel under torchrun instead"
        )
    if evaluate:
        raise InvalidInputError(
            "evaluate: a part is not a checkpoint; run `symprune finalize OUT_DIR` once every "
            "rank is done, then evaluate it"
        )
    return rank, world_size


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
    part: tuple[int, int],
    ranks: distributed.Ranks | None,
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
        rank=part[0],
        world_size=part[1],
        **params,
    )
    tensors = [TensorRecord(t.name, t.shape, t.sparsity) for t in rust.tensors if t.numel]
    if ranks is not None:
        done = distributed.leader_finishes(ranks, lambda: checkpoint.finalize(output))
        if done is not None:  # rank 0 reports the whole checkpoint
            shape = checkpoint.CheckpointReader(model_dir).shape
            tensors = [TensorRecord(n, shape(n), s) for n, s in done.tensors.items()]
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
        tensors=tensors,
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
    """Stores the dense model's activation statistics for pruning later (``stats=``).

    Under ``torchrun`` the ranks calibrate data-parallel and rank 0 writes the file.
    """
    device = device or default_device()
    n, s = default_calibration(device, nsamples, seqlen)
    calib = Calibration(source=calibration, nsamples=n, seqlen=s, seed=seed, batch_size=batch_size)
    with distributed.session(device) as ranks:
        return calibrate_streamed(
            model,
            output,
            calibration=calib,
            device=ranks.device if ranks else device,
            targets=targets,
            ignore=ignore,
            progress=progress and (ranks is None or ranks.leader),
            ranks=ranks,
        )


__all__ = ["calibrate", "perplexity", "prune"]
