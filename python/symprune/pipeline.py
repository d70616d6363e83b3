"""The main job: calibrate and prune layer by layer, streaming from the shards.

For each decoder layer (methods.md §8): materialize it from the checkpoint,
run the current calibration activations through the dense layer while hooks
gather the statistics of its linears, prune them, write the pruned tensors,
re-run the pruned layer to produce the next layer's inputs, and free it. The
whole model is never held; activations stay in the model dtype (optionally on
the CPU while the layers run on the GPU).
"""

from __future__ import annotations

import re
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from symprune import data, distributed, methods
from symprune.calibrate import LinearStats, collecting, is_transposed, linear_modules
from symprune.errors import InvalidInputError
from symprune.methods import PruneSettings
from symprune.streaming import Captured, StreamedModel

# Linears never pruned by default inside a decoder layer: none; outside the
# layers nothing is touched (embeddings, lm_head, norms).
DEFAULT_TARGETS = r".*"


@dataclass
class Calibration:
    """Where the calibration tokens come from (methods.md §8)."""

    source: str = "builtin"  # "builtin", a .txt file or a .jsonl file of {"text": ...}
    nsamples: int = 128
    seqlen: int = 2048
    seed: int = 0
    batch_size: int = 8


@dataclass
class LayerRecord:
    index: int
    seconds: float
    sparsity: float
    recon_error: float
    peak_rss_mb: float
    peak_gpu_mb: float | None


@dataclass
class TensorRecord:
    name: str
    shape: tuple[int, ...]
    sparsity: float


