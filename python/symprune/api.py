"""The Python API, shaped like llm-compressor's ``oneshot``: one call prunes a model.

``symprune.prune(model=..., output=..., method=..., sparsity=...)`` picks the
cheapest faithful path:

- data-free methods (magnitude, symmetric) and pruning from a stored
  statistics file run shard → shard entirely in Rust, never loading the model;
- data-aware methods calibrate and prune layer by layer (methods.md §8),
  streaming the layers from the shards, on the GPU when there is one.

Under ``torchrun`` both scale out (see :mod:`symprune.calibration.distributed`): data-aware
methods calibrate data-parallel, the Rust engine splits the shards.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from symprune import checkpoint, data
from symprune.errors import InvalidInputError
from symprune.spec import (
    DEFAULT_SAVE_FORMAT,
    SAVE_FORMATS,
    VOCABULARY,
    Calibration,
    PruneSpec,
    check_count,
    evaluation_windows,
    selection_rule,
)
from symprune.util import launched_world

if TYPE_CHECKING:
    from symprune.results import Report


def default_output(
    spec: PruneSpec, model: str = data.DEFAULT_MODEL, save_format: str = DEFAULT_SAVE_FORMAT
) -> Path:
    """``pruned/<built-in model>-<method>[-<refine>]-<target>[-<format>]``, such as
    ``pruned/smollm2-135m-wanda-50pct`` (dense) or
    ``pruned/smollm2-135m-wanda-2of4-sparse-24-bitmask``."""
    target = spec.pattern.replace(":", "of") if spec.nm else f"{round(spec.sparsity * 100)}pct"
    refine = f"-{spec.refine}" if spec.refine else ""
    stored = "" if save_format == DEFAULT_SAVE_FORMAT else f"-{save_format}"
    return Path("pruned") / f"{model}-{spec.method}{refine}-{target}{stored}"


def prune(
    model: str | Path | None = None,
    output: str | Path | None = None,
    *,
    method: str | None = None,
    sparsity: float | None = None,
    pattern: str | None = None,
    params: Mapping[str, Any] | None = None,
    refine: str | None = None,
    refine_params: Mapping[str, Any] | None = None,
    targets: str | Sequence[str] | None = None,
    ignore: str | Sequence[str] | None = None,
    spec: PruneSpec | None = None,
    calibration: str = "builtin",
    nsamples: int | None = None,
    seqlen: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    stats: str | Path | None = None,
    device: str | None = None,
    offload_activations: bool = False,
    overwrite: bool = False,
    save_format: str = DEFAULT_SAVE_FORMAT,
    evaluate: bool = False,
    eval_seqlen: int | None = None,
    eval_windows: int | None = None,
    progress: bool = True,
    rank: int | None = None,
    world_size: int | None = None,
) -> Report:
    """Prunes ``model`` (a HF checkpoint folder; None = built-in SmolLM2-135M) into ``output``.

    What to do is a :class:`~symprune.spec.PruneSpec` — given whole as ``spec``, or
    built from ``method`` (default wanda; see ``symprune.spec.METHODS``) and its
    ``params`` by name, the target (``sparsity`` with ``pattern`` per-row, per-matrix
    or adaptive, or ``pattern="N:M"``), ``refine`` (``symprune.spec.REFINERS``) with
    ``refine_params``, and ``targets`` / ``ignore`` regexes. Every default is the
    core's. ``calibration``: "builtin" (Wikipedia), a .txt or a .jsonl file;
    ``nsamples`` windows of ``seqlen`` tokens drawn with ``seed``. ``evaluate`` adds
    dense and pruned perplexity on the built-in test split.

    Data-free methods, and score methods with a ``stats`` file (refinement included:
    ``swaps`` and ``r2dsnot`` with ``decision="exact"`` read the Gram matrices of
    ``calibrate(gram=True)``), run shard by shard in Rust without loading the model
    (nor torch); the others calibrate and prune
    layer by layer, streaming the layers from the shards, on the GPU when there is one.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the ranks cooperate through
    torch.distributed: data-parallel calibration, or the Rust engine's shards
    split among them; rank 0 finishes the output (and alone evaluates). Without
    torch.distributed, ``rank`` / ``world_size`` give this process its part of
    the shards (Rust engine only); :func:`symprune.checkpoint.finalize` then
    finishes the output.

    ``save_format`` (``symprune.spec.SAVE_FORMATS``) stores the output dense (the
    default) or in a compressed-tensors sparse format: the run then prunes into a
    hidden staging directory next to ``output`` (evaluated there, when asked),
    compresses it into ``output`` (:func:`symprune.checkpoint.compress`, the same
    tensor selection) and removes the staging directory; ``Report.compression``
    says what the format stored.
    """
    if spec is None:
        spec = PruneSpec(
            method=method,
            params=dict(params or {}),
            sparsity=sparsity,
            pattern=pattern,
            refine=refine,
            refine_params=dict(refine_params or {}),
            targets=targets,
            ignore=ignore,
        )
    elif any(v is not None for v in (method, sparsity, pattern, params, refine, refine_params)):
        raise InvalidInputError("spec: give either a PruneSpec or its fields, not both")
    if evaluate:  # the evaluation's numbers are checked before any work
        evaluation_windows("cpu", None, eval_seqlen, eval_windows)
    in_rust = spec.runs_shard_by_shard(stats is not None)
    parts = _check_parts(rank, world_size, in_rust, evaluate)
    if save_format not in SAVE_FORMATS:
        raise InvalidInputError(
            f"save_format: unknown format {save_format!r}; one of {', '.join(SAVE_FORMATS)}"
        )
    if output is None:
        builtin = data.builtin_name(model)
        if builtin is None:
            raise InvalidInputError("output: required when a model folder is given")
        # The default output is ours to replace: the main job can simply be run again.
        output = default_output(spec, builtin, save_format)
        overwrite = True
    compressed_to: Path | None = None
    if save_format != DEFAULT_SAVE_FORMAT:
        if parts is not None:
            raise InvalidInputError(
                f"save_format: a part is not a checkpoint; run `symprune finalize OUT_DIR`, "
                f"then `symprune compress OUT_DIR NEW_DIR --format {save_format}`"
            )
        compressed_to = Path(output)
        _check_replaceable(compressed_to, overwrite)
        # The dense checkpoint is staged next to the output (same filesystem), ours alone.
        output = compressed_to.parent / f".{compressed_to.name}.symprune-dense"
        overwrite = True
    model_dir = data.resolve_model(model)
    calib = Calibration(calibration, nsamples, seqlen, seed, batch_size)
    if stats is not None and not in_rust:
        raise InvalidInputError(
            "stats: a statistics file serves the Rust engine (score methods, refined or "
            f"not); {spec.label()} calibrates layer by layer"
        )
    if in_rust and (parts is not None or launched_world() <= 1):
        # Shard by shard in Rust: no torch, no process group.
        part = parts or (0, 1)
        report = _prune_in_rust(model_dir, output, spec, stats, overwrite, progress, part, None)
    else:
        from symprune.calibration import distributed
        from symprune.calibration.pipeline import prune_streamed
        from symprune.calibration.streaming import default_device

        device = default_device(device)
        with distributed.session(device) as ranks:
            if ranks is not None:
                device = ranks.device
            leader = ranks is None or ranks.leader
            if in_rust:
                part = (ranks.rank, ranks.world) if ranks else (0, 1)
                report = _prune_in_rust(
                    model_dir, output, spec, stats, overwrite, progress and leader, part, ranks
                )
            else:
                report = prune_streamed(
                    model_dir,
                    output,
                    spec,
                    calib,
                    device=device,
                    offload_activations=offload_activations,
                    overwrite=overwrite,
                    progress=progress and leader,
                    ranks=ranks,
                )
        if not leader:  # rank 0 evaluates the output it finished
            return report
    if evaluate:  # a compressed output is evaluated on its dense staging: the same weights
        from symprune.calibration.streaming import default_device
        from symprune.evaluation.perplexity import perplexity

        device = default_device(device)
        length, windows = evaluation_windows(
            device, calib.sized_for(device).seqlen, eval_seqlen, eval_windows
        )
        report.perplexity_windows = {"seqlen": length, "windows": windows}
        for name, folder in (("dense", model_dir), ("pruned", Path(output))):
            report.perplexity[name] = perplexity(
                folder, seqlen=length, max_windows=windows, device=device, progress=progress
            )
    if compressed_to is not None:
        _store_compressed(report, Path(output), compressed_to, save_format, spec, progress)
    return report


def _check_replaceable(output: Path, overwrite: bool) -> None:
    """Refuses, before any work, a compressed output that could not be written or replaced."""
    if not output.exists() or (output.is_dir() and not any(output.iterdir())):
        return
    if not output.is_dir():
        raise InvalidInputError(f"output: {output} is not a directory; name a new one")
    if not overwrite:
        raise InvalidInputError(
            f"output: {output} exists and is not empty; choose a new directory, or pass "
            "overwrite (--overwrite) to replace an earlier symprune output"
        )
    if not (output / VOCABULARY["output_marker"]).is_file():
        raise InvalidInputError(
            f"output: {output} is not a symprune output (no {VOCABULARY['output_marker']} "
            "marker); overwrite replaces only a directory that symprune wrote"
        )


def _store_compressed(
    report: Report,
    staging: Path,
    output: Path,
    save_format: str,
    spec: PruneSpec,
    progress: bool,
) -> None:
    """Compresses the dense ``staging`` into ``output`` (replacing an earlier symprune
    output only once the new one is complete), then removes ``staging``."""
    fresh = output.parent / f".{output.name}.symprune-compressed"
    # A killed run left this: it compressed an earlier staging, which this run rewrote,
    # so it cannot be resumed.
    if fresh.exists():
        shutil.rmtree(fresh)
    done = checkpoint.compress(
        staging, fresh, save_format, targets=spec.targets, ignore=spec.ignore, progress=progress
    )
    if output.exists():
        old = output.parent / f".{output.name}.symprune-replaced"
        if old.exists():
            shutil.rmtree(old)
        os.replace(output, old)
        os.replace(fresh, output)
        shutil.rmtree(old)
    else:
        os.replace(fresh, output)
    shutil.rmtree(staging)
    report.output = str(output)
    report.bytes_written += done.bytes_written
    report.compression = {
        "format": done.format,
        "dense_tensor_bytes": done.input_tensor_bytes,
        "stored_tensor_bytes": done.output_tensor_bytes,
        "left_dense": [f"{t.name}: {t.reason}" for t in done.left_dense],
    }


def _check_parts(
    rank: int | None, world_size: int | None, in_rust: bool, evaluate: bool
) -> tuple[int, int] | None:
    """``(rank, world_size)`` when this process is given its part of the shards."""
    if rank is None and world_size is None:
        return None
    if rank is None or world_size is None:
        raise InvalidInputError("rank and world_size: give both (or neither)")
    check_count("world_size", world_size)
    check_count("rank", rank, minimum=0)
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
    model_dir: Path,
    output: str | Path,
    spec: PruneSpec,
    stats: str | Path | None,
    overwrite: bool,
    progress: bool,
    part: tuple[int, int],
    ranks: Any,
) -> Report:
    from symprune.results import Report, TensorRecord

    rust = checkpoint.prune_checkpoint(
        model_dir,
        output,
        spec,
        stats=stats,
        overwrite=overwrite,
        progress=progress,
        rank=part[0],
        world_size=part[1],
    )
    tensors = [
        TensorRecord(t.name, t.shape, t.sparsity, t.loss_before, t.loss_after)
        for t in rust.tensors
        if t.numel
    ]
    if ranks is not None:
        from symprune.calibration import distributed

        done = distributed.leader_finishes(ranks, lambda: checkpoint.finalize(output))
        if done is not None:  # rank 0 reports the whole checkpoint
            shape = checkpoint.CheckpointReader(model_dir).shape
            tensors = [TensorRecord(n, shape(n), s) for n, s in done.tensors.items()]
    settings = spec.describe()
    if stats is not None:
        settings["stats"] = str(stats)
    return Report(
        model=str(model_dir),
        output=str(output),
        method=spec.method,
        refine=spec.refine,
        settings=settings,
        device="cpu (Rust engine)",
        tensors=tensors,
        seconds=rust.seconds,
        peak_rss_mb=rust.peak_rss_mb,
        bytes_written=rust.bytes_written,
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
    targets: str | Sequence[str] | None = None,
    ignore: str | Sequence[str] | None = None,
    gram: bool = False,
    progress: bool = True,
) -> Path:
    """Stores the dense model's activation statistics for pruning later (``stats=``).

    ``gram`` also stores each linear's Gram matrix (in × in float32, see
    :func:`~symprune.calibration.pipeline.calibrate_streamed`), which ``prune(stats=...)``
    needs to refine with ``swaps`` or ``r2dsnot`` with ``decision="exact"``. Under
    ``torchrun`` the ranks calibrate data-parallel and rank 0 writes the file.
    """
    from symprune.calibration import distributed
    from symprune.calibration.pipeline import calibrate_streamed
    from symprune.calibration.streaming import default_device

    device = default_device(device)
    calib = Calibration(calibration, nsamples, seqlen, seed, batch_size)
    with distributed.session(device) as ranks:
        return calibrate_streamed(
            model,
            output,
            calibration=calib,
            device=ranks.device if ranks else device,
            selection=selection_rule(targets, ignore),
            gram=gram,
            progress=progress and (ranks is None or ranks.leader),
            ranks=ranks,
        )


__all__ = ["calibrate", "prune"]
