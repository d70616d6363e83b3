"""The reproduction grid: prune and evaluate every cell, cache each result, write a table and plots.

A cell is (model, method, target, refinement). Each one is pruned with
:func:`symprune.prune` into a temporary folder, evaluated with
:func:`symprune.evaluation.perplexity` (methods.md §8) and the folder deleted
(kept with ``keep``). Its result — perplexity, timings and the pruning
:class:`~symprune.results.Report` with per-layer records — is stored as JSON
under ``out/cells/``, keyed by every setting, so an interrupted run continues
where it stopped and a changed setting never reuses a stale result.
``out/results.md`` gets the tables, ``out/*.png`` the plots (matplotlib, the
``symprune[report]`` extra).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from symprune import data
from symprune.errors import InvalidInputError, SymPruneError
from symprune.spec import METHODS as ALL_METHODS
from symprune.spec import (
    REFINERS,
    Calibration,
    PruneSpec,
    evaluation_windows,
    parse_refinement,
)

# torch and the pruning API are imported on first use: the CLI builds this
# command's parser (from the constants below) for every command.

MODELS = tuple(data.MODELS)
# The grid: every method but owanda (within a row it ranks like magnitude).
METHODS = tuple(m for m in ALL_METHODS if m != "owanda")
TARGETS = ("50%", "60%", "70%", "2:4", "4:8")
REFINES = ("none", *REFINERS)

Log = Callable[[str], None]


@dataclass(frozen=True)
class Target:
    """A sparsity target: unstructured ``sparsity`` (the default pattern) or an N:M ``pattern``."""

    label: str
    sparsity: float
    pattern: str | None = None

    @property
    def slug(self) -> str:
        return self.label.replace("%", "pct").replace(":", "of")


def parse_target(spec: str) -> Target:
    """``"50%"`` or ``"0.5"`` (unstructured) or ``"2:4"`` (N:M, sparsity N/M)."""
    text = spec.strip()
    if ":" in text:
        checked = PruneSpec(method="magnitude", pattern=text)
        return Target(checked.pattern, checked.sparsity, checked.pattern)
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise InvalidInputError(
            f"pattern {spec!r}: use a sparsity such as 50% or 0.5, or N:M such as 2:4"
        ) from None
    if not 0.0 < value < 1.0:
        raise InvalidInputError(f"pattern {spec!r}: sparsity must be between 0% and 100%")
    return Target(f"{value * 100:g}%", value)


@dataclass(frozen=True)
class GridSettings:
    """Calibration and evaluation settings shared by every cell (all part of the cache key)."""

    nsamples: int
    seqlen: int
    eval_seqlen: int
    eval_windows: int | None
    seed: int = 0
    device: str = "cpu"
    batch_size: int = 8

    @classmethod
    def resolve(
        cls,
        *,
        device: str | None = None,
        nsamples: int | None = None,
        seqlen: int | None = None,
        eval_seqlen: int | None = None,
        eval_windows: int | None = None,
        seed: int = 0,
        batch_size: int = 8,
    ) -> GridSettings:
        """Fills the defaults exactly as ``symprune prune`` does (CPU- or GPU-sized)."""
        from symprune.calibration.streaming import default_device

        device = default_device(device)
        calib = Calibration(nsamples=nsamples, seqlen=seqlen).sized_for(device)
        n, s = calib.nsamples or 0, calib.seqlen or 0
        length, windows = evaluation_windows(device, s, eval_seqlen, eval_windows)
        return cls(n, s, length, windows, seed, device, batch_size)


def model_label(model: str) -> str:
    return model if model in data.MODELS else Path(model).name


def model_key(model: str) -> str:
    """How a model is named in the cache key: a built-in's name, or a folder's absolute path."""
    return model if model in data.MODELS else str(Path(model).resolve())


def cell_key(
    model: str, method: str, target: Target | None, refine: str | None, settings: GridSettings
) -> dict[str, Any]:
    """Every setting that decides a cell's result; ``method="dense"`` is the unpruned model."""
    key: dict[str, Any] = {
        "model": model_key(model),
        "method": method,
        "eval_text": "builtin",
        "eval_seqlen": settings.eval_seqlen,
        "eval_windows": settings.eval_windows,
        "device": settings.device,
        "batch_size": settings.batch_size,
    }
    if target is not None:
        spec = cell_spec(method, target, refine)
        key |= {
            "target": target.label,
            "run": spec.describe(),
            "refine": refine,
            "calibration": "builtin",
            "nsamples": settings.nsamples,
            "seqlen": settings.seqlen,
            "seed": settings.seed,
        }
    return key