@dataclass
class Report:
    """What a pruning run did, layer by layer and tensor by tensor."""

    model: str
    output: str | None
    method: str
    refine: str | None
    settings: dict[str, Any]
    device: str
    layers: list[LayerRecord] = field(default_factory=list)
    tensors: list[TensorRecord] = field(default_factory=list)
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    bytes_written: int = 0
    masks: dict[str, np.ndarray] | None = None
    perplexity: dict[str, float] = field(default_factory=dict)

    @property
    def sparsity(self) -> float:
        total = sum(int(np.prod(t.shape)) for t in self.tensors)
        return sum(t.sparsity * np.prod(t.shape) for t in self.tensors) / max(total, 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("masks")
        d["overall_sparsity"] = self.sparsity
        return d

    def summary(self) -> str:
        """A small table of the totals (and perplexity when evaluated)."""
        numel = sum(int(np.prod(t.shape)) for t in self.tensors)
        method = self.method + (f" + {self.refine}" if self.refine else "")
        target = self.settings.get("pattern") or (
            f"{self.settings.get('sparsity')} {self.settings.get('group', 'per-row')}"
        )
        rows = [
            ("model", self.model),
            ("method", f"{method} ({target})"),
            ("tensors pruned", str(len(self.tensors))),
            ("parameters", f"{numel:,}"),
            ("achieved sparsity", f"{self.sparsity:.4f}"),
            ("bytes written", f"{self.bytes_written:,} ({self.bytes_written / 2**30:.2f} GiB)"),
            ("seconds", f"{self.seconds:.2f} on {self.device}"),
            ("peak RSS", f"{self.peak_rss_mb:.0f} MiB"),
            ("output", str(self.output)),
        ]
        rows += [(f"perplexity {k}", f"{v:.3f}") for k, v in self.perplexity.items()]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def calibration_ids(model_dir: Path, calib: Calibration) -> torch.Tensor:
    """The ``(nsamples, seqlen)`` calibration windows, tokenized with the model's tokenizer."""
    if calib.source == "builtin":
        text = data.builtin_corpus().calibration
    else:
        text = data.read_text(calib.source)
    ids = data.token_ids(model_dir, text)
    return torch.tensor(data.calibration_windows(ids, calib.nsamples, calib.seqlen, calib.seed))


def _selected(names: list[str], targets: str | None, ignore: str | None) -> list[str]:
    def rx(pattern: str) -> re.Pattern:
        return re.compile(pattern.removeprefix("re:"))

    t = rx(targets or DEFAULT_TARGETS)
    i = rx(ignore) if ignore else None
    return [n for n in names if t.fullmatch(n) and not (i and i.fullmatch(n))]


def _oriented(module: torch.nn.Module) -> torch.Tensor:
    """The weight as (out, in), a view sharing storage with the module."""
    return module.weight.data.t() if is_transposed(module) else module.weight.data


def prune_streamed(
    model: str | Path | None = None,
    output: str | Path | None = None,
    *,
    method: str = "wanda",
    sparsity: float = 0.5,
    pattern: str | None = None,
    group: str = "per-row",
    params: dict[str, Any] | None = None,
    refine: str | None = None,
    refine_params: dict[str, Any] | None = None,
    calibration: Calibration | None = None,
    device: str | None = None,
    offload_activations: bool = False,
    targets: str | None = None,
    ignore: str | None = None,
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
    model_dir = Path(model) if model is not None else data.builtin_model()
    spec = methods.get(method)
    refiner = methods.get_refiner(refine) if refine else None
    settings = PruneSettings(sparsity=sparsity, group=group, pattern=pattern, params=params or {})
    if pattern:
        from symprune.ops import parse_nm

        parse_nm(pattern)
    elif not 0.0 <= sparsity < 1.0:
        raise InvalidInputError(f"sparsity: {sparsity} must be in [0, 1), e.g. 0.5 for 50%")
    calib = calibration or Calibration()
    device = device or default_device()
    writer = None
    if output is not None and write is None and (ranks is None or ranks.leader):
        from symprune.checkpoint import CheckpointWriter

        writer = CheckpointWriter(model_dir, output, overwrite=overwrite)  # fails fast
        write = writer.write
    try:
        streamed = StreamedModel(model_dir, device)
        if streamed.max_positions and calib.seqlen > streamed.max_positions:
            raise InvalidInputError(
                f"seqlen {calib.seqlen} exceeds the model's context of "
                f"{streamed.max_positions} tokens; pass a smaller --seqlen"
            )
        _check_targets(streamed, targets, ignore)
        ids = calibration_ids(model_dir, calib)
        if ranks is not None:
            ids = ids[ranks.windows(len(ids))]
        report = Report(
            model=str(model_dir),
            output=str(output) if output else None,
            method=method,
            refine=refine,
            device=str(device),
            masks={} if keep_masks else None,
            settings={
                "sparsity": sparsity,
                "pattern": pattern,
                "group": group,
                **settings.params,
                "nsamples": calib.nsamples,
                "seqlen": calib.seqlen,
                "seed": calib.seed,
                "calibration": calib.source,
                **(refine_params or {}),
            },
        )
        step = pruning_step(streamed, spec, settings, refiner, refine_params or {}, report, write)
        report.layers = stream_layers(
            streamed,
            ids,
            calib,
            step,
            targets=targets,
            ignore=ignore,
            hessian=spec.needs_hessian,
            offload=offload_activations,
            reduce_stats=ranks.reduce_stats if ranks is not None else None,
            progress=progress,
        )
        report.seconds = time.perf_counter() - t_start
        report.peak_rss_mb = peak_rss_mb()
        done = distributed.leader_finishes(
            ranks, lambda: writer.finish(manifest=_manifest(report)) if writer else None
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


def _layer_weights(streamed: StreamedModel, index: int) -> dict[str, str]:
    """Checkpoint weight name -> relative module name, for the linears of one layer."""
    prefix = streamed.layer_prefix(index)
    return {f"{prefix}.{n}.weight": n for n in linear_modules(streamed.layers[index])}


def _check_targets(streamed: StreamedModel, targets: str | None, ignore: str | None) -> None:
    for i in range(streamed.num_layers):
        if _selected(list(_layer_weights(streamed, i)), targets, ignore):
            return
    raise InvalidInputError("no linear layer matches --targets/--ignore; nothing would be pruned")


def _manifest(report: Report) -> dict[str, Any]:
    from symprune import __version__

    return {
        "method": report.method,
        "refine": report.refine,
        "parameters": report.settings,
        "pattern": report.settings.get("pattern") or f"unstructured {report.settings['group']}",
        "sparsity": report.sparsity,
        "tensors": {t.name: t.sparsity for t in report.tensors},
        "symprune_version": __version__,
    }


# What a layer step gets: layer index, chosen linears (relative name -> module),
# their statistics; it returns True when it changed the layer's weights.
LayerStep = Callable[[int, dict[str, torch.nn.Module], dict[str, LinearStats]], bool]


def stream_layers(
    streamed: StreamedModel,
    ids: torch.Tensor,
    calib: Calibration,
    step: LayerStep,
    *,
    targets: str | None = None,
    ignore: str | None = None,
    hessian: bool = False,
    offload: bool = False,
    reduce_stats: Callable[[dict[str, LinearStats]], None] | None = None,
    progress: bool = True,
) -> list[LayerRecord]:
    """The sequential loop: per layer, load → statistics → ``step`` → re-run → free.

    ``reduce_stats`` (data-parallel calibration) combines the statistics of all
    workers before ``step`` sees them.
    """
    from tqdm.auto import tqdm

    act_device = torch.device("cpu") if offload else streamed.device
    chunks = [ids[i : i + calib.batch_size] for i in range(0, len(ids), calib.batch_size)]
    captured: list[Captured] = [streamed.capture(c) for c in chunks]
    acts = [c.hidden.to(act_device) for c in captured]
    cuda = streamed.device.type == "cuda"
    records = []
    bar = tqdm(range(streamed.num_layers), desc="layers", disable=not progress, unit="layer")
    for i in bar:
        t0 = time.perf_counter()
        if cuda:
            torch.cuda.reset_peak_memory_stats(streamed.device)
        layer = streamed.load_layer(i)
        names = _layer_weights(streamed, i)
        chosen = {
            names[w]: layer.get_submodule(names[w]) for w in _selected(list(names), targets, ignore)
        }
        with collecting(chosen, calib.seqlen, hessian=hessian) as stats:
            dense = [
                streamed.run_layer(i, h, c).to(act_device)
                for h, c in zip(acts, captured, strict=True)
            ]
        if reduce_stats is not None:
            reduce_stats(stats)
        err_num = err_den = 0.0
        if step(i, chosen, stats):
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
        zeros = sum(int((m.weight == 0).sum()) for m in chosen.values())
        numel = sum(m.weight.numel() for m in chosen.values())
        streamed.free_layer(i)
        rec = LayerRecord(
            index=i,
            seconds=time.perf_counter() - t0,
            sparsity=zeros / max(numel, 1),
            recon_error=err_num / max(err_den, 1e-30),
            peak_rss_mb=peak_rss_mb(),
            peak_gpu_mb=torch.cuda.max_memory_allocated(streamed.device) / 2**20 if cuda else None,
        )
        records.append(rec)
        bar.set_postfix(
            s=f"{rec.seconds:.1f}",
            sparsity=f"{rec.sparsity:.3f}",
            err=f"{rec.recon_error:.2e}",
            rss=f"{rec.peak_rss_mb:.0f}M",
        )
    return records


def pruning_step(
    streamed: StreamedModel,
    spec: methods.Method,
    settings: PruneSettings,
    refiner: methods.RefineFn | None,
    refine_params: dict[str, Any],
    report: Report,
    write: Callable[[str, torch.Tensor], None] | None,
) -> LayerStep:
    """Prunes (and optionally refines) every chosen linear of a layer, then writes it."""

    def step(i: int, chosen: dict[str, torch.nn.Module], stats: dict[str, LinearStats]) -> bool:
        prefix = streamed.layer_prefix(i)
        for rel, module in chosen.items():
            tensor = f"{prefix}.{rel}.weight"
            weight = _oriented(module)
            st = stats[rel].finalize()
            hessian = stats[rel].hessian_matrix() if spec.needs_hessian else None
            mask = spec.fn(weight, st, hessian, settings, tensor)
            if refiner is not None:
                initial = None
                if settings.pattern and spec.score_fn is not None:
                    initial = spec.score_fn(weight, st, settings, tensor)
                mask = refiner(weight, mask, st, settings, refine_params, tensor, initial)
            weight.masked_fill_(torch.from_numpy(mask).to(weight.device), 0)
            zeros = int((weight == 0).sum())
            report.tensors.append(TensorRecord(tensor, tuple(weight.shape), zeros / weight.numel()))
            if report.masks is not None:
                report.masks[tensor] = mask
            if write is not None:
                write(tensor, module.weight.data)
        return True

    return step


def calibrate_streamed(
    model: str | Path | None,
    output: str | Path,
    *,
    calibration: Calibration | None = None,
    device: str | None = None,
    targets: str | None = None,
    ignore: str | None = None,
    offload_activations: bool = False,
    progress: bool = True,
    ranks: distributed.Ranks | None = None,
) -> Path:
    """Statistics of the dense model's linears, saved for pruning later without the model.

    The file is safetensors with one float32 entry per linear and statistic:
    ``<module>.in_sq``, ``<module>.sum``, ``<module>.var``, ``<module>.out_sq``
    for the weight ``<module>.weight`` (methods.md §2). The model is not pruned
    in between, so these are the dense model's statistics (one-shot, not
    sequential). With ``ranks``, the ranks split the windows as in
    :func:`prune_streamed` and rank 0 writes the file.
    """
    from safetensors.torch import save

    from symprune.checkpoint import check_output_file, write_output_file

    model_dir = Path(model) if model is not None else data.builtin_model()
    out = Path(output)
    check_output_file(out, model_dir)  # before the work, not after it
    calib = calibration or Calibration()
    tensors: dict[str, torch.Tensor] = {}

    def record(i: int, chosen: dict[str, torch.nn.Module], stats: dict[str, LinearStats]) -> bool:
        for rel, st in stats.items():
            for key, value in st.finalize().items():
                tensors[f"{streamed.layer_prefix(i)}.{rel}.{key}"] = torch.from_numpy(value)
        return False

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
        streamed = StreamedModel(model_dir, device or default_device())
        _check_targets(streamed, targets, ignore)
        ids = calibration_ids(model_dir, calib)
        if ranks is not None:
            ids = ids[ranks.windows(len(ids))]
        stream_layers(
            streamed,
            ids,
            calib,
            record,
            targets=targets,
            ignore=ignore,
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
