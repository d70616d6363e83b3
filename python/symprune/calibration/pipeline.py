"""The main job: calibrate and prune layer by layer, streaming from the shards.

For each decoder layer (methods.md §8): materialize it from the checkpoint,
run the current calibration activations through the dense layer while hooks
gather the statistics of its linears, prune them, write the pruned tensors,
re-run the pruned layer to produce the next layer's inputs, and free it. The
whole model is never held; activations stay in the model dtype (optionally on
the CPU while the layers run on the GPU).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from symprune import _core, data, methods
from symprune.calibration import distributed
from symprune.calibration.stats import (
    LinearStats,
    collecting,
    is_transposed,
    linear_modules,
    weight_of,
)
from symprune.calibration.streaming import Captured, StreamedModel, default_device
from symprune.checkpoint import CheckpointWriter, check_output_file, write_output_file
from symprune.errors import InvalidInputError
from symprune.results import LayerRecord, Report, TensorRecord
from symprune.spec import VOCABULARY, Calibration, PruneSpec
from symprune.spec import selection_rule as spec_selection
from symprune.util import peak_rss_mb, resident_mb


def calibration_ids(model_dir: Path, calib: Calibration) -> torch.Tensor:
    """The ``(nsamples, seqlen)`` calibration windows, tokenized with the model's tokenizer
    (``calib`` sized, see :meth:`Calibration.sized_for`)."""
    nsamples, seqlen = calib.size()
    if calib.source == "builtin":
        text = data.builtin_corpus().calibration
    else:
        text = data.read_text(calib.source)
    ids = data.token_ids(model_dir, text)
    return torch.tensor(data.calibration_windows(ids, nsamples, seqlen, calib.seed))


def _oriented(module: torch.nn.Module) -> torch.Tensor:
    """The weight as (out, in), a view sharing storage with the module."""
    weight = weight_of(module).data
    return weight.t() if is_transposed(module) else weight


def prune_streamed(
    model: str | Path | None,
    output: str | Path | None,
    spec: PruneSpec,
    calibration: Calibration,
    *,
    device: str | None = None,
    offload_activations: bool = False,
    keep_masks: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    write: Callable[[str, torch.Tensor], None] | None = None,
    ranks: distributed.Ranks | None = None,
) -> Report:
    """Sequential layer-by-layer pruning (see the module docstring); see :func:`symprune.prune`.

    With ``ranks`` (data-parallel calibration), this rank calibrates on its block of the
    windows, the statistics are summed over the ranks, and only rank 0 writes; the
    layer records (seconds, reconstruction error) are this rank's.
    """
    t_start = time.perf_counter()
    model_dir = data.resolve_model(model)
    method = methods.get(spec.method)
    refiner = methods.get_refiner(spec.refine) if spec.refine else None
    device = default_device(device)
    calib = calibration.sized_for(device)
    writer = None
    if output is not None and write is None and (ranks is None or ranks.leader):
        writer = CheckpointWriter(model_dir, output, overwrite=overwrite)  # fails fast
        write = writer.write
    try:
        streamed = StreamedModel(model_dir, device)
        if streamed.max_positions and calib.size()[1] > streamed.max_positions:
            raise InvalidInputError(
                f"seqlen {calib.seqlen} exceeds the model's context of "
                f"{streamed.max_positions} tokens; pass a smaller --seqlen"
            )
        _check_targets(streamed, spec.selection)
        ids = calibration_ids(model_dir, calib)
        if ranks is not None:
            ids = ids[ranks.windows(len(ids))]
        report = Report(
            model=str(model_dir),
            output=str(output) if output else None,
            method=spec.method,
            refine=spec.refine,
            device=str(device),
            masks={} if keep_masks else None,
            settings={**spec.describe(), "calibration": calib.describe()},
        )
        step = pruning_step(streamed, spec, method, refiner, report, write)
        report.layers = stream_layers(
            streamed,
            ids,
            calib,
            step,
            selection=spec.selection,
            hessian=spec.request.needs_hessian or spec.request.refine_needs_gram,
            offload=offload_activations,
            reduce_stats=ranks.reduce_stats if ranks is not None else None,
            progress=progress,
            resident_after_setup=report.resident_after_setup_mb,
        )
        report.seconds = time.perf_counter() - t_start
        report.peak_rss_mb = peak_rss_mb()
        done = distributed.leader_finishes(
            ranks, lambda: writer.finish(report.settings) if writer else None
        )
        if done:
            report.bytes_written = done["bytes_written"]
    except BaseException:
        if writer is not None:
            writer.abort()
        if ranks is not None:
            ranks.fail()
        raise
    return report


def _layer_weights(
    streamed: StreamedModel, index: int, selection: _core.Selection
) -> dict[str, str]:
    """Checkpoint weight name -> relative module name, for the chosen linears of one layer
    (the core's selection rule, the same as the Rust engine's)."""
    prefix, source = streamed.layer_prefix(index), streamed.source
    out = {}
    for rel in linear_modules(streamed.layers[index]):
        name = f"{prefix}.{rel}.weight"
        stored = name in source.names
        shape = list(source.reader.shape(name)) if stored else []
        if stored and selection.selects(name, shape, source.reader.dtype(name)):
            out[name] = rel
    return out


def _check_targets(streamed: StreamedModel, selection: _core.Selection) -> None:
    for i in range(streamed.num_layers):
        if _layer_weights(streamed, i, selection):
            return
    raise InvalidInputError("no linear layer matches --targets/--ignore; nothing would be pruned")


@dataclass
class StepResult:
    """What a layer step did: whether it changed the layer's weights, and the layer's
    summed layer-wise loss before/after refinement where the refiner computed it."""

    changed: bool
    loss_before: float | None = None
    loss_after: float | None = None


# What a layer step gets: layer index, chosen linears (relative name -> module),
# their statistics.
LayerStep = Callable[[int, dict[str, torch.nn.Module], dict[str, LinearStats]], StepResult]


def stream_layers(
    streamed: StreamedModel,
    ids: torch.Tensor,
    calib: Calibration,
    step: LayerStep,
    *,
    selection: _core.Selection,
    hessian: bool = False,
    offload: bool = False,
    reduce_stats: Callable[[dict[str, LinearStats]], None] | None = None,
    progress: bool = True,
    resident_after_setup: dict[str, float] | None = None,
) -> list[LayerRecord]:
    """The sequential loop: per layer, load → statistics → ``step`` → re-run → free.

    ``reduce_stats`` (data-parallel calibration) combines the statistics of all
    workers before ``step`` sees them. ``resident_after_setup`` receives the
    resident memory once the first activations are captured (util.resident_mb).
    """
    from tqdm.auto import tqdm

    act_device = torch.device("cpu") if offload else streamed.device
    chunks = [ids[i : i + calib.batch_size] for i in range(0, len(ids), calib.batch_size)]
    captured: list[Captured] = [streamed.capture(c) for c in chunks]
    acts = [c.hidden.to(act_device) for c in captured]
    if resident_after_setup is not None:
        resident_after_setup.update(resident_mb())
    cuda = streamed.device.type == "cuda"
    records = []
    bar = tqdm(range(streamed.num_layers), desc="layers", disable=not progress, unit="layer")
    for i in bar:
        t0 = time.perf_counter()
        if cuda:
            torch.cuda.reset_peak_memory_stats(streamed.device)
        layer = streamed.load_layer(i)
        chosen = {
            rel: layer.get_submodule(rel) for rel in _layer_weights(streamed, i, selection).values()
        }
        with collecting(chosen, calib.size()[1], hessian=hessian) as stats:
            dense = [
                streamed.run_layer(i, h, c).to(act_device)
                for h, c in zip(acts, captured, strict=True)
            ]
        if reduce_stats is not None:
            reduce_stats(stats)
        err_num = err_den = 0.0
        done = step(i, chosen, stats)
        if done.changed:
            outs = []
            for h, c, d in zip(acts, captured, dense, strict=True):
                o = streamed.run_layer(i, h, c).to(act_device)
                err_num += float((o.float() - d.float()).pow(2).sum())
                err_den += float(d.float().pow(2).sum())
                outs.append(o)
            acts = outs
        else:
            acts = dense
        del dense
        zeros = sum(int((weight_of(m) == 0).sum()) for m in chosen.values())
        numel = sum(weight_of(m).numel() for m in chosen.values())
        streamed.free_layer(i)
        rec = LayerRecord(
            index=i,
            seconds=time.perf_counter() - t0,
            sparsity=zeros / max(numel, 1),
            recon_error=err_num / max(err_den, 1e-30),
            peak_rss_mb=peak_rss_mb(),
            peak_gpu_mb=torch.cuda.max_memory_allocated(streamed.device) / 2**20 if cuda else None,
            loss_before=done.loss_before,
            loss_after=done.loss_after,
            resident_mb=resident_mb(),
        )
        records.append(rec)
        shown = {
            "s": f"{rec.seconds:.1f}",
            "sparsity": f"{rec.sparsity:.3f}",
            "err": f"{rec.recon_error:.2e}",
            "rss": f"{rec.peak_rss_mb:.0f}M",
        }
        if rec.loss_before and rec.loss_after is not None:
            shown["loss"] = f"{rec.loss_after / rec.loss_before - 1:+.0%}"
        bar.set_postfix(shown)
    return records


def pruning_step(
    streamed: StreamedModel,
    spec: PruneSpec,
    method: methods.Method,
    refiner: methods.RefineFn | None,
    report: Report,
    write: Callable[[str, torch.Tensor], None] | None,
) -> LayerStep:
    """Prunes (and optionally refines) every chosen linear of a layer, then writes it."""
    score_fn = method.score_fn
    if refiner is None or spec.nm is None or not spec.refine:
        score_fn = None
    elif not VOCABULARY["refiners"][spec.refine]["uses_initial_scores"]:
        score_fn = None

    def step(
        i: int, chosen: dict[str, torch.nn.Module], stats: dict[str, LinearStats]
    ) -> StepResult:
        prefix = streamed.layer_prefix(i)
        first = len(report.tensors)
        for rel, module in chosen.items():
            tensor = f"{prefix}.{rel}.weight"
            weight = _oriented(module)
            st = stats[rel].finalize()
            needs_h = spec.request.needs_hessian or spec.request.refine_needs_gram
            hessian = stats[rel].hessian_matrix() if needs_h else None
            mask = method.fn(weight, st, hessian, spec, tensor)
            record = TensorRecord(tensor, tuple(weight.shape), 0.0)
            if refiner is not None:
                initial = score_fn(weight, st, spec, tensor) if score_fn else None
                mask, refined = refiner(weight, mask, st, hessian, spec, tensor, initial)
                record.loss_before, record.loss_after = refined.loss_before, refined.loss_after
            weight.masked_fill_(torch.from_numpy(mask).to(weight.device), 0)
            record.sparsity = int((weight == 0).sum()) / weight.numel()
            report.tensors.append(record)
            if report.masks is not None:
                report.masks[tensor] = mask
            if write is not None:
                write(tensor, weight_of(module).data)
        losses = [
            (r.loss_before, r.loss_after)
            for r in report.tensors[first:]
            if r.loss_before is not None and r.loss_after is not None
        ]
        if not losses:
            return StepResult(True)
        return StepResult(True, sum(b for b, _ in losses), sum(a for _, a in losses))

    return step


def calibrate_streamed(
    model: str | Path | None,
    output: str | Path,
    *,
    calibration: Calibration,
    device: str | None = None,
    selection: _core.Selection | None = None,
    offload_activations: bool = False,
    gram: bool = False,
    progress: bool = True,
    ranks: distributed.Ranks | None = None,
) -> Path:
    """Statistics of the dense model's linears, saved for pruning later without the model.

    The file is safetensors with one float32 entry per linear and statistic:
    ``<module>.in_sq``, ``<module>.sum``, ``<module>.var``, ``<module>.out_sq``
    for the weight ``<module>.weight`` (methods.md §2); with ``gram`` also
    ``<module>.gram``, the Gram matrix of its inputs (in × in, methods.md §9)
    with SparseGPT's factor, ``(2/N) Σ x xᵀ`` (:meth:`LinearStats.hessian_matrix`),
    which refinement (``swaps``, ``r2dsnot`` with ``decision=exact``) reads from
    ``prune --stats``; any positive factor refines the same, as the tolerance is
    relative. The model is not pruned
    in between, so these are the dense model's statistics (one-shot, not
    sequential). With ``ranks``, the ranks split the windows as in
    :func:`prune_streamed` and rank 0 writes the file.
    """
    from safetensors.torch import save

    model_dir = data.resolve_model(model)
    out = Path(output)
    check_output_file(out, model_dir)  # before the work, not after it
    device = default_device(device)
    calib = calibration.sized_for(device)
    selection = selection or spec_selection()
    tensors: dict[str, torch.Tensor] = {}

    def record(
        i: int, chosen: dict[str, torch.nn.Module], stats: dict[str, LinearStats]
    ) -> StepResult:
        for rel, st in stats.items():
            prefix = f"{streamed.layer_prefix(i)}.{rel}"
            for key, value in st.finalize().items():
                tensors[f"{prefix}.{key}"] = torch.from_numpy(value)
            if gram:
                tensors[f"{prefix}.gram"] = st.hessian_matrix().float().cpu().contiguous()
        return StepResult(False)

    meta = {
        "format": "symprune-stats-v1",
        "model": str(model_dir),
        "nsamples": str(calib.nsamples),
        "seqlen": str(calib.seqlen),
        "seed": str(calib.seed),
        "calibration": calib.source,
    }

    def write() -> None:
        write_output_file(out, save(tensors, metadata=meta), model_dir)

    try:
        streamed = StreamedModel(model_dir, device)
        _check_targets(streamed, selection)
        ids = calibration_ids(model_dir, calib)
        if ranks is not None:
            ids = ids[ranks.windows(len(ids))]
        stream_layers(
            streamed,
            ids,
            calib,
            record,
            selection=selection,
            hessian=gram,
            offload=offload_activations,
            reduce_stats=ranks.reduce_stats if ranks is not None else None,
            progress=progress,
        )
        distributed.leader_finishes(ranks, write)
    except BaseException:
        if ranks is not None:
            ranks.fail()
        raise
    return out
