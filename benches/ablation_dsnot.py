"""DSnoT / R²-DSnoT perplexity on SmolLM2-135M (issue 5): the comparison, an ablation, the noise.

Every cell is one ``symprune.prune`` of the built-in model (layer by layer on the
CPU) followed by ``symprune.evaluation.perplexity`` on the built-in test split; the
pruned output is deleted right after. Each cell's result is cached as JSON under
``--out/cells`` (keyed by everything that defines it), so an interrupted run resumes
and a rerun only prints. Three groups of cells:

- ``compare``: wanda, ria, each plain / +dsnot / +r2dsnot, at 60% and 2:4
  (``--compare-seeds``, default seed 0 only); r2dsnot there is ``r2 base`` below;
- ``ablation``: R²-DSnoT variants on wanda 60% (``ri_phase``, ``alpha``, ``gamma``,
  ``on_reject``), plus DSnoT with the sign check, seed 0;
- ``noise``: the rows that matter (``--noise-rows``, and the ablation's best candidates
  ``--extra``) over ``--seeds``, reported as mean ± sample standard deviation and the
  paired difference to the plain mask of the same seed (mean and range).

Cells run in that priority order (compare grid last) so that a run cut short has the
rows that decide R²-DSnoT's defaults.

R²-DSnoT's parameters are always passed in full, so the cache and the tables do not
depend on the library's defaults. Run (the exact command of benches/RESULTS.md):

    python benches/ablation_dsnot.py --out benches/out/ablation_dsnot

Then print the tables alone with ``--report``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# One R²-DSnoT setting, always complete: the library's defaults before issue 5 ("r2 base").
# Issue 5 measured "r2 alpha=1" best and made it the default.
R2_BASE: dict[str, Any] = {
    "max_cycles": 50,
    "threshold": 0.1,
    "var_power": 1.0,
    "ri_phase": "prune",
    "alpha": 0.5,
    "gamma": 0.0,
    "p": 1.0,
    "same_sign": True,
    "on_reject": "stop",
}


def r2(**changes: Any) -> tuple[str, dict[str, Any]]:
    return "r2dsnot", {**R2_BASE, **changes}


# name -> (refine, refine_params)
REFINEMENTS: dict[str, tuple[str | None, dict[str, Any]]] = {
    "none": (None, {}),
    "dsnot": ("dsnot", {}),
    "dsnot sign": ("dsnot", {"same_sign": True}),
    "r2 base": r2(),
    "r2 ri=grow": r2(ri_phase="grow"),
    "r2 ri=none": r2(ri_phase="none"),
    "r2 alpha=1": r2(alpha=1.0),
    "r2 gamma=0.5": r2(gamma=0.5),
    "r2 gamma=1": r2(gamma=1.0),
    "r2 gamma=2": r2(gamma=2.0),
    "r2 skip": r2(on_reject="skip"),
    "r2 ri=none alpha=1": r2(ri_phase="none", alpha=1.0),
    "r2 ri=none gamma=0.5": r2(ri_phase="none", gamma=0.5),
    "r2 ri=none gamma=1": r2(ri_phase="none", gamma=1.0),
    "r2 gamma=0.5 alpha=1": r2(gamma=0.5, alpha=1.0),
}

ABLATION = [
    "none",
    "dsnot",
    "dsnot sign",
    "r2 base",
    "r2 ri=grow",
    "r2 ri=none",
    "r2 alpha=1",
    "r2 gamma=0.5",
    "r2 gamma=2",
    "r2 skip",
]
COMPARE_METHODS = ("wanda", "ria")
COMPARE_REFINE = ("none", "dsnot", "r2 base")
PATTERNS = ("60%", "2:4")


def settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "nsamples": args.nsamples,
        "seqlen": args.seqlen,
        "eval_seqlen": args.eval_seqlen,
        "eval_windows": args.eval_windows,
    }


def cell_key(method: str, pattern: str, refine: str, seed: int, cfg: dict[str, Any]) -> str:
    name, params = REFINEMENTS[refine]
    spec = {"method": method, "pattern": pattern, "refine": name, "params": params}
    spec |= {"seed": seed, **cfg}
    blob = json.dumps(spec, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def run_cell(
    method: str, pattern: str, refine: str, seed: int, cfg: dict[str, Any], cells: Path
) -> dict[str, Any]:
    path = cells / f"{cell_key(method, pattern, refine, seed, cfg)}.json"
    if path.exists():
        return json.loads(path.read_text())
    import symprune
    from symprune.evaluation.perplexity import perplexity

    name, params = REFINEMENTS[refine]
    target = {"pattern": "2:4"} if pattern == "2:4" else {"sparsity": float(pattern[:-1]) / 100}
    tmp = Path(tempfile.mkdtemp(prefix="ablation_dsnot-"))
    out = tmp / "pruned"
    try:
        t0 = time.perf_counter()
        symprune.prune(
            None,
            out,
            method=method,
            **target,
            refine=name,
            refine_params=dict(params) if name else None,
            nsamples=cfg["nsamples"],
            seqlen=cfg["seqlen"],
            seed=seed,
            device="cpu",
            progress=False,
        )
        t1 = time.perf_counter()
        ppl = perplexity(
            out, seqlen=cfg["eval_seqlen"], max_windows=cfg["eval_windows"], device="cpu"
        )
        t2 = time.perf_counter()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "method": method,
        "pattern": pattern,
        "refine": refine,
        "refine_name": name,
        "refine_params": params,
        "seed": seed,
        **cfg,
        "ppl": ppl,
        "prune_s": round(t1 - t0, 1),
        "eval_s": round(t2 - t1, 1),
    }
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"  {method:6s} {pattern:4s} {refine:22s} seed {seed}: ppl {ppl:8.2f} "
        f"(prune {t1 - t0:.0f}s, eval {t2 - t1:.0f}s)",
        file=sys.stderr,
        flush=True,
    )
    return result


def dense_ppl(cfg: dict[str, Any], cells: Path) -> float:
    path = cells / f"dense-{cfg['eval_seqlen']}-{cfg['eval_windows']}.json"
    if path.exists():
        return json.loads(path.read_text())["ppl"]
    from symprune.evaluation.perplexity import perplexity

    ppl = perplexity(None, seqlen=cfg["eval_seqlen"], max_windows=cfg["eval_windows"], device="cpu")
    path.write_text(json.dumps({"ppl": ppl, **cfg}) + "\n")
    return ppl


def plan(args: argparse.Namespace) -> list[tuple[str, str, str, int]]:
    """Cells in priority order, so that a cut-short run has the most important ones."""
    cells: list[tuple[str, str, str, int]] = []
    first = args.seeds[0]
    for refine in ("none", "dsnot", "r2 base"):
        cells.append(("wanda", "60%", refine, first))
    for refine in ABLATION:
        cells.append(("wanda", "60%", refine, first))
    for seed in args.seeds[1:]:
        for refine in args.noise_rows:
            cells.append(("wanda", "60%", refine, seed))
    for extra in args.extra:
        for seed in args.seeds:
            cells.append(("wanda", "60%", extra, seed))
    for seed in args.compare_seeds:
        for pattern in PATTERNS:
            for method in COMPARE_METHODS:
                for refine in COMPARE_REFINE:
                    cells.append((method, pattern, refine, seed))
    seen: set[tuple[str, str, str, int]] = set()
    return [c for c in cells if not (c in seen or seen.add(c))]


def load(cells: Path, cfg: dict[str, Any]) -> dict[tuple[str, str, str, int], float]:
    found = {}
    for path in cells.glob("*.json"):
        r = json.loads(path.read_text())
        if "method" not in r or any(r[k] != v for k, v in cfg.items()):
            continue
        if r["refine"] not in REFINEMENTS:
            continue
        key = (r["method"], r["pattern"], r["refine"], r["seed"])
        if path.stem == cell_key(*key, cfg):
            found[key] = r["ppl"]
    return found


def describe(refine: str) -> str:
    name, params = REFINEMENTS[refine]
    if name is None:
        return "(initial mask)"
    diff = {k: v for k, v in params.items() if name == "dsnot" or R2_BASE.get(k) != v}
    text = ", ".join(f"{k}={v}" for k, v in diff.items())
    if name == "dsnot":
        return text or "DSnoT defaults (sign check off)"
    return text or "alpha=0.5 (the old defaults)"


def stats_cell(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    sd = statistics.stdev(values)
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def report(found: dict[tuple[str, str, str, int], float], dense: float | None, seeds: list[int]):
    lines = []
    if dense is not None:
        lines.append(f"Dense SmolLM2-135M: {dense:.2f}.\n")

    # Compare table: per pattern, mean ± sd over whatever seeds exist (n shown).
    lines.append("Compare (mean ± sample sd over the seeds measured; n = seeds):\n")
    lines.append("| initial | refinement | 60% | n | 2:4 | n |")
    lines.append("|---|---|---:|---:|---:|---:|")
    for method in COMPARE_METHODS:
        for refine in COMPARE_REFINE:
            row = [method, {"none": "–", "r2 base": "r2dsnot (α=0.5)"}.get(refine, refine)]
            for pattern in PATTERNS:
                key = (method, pattern, refine)
                vals = [v for (*cell, _), v in sorted(found.items()) if tuple(cell) == key]
                row += [stats_cell(vals), str(len(vals))]
            lines.append("| " + " | ".join(row) + " |")

    # Ablation and noise: wanda 60%, every refinement measured.
    lines.append("\nWanda 60%: per seed; mean ± sample sd; the paired difference (same seed) to")
    lines.append("the plain Wanda mask and to DSnoT: mean [min…max over the seeds both have]:\n")
    header = ["refinement", "setting"] + [f"seed {s}" for s in seeds]
    header += ["mean ± sd", "Δ vs wanda", "Δ vs dsnot"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * 2 + "---:|" * (len(header) - 2))
    order = [r for r in REFINEMENTS if any(("wanda", "60%", r, s) in found for s in seeds)]
    for refine in order:
        per = [found.get(("wanda", "60%", refine, s)) for s in seeds]
        vals = [v for v in per if v is not None]
        row = [refine, describe(refine)]
        row += [f"{v:.2f}" if v is not None else "–" for v in per]
        row.append(stats_cell(vals))
        for other in ("none", "dsnot"):
            ref = [found.get(("wanda", "60%", other, s)) for s in seeds]
            deltas = [v - r for v, r in zip(per, ref, strict=True) if None not in (v, r)]
            if refine == other or not deltas:
                row.append("–")
            elif len(deltas) == 1:
                row.append(f"{deltas[0]:+.2f}")
            else:
                spread = f"{min(deltas):+.2f}…{max(deltas):+.2f}"
                row.append(f"{statistics.mean(deltas):+.2f} [{spread}]")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("benches/out/ablation_dsnot"))
    ap.add_argument("--nsamples", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--eval-seqlen", type=int, default=256)
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--seeds", default="0,1,2", help="calibration seeds of the noise rows")
    ap.add_argument("--compare-seeds", default="0", help="seeds of the compare grid")
    ap.add_argument(
        "--noise-rows",
        default="none,dsnot,r2 base",
        help="wanda-60%% refinements measured over every seed (names as in the tables)",
    )
    ap.add_argument(
        "--extra",
        default="r2 alpha=1,r2 gamma=0.5",
        help="more wanda-60%% refinements over every seed (the ablation's best at seed 0)",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget-min", type=float, default=None, help="stop starting cells after this")
    ap.add_argument("--report", action="store_true", help="print the tables only, run nothing")
    args = ap.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.compare_seeds = [int(s) for s in args.compare_seeds.split(",") if s]
    args.noise_rows = [r for r in args.noise_rows.split(",") if r]
    args.extra = [r for r in args.extra.split(",") if r]
    for r in args.noise_rows + args.extra:
        if r not in REFINEMENTS:
            ap.error(f"unknown refinement {r!r}; known: {', '.join(REFINEMENTS)}")

    os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))
    cells = args.out / "cells"
    cells.mkdir(parents=True, exist_ok=True)
    cfg = settings(args)
    dense = None
    if not args.report:
        import torch

        torch.set_num_threads(args.threads)
        start = time.perf_counter()
        dense = dense_ppl(cfg, cells)
        todo = plan(args)
        print(f"{len(todo)} cells, settings {cfg}", file=sys.stderr, flush=True)
        for cell in todo:
            if args.budget_min and time.perf_counter() - start > 60 * args.budget_min:
                print("budget spent; rerun to continue", file=sys.stderr)
                break
            run_cell(*cell, cfg, cells)
    else:
        path = cells / f"dense-{cfg['eval_seqlen']}-{cfg['eval_windows']}.json"
        dense = json.loads(path.read_text())["ppl"] if path.exists() else None
    seeds = sorted({s for (*_, s) in load(cells, cfg)} | set(args.seeds))
    print(
        f"Settings: calibration {args.nsamples} × {args.seqlen} tokens (built-in corpus), "
        f"perplexity on the first {args.eval_windows} windows of {args.eval_seqlen} tokens "
        f"of the built-in test split; CPU, {args.threads} threads.\n"
    )
    print(report(load(cells, cfg), dense, seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