def cell_spec(method: str, target: Target | None, refine: str | None) -> PruneSpec:
    """What a cell prunes: the method with the core's defaults at ``target``, refined
    by ``refine`` (``NAME`` or ``NAME:P=V;...``, :func:`~symprune.spec.parse_refinement`)."""
    name, params = parse_refinement(refine) if refine else (None, {})
    sparsity, pattern = (target.sparsity, target.pattern) if target else (None, None)
    return PruneSpec(
        method=method, sparsity=sparsity, pattern=pattern, refine=name, refine_params=params
    )


def cell_path(out: Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    parts = [model_label(key["model"]), key["method"], key.get("target"), key.get("refine")]
    slug = "-".join(str(p).replace("%", "pct").replace(":", "of") for p in parts if p)
    slug = re.sub(r"[^\w.-]+", "_", slug)
    return out / "cells" / f"{slug}-{digest}.json"


def _load(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if record.get("key") == key else None


def _save(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)  # a killed run never leaves a half-written cell


_LAYER_INDEX = re.compile(r"\.(\d+)\.")


def layer_profile(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per decoder layer: index, achieved sparsity, reconstruction error (None if not recorded).

    The layer-streamed pipeline records layers itself; the Rust engine
    (data-free methods) records tensors only, so their sparsity is summed per layer.
    """
    if report["layers"]:
        return [
            {"index": r["index"], "sparsity": r["sparsity"], "recon_error": r["recon_error"]}
            for r in report["layers"]
        ]
    zeros: dict[int, float] = {}
    sizes: dict[int, int] = {}
    for t in report["tensors"]:
        found = _LAYER_INDEX.search(t["name"])
        if found:
            i, numel = int(found.group(1)), math.prod(t["shape"])
            zeros[i] = zeros.get(i, 0.0) + t["sparsity"] * numel
            sizes[i] = sizes.get(i, 0) + numel
    return [
        {"index": i, "sparsity": zeros[i] / sizes[i], "recon_error": None} for i in sorted(sizes)
    ]


def run_cell(
    model: str,
    method: str,
    target: Target | None,
    refine: str | None,
    settings: GridSettings,
    out: Path,
    *,
    keep: bool = False,
    progress: bool = False,
) -> tuple[dict[str, Any], bool]:
    """One cell's record, from the cache or computed; the flag says whether it was cached."""
    from symprune import api
    from symprune.evaluation.perplexity import perplexity

    key = cell_key(model, method, target, refine, settings)
    path = cell_path(out, key)
    cached = _load(path, key)
    if cached is not None:
        return cached, True
    folder = data.resolve_model(model)

    def evaluate(checkpoint: Path) -> float:
        return perplexity(
            checkpoint,
            seqlen=settings.eval_seqlen,
            max_windows=settings.eval_windows,
            device=settings.device,
            batch_size=settings.batch_size,
        )

    record: dict[str, Any] = {"key": key}
    if target is None:
        t0 = time.perf_counter()
        record |= {"perplexity": evaluate(folder), "eval_seconds": time.perf_counter() - t0}
    else:
        scratch = (
            nullcontext(None) if keep else tempfile.TemporaryDirectory(prefix=".prune-", dir=out)
        )
        with scratch as tmp:
            pruned = Path(tmp) / "pruned" if tmp else out / "checkpoints" / path.stem
            report = api.prune(
                folder,
                pruned,
                spec=cell_spec(method, target, refine),
                nsamples=settings.nsamples,
                seqlen=settings.seqlen,
                seed=settings.seed,
                batch_size=settings.batch_size,
                device=settings.device,
                overwrite=True,  # a kept checkpoint of a run killed before its result
                progress=progress,
            )
            t0 = time.perf_counter()
            ppl = evaluate(pruned)
            record |= {
                "perplexity": ppl,
                "eval_seconds": time.perf_counter() - t0,
                "prune_seconds": report.seconds,
                "sparsity": report.sparsity,
                "report": report.to_dict(),
            }
    _save(path, record)
    return record, False


# A grid of more cells than this gets a warning with its estimated time first.
LARGE_GRID = 20
CELL_MINUTES = 8  # one cell, prune + perplexity, CPU-sized defaults on 2 cores


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_grid(
    models: Sequence[str],
    methods: Sequence[str],
    targets: Sequence[Target],
    refines: Sequence[str | None],
    settings: GridSettings,
    out: Path,
    *,
    keep: bool = False,
    progress: bool = False,
    log: Log = _stderr,
) -> list[dict[str, Any]]:
    """Every cell (plus each model's dense perplexity), in order; cached cells are reused."""
    for method in methods:  # an unknown name or parameter fails before any work
        for refine in refines:
            cell_spec(method, None, refine)
    out.mkdir(parents=True, exist_ok=True)
    cells: list[tuple[str, str, Target | None, str | None]]
    cells = [(m, "dense", None, None) for m in models]
    cells += [(m, me, t, r) for m in models for me in methods for t in targets for r in refines]
    todo = sum(
        _load(cell_path(out, cell_key(*c, settings)), cell_key(*c, settings)) is None for c in cells
    )
    if todo > LARGE_GRID:
        log(
            f"{todo} of {len(cells)} cells to run; at about {CELL_MINUTES} min per cell on a "
            f"2-core CPU that is roughly {todo * CELL_MINUTES / 60:.0f} h (cached cells are "
            "reused if interrupted; narrow it with --models/--methods/--patterns/--refine)"
        )
    records = []
    ran, spent = 0, 0.0
    for n, (model, method, target, refine) in enumerate(cells, 1):
        t0 = time.perf_counter()
        record, cached = run_cell(
            model, method, target, refine, settings, out, keep=keep, progress=progress
        )
        records.append(record)
        name = " ".join(
            [model_label(model), method] + ([target.label, refine or "none"] if target else [])
        )
        how = "cached"
        if not cached:
            ran, spent = ran + 1, spent + time.perf_counter() - t0
            eta = spent / ran * (todo - ran)
            how = f"{time.perf_counter() - t0:.0f} s; about {eta / 60:.0f} min left"
        log(f"[{n}/{len(cells)}] {name}: perplexity {record['perplexity']:.3f} ({how})")
    return records


def _series(record: dict[str, Any]) -> str:
    key = record["key"]
    return key["method"] + (f" + {key['refine']}" if key.get("refine") else "")


def markdown(records: Sequence[dict[str, Any]], settings: GridSettings) -> str:
    """Per model: perplexity by method × target; then every cell's details."""
    windows = "all" if settings.eval_windows is None else str(settings.eval_windows)
    lines = [
        "# Perplexity grid",
        "",
        f"Calibration: {settings.nsamples} × {settings.seqlen} tokens of the built-in "
        f"Wikipedia text (seed {settings.seed}); unstructured targets per-row. Perplexity: "
        f"built-in test split, {windows} windows of {settings.eval_seqlen} tokens. "
        f"Device: {settings.device}.",
    ]
    for model in dict.fromkeys(r["key"]["model"] for r in records):
        mine = [r for r in records if r["key"]["model"] == model]
        dense = [r["perplexity"] for r in mine if r["key"]["method"] == "dense"]
        pruned = [r for r in mine if r["key"]["method"] != "dense"]
        targets = list(dict.fromkeys(r["key"]["target"] for r in pruned))
        title = model_label(model) + (f" (dense {dense[0]:.2f})" if dense else "")
        lines += ["", f"## {title}", ""]
        lines += ["| method | refine | " + " | ".join(targets) + " |"]
        lines += ["|---|---|" + "---:|" * len(targets)]
        for series in dict.fromkeys(_series(r) for r in pruned):
            row = {r["key"]["target"]: r for r in pruned if _series(r) == series}
            first = next(iter(row.values()))["key"]
            values = [f"{row[t]['perplexity']:.2f}" if t in row else "" for t in targets]
            lines += [
                f"| {first['method']} | {first['refine'] or '—'} | " + " | ".join(values) + " |"
            ]
    lines += ["", "## Every cell", ""]
    lines += [
        "| model | method | refine | target | achieved sparsity | perplexity "
        "| prune s | eval s | mean layer recon. error |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        k = r["key"]
        if k["method"] == "dense":
            continue
        profile = layer_profile(r["report"])
        errors = [x["recon_error"] for x in profile if x["recon_error"] is not None]
        mean_err = f"{sum(errors) / len(errors):.4f}" if errors else "—"
        lines.append(
            f"| {model_label(k['model'])} | {k['method']} | {k['refine'] or '—'} | {k['target']} "
            f"| {r['sparsity']:.4f} | {r['perplexity']:.2f} | {r['prune_seconds']:.1f} "
            f"| {r['eval_seconds']:.1f} | {mean_err} |"
        )
    return "\n".join(lines) + "\n"


def _require_matplotlib() -> None:
    if importlib.util.find_spec("matplotlib") is None:
        raise SymPruneError(
            "the report's plots need matplotlib, which is not installed: "
            "pip install 'symprune[report]'"
        )


def plot_perplexity(records: Sequence[dict[str, Any]], model: str, path: Path) -> Path:
    """Perplexity against the target, one line per method (+ refinement), log scale.

    Unstructured targets are joined by lines; N:M targets are separate points
    at the right, with the dense model as a dashed line.
    """
    from matplotlib.figure import Figure

    mine = [r for r in records if r["key"]["model"] == model]
    pruned = [r for r in mine if r["key"]["method"] != "dense"]
    targets = sorted(
        dict.fromkeys(r["key"]["target"] for r in pruned),
        key=lambda t: (":" in t, parse_target(t).sparsity),
    )
    x = {t: i for i, t in enumerate(targets)}
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.subplots()
    for n, series in enumerate(dict.fromkeys(_series(r) for r in pruned)):
        points = sorted(
            (x[r["key"]["target"]], r["perplexity"], ":" not in r["key"]["target"])
            for r in pruned
            if _series(r) == series
        )
        color, marker = f"C{n % 10}", "osD^v<>ph*"[n % 10]
        line = [(i, p) for i, p, unstructured in points if unstructured]
        dots = [(i, p) for i, p, unstructured in points if not unstructured]
        if line:
            ax.plot(*zip(*line, strict=True), color=color, marker=marker, label=series)
        if dots:
            ax.plot(
                *zip(*dots, strict=True),
                color=color,
                marker=marker,
                linestyle="none",
                label=None if line else series,
            )
    for r in mine:
        if r["key"]["method"] == "dense":
            ax.axhline(r["perplexity"], color="k", linestyle="--", linewidth=1, label="dense")
    ax.set_yscale("log")
    ax.set_xticks(range(len(targets)), [t if ":" not in t else f"{t} (N:M)" for t in targets])
    ax.set_xlabel("sparsity target")
    ax.set_ylabel("perplexity (log scale)")
    ax.set_title(f"{model_label(model)}: perplexity vs sparsity")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small", ncols=2)
    fig.savefig(path, dpi=120)
    return path


def plot_layers(records: Sequence[dict[str, Any]], model: str, target: str, path: Path) -> Path:
    """Per-layer achieved sparsity and reconstruction error of every method at one target."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    cells = [r for r in records if r["key"]["model"] == model and r["key"].get("target") == target]
    fig = Figure(figsize=(7.5, 6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    unrecorded = []
    for n, r in enumerate(cells):
        profile = layer_profile(r["report"])
        index = [x["index"] for x in profile]
        style = {"color": f"C{n % 10}", "marker": ".", "label": _series(r)}
        top.plot(index, [x["sparsity"] for x in profile], **style)
        errors = [x["recon_error"] for x in profile]
        if all(e is not None for e in errors):
            bottom.plot(index, errors, **style)
        else:
            unrecorded.append(_series(r))
    top.set_ylabel("achieved sparsity")
    top.set_title(f"{model_label(model)}, {target}: per decoder layer")
    top.legend(fontsize="small", ncols=2)
    bottom.set_yscale("log")
    bottom.set_ylabel("relative reconstruction error\n‖pruned − dense‖² / ‖dense‖²")
    bottom.set_xlabel("decoder layer")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    if unrecorded:
        # Data-free methods run in the Rust engine, which never runs the layers.
        bottom.set_title("not recorded (Rust engine): " + ", ".join(unrecorded), fontsize="small")
    for ax in (top, bottom):
        ax.grid(True, alpha=0.3)
    fig.savefig(path, dpi=120)
    return path


@dataclass
class ReportFiles:
    """What :func:`run_report` wrote."""

    table: Path
    plots: list[Path]
    cells: int

    def to_dict(self) -> dict[str, Any]:
        plots = [str(p) for p in self.plots]
        return {"table": str(self.table), "plots": plots, "cells": self.cells}


def run_report(
    out: str | Path = "report",
    *,
    models: Sequence[str] = MODELS,
    methods: Sequence[str] = METHODS,
    targets: Sequence[str] = TARGETS,
    refines: Sequence[str] = REFINES,
    nsamples: int | None = None,
    seqlen: int | None = None,
    eval_seqlen: int | None = None,
    eval_windows: int | None = None,
    seed: int = 0,
    device: str | None = None,
    batch_size: int = 8,
    keep: bool = False,
    progress: bool = False,
    log: Log = _stderr,
) -> ReportFiles:
    """Runs (or continues) the grid into ``out`` and writes ``results.md`` and the plots.

    ``refines`` takes ``"none"`` for the unrefined mask; calibration and
    evaluation defaults are ``symprune prune``'s (CPU- or GPU-sized).
    """
    _require_matplotlib()  # before hours of pruning, not after
    out = Path(out)
    settings = GridSettings.resolve(
        device=device,
        nsamples=nsamples,
        seqlen=seqlen,
        eval_seqlen=eval_seqlen,
        eval_windows=eval_windows,
        seed=seed,
        batch_size=batch_size,
    )
    parsed = [parse_target(t) for t in targets]
    chosen_refines = [None if r == "none" else r for r in refines]
    records = run_grid(
        models,
        methods,
        parsed,
        chosen_refines,
        settings,
        out,
        keep=keep,
        progress=progress,
        log=log,
    )
    table = out / "results.md"
    table.write_text(markdown(records, settings))
    plots = []
    for model in models:
        key, label = model_key(model), model_label(model)
        plots.append(plot_perplexity(records, key, out / f"perplexity-{label}.png"))
        for target in parsed:
            name = out / f"layers-{label}-{target.slug}.png"
            plots.append(plot_layers(records, key, target.label, name))
    return ReportFiles(table, plots, len(records))
