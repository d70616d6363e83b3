"""SparseGPT on the CPU: the Rust column loop vs the torch column loop, side by side in
one process, on every linear of SmolLM2 with the Hessian of real calibration inputs;
then the whole job (`api.prune(method="sparsegpt")`, layer-streamed, with perplexity)
with each loop.

    python benches/bench_sparsegpt.py --nsamples 16 --seqlen 256
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.numpy import load_file

import symprune.methods.sparsegpt as sg
from symprune import api, data
from symprune.evaluation.perplexity import perplexity
from symprune.spec import PruneSpec
from symprune.util import peak_rss_mb


def loops(model: Path, stats: Path, spec: PruneSpec) -> list[dict]:
    """Per distinct shape: seconds of each loop over all its linears, mask agreement."""
    grams = {k.removesuffix(".gram"): v for k, v in load_file(stats).items() if k.endswith(".gram")}
    params = spec.effective_params
    blocksize, percdamp = int(params["blocksize"]), float(params["percdamp"])
    by_shape: dict[tuple, dict] = defaultdict(lambda: defaultdict(float))
    with safe_open(model / "model.safetensors", framework="pt") as f:
        for module, gram in grams.items():
            w, hinv = sg.inverse_factor(
                f.get_tensor(f"{module}.weight"), torch.from_numpy(gram), percdamp, module
            )
            ours, theirs = w.clone(), w.clone()
            t0 = time.perf_counter()
            mask = sg.column_loop(ours, hinv, blocksize, spec, module)
            t1 = time.perf_counter()
            expected = sg.torch_column_loop(theirs, hinv, blocksize, spec).numpy()
            t2 = time.perf_counter()
            row = by_shape[tuple(w.shape)]
            row["linears"] += 1
            row["rust"] += t1 - t0
            row["torch"] += t2 - t1
            row["agree"] += float((mask == expected).mean())
    out = []
    for shape, row in sorted(by_shape.items()):
        out.append({"shape": shape, **row, "agree": row["agree"] / row["linears"]})
    return out


def whole_job(model: Path, args, loop) -> dict:
    """The layer-streamed job with ``loop`` as SparseGPT's column loop: its wall time
    (no evaluation inside), then the output's perplexity."""
    original = sg.column_loop
    sg.column_loop = loop
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out"
            t0 = time.perf_counter()
            api.prune(
                model, out, method="sparsegpt", sparsity=args.sparsity, nsamples=args.nsamples,
                seqlen=args.seqlen, device="cpu", progress=False,
            )  # fmt: skip
            wall = time.perf_counter() - t0
            ppl = perplexity(out, seqlen=args.eval_seqlen, max_windows=args.eval_windows)
    finally:
        sg.column_loop = original
    return {"wall": wall, "ppl": ppl}


def torch_loop(w, hinv, blocksize, spec, tensor):
    return sg.torch_column_loop(w, hinv, blocksize, spec).numpy()


def torch_loop_float64(w, hinv, blocksize, spec, tensor):
    """The torch loop in float64 on the same factor: the rounding-free answer that both
    float32 loops approximate."""
    wide = w.double()
    mask = sg.torch_column_loop(wide, hinv.double(), blocksize, spec)
    w.copy_(wide)
    return mask.numpy()


def loop_table(model: Path, args, spec: PruneSpec) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        stats = Path(tmp) / "stats.safetensors"
        api.calibrate(
            model, stats, nsamples=args.nsamples, seqlen=args.seqlen, device="cpu", gram=True,
            progress=False,
        )  # fmt: skip
        rows = loops(model, stats, spec)
    print(
        "| shape (out × in) | linears | Rust loop s | torch loop s | torch ÷ Rust | masks agree |"
    )  # noqa: E501
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['shape'][0]} × {r['shape'][1]} | {r['linears']:.0f} | {r['rust']:.2f} "
            f"| {r['torch']:.2f} | {r['torch'] / r['rust']:.1f} | {r['agree']:.5f} |"
        )
    rust, torch_s = sum(r["rust"] for r in rows), sum(r["torch"] for r in rows)
    print(f"| all | {sum(r['linears'] for r in rows):.0f} | {rust:.2f} | {torch_s:.2f} "
          f"| {torch_s / rust:.1f} | |")  # fmt: skip


def job_table(model: Path, args) -> None:
    jobs = {
        "Rust loop": whole_job(model, args, sg.column_loop),
        "torch loop": whole_job(model, args, torch_loop),
        "torch loop in float64": whole_job(model, args, torch_loop_float64),
    }
    dense = perplexity(model, seqlen=args.eval_seqlen, max_windows=args.eval_windows)
    print(f"\n| whole job (CPU, prune only) | wall s | perplexity (dense {dense:.3f}) |")
    print("|---|---:|---:|")
    for name, j in jobs.items():
        print(f"| {name} | {j['wall']:.1f} | {j['ppl']:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--eval-seqlen", type=int, default=512)
    ap.add_argument("--eval-windows", type=int, default=40)
    ap.add_argument("--no-job", action="store_true", help="only the column loops")
    ap.add_argument("--no-loops", action="store_true", help="only the whole jobs")
    args = ap.parse_args()
    model = data.builtin_model("smollm2-135m")
    print(f"{os.cpu_count()} cores, {platform.platform()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; load {os.getloadavg()[0]:.1f}")  # fmt: skip
    if not args.no_loops:
        loop_table(model, args, PruneSpec(method="sparsegpt", sparsity=args.sparsity))
    if not args.no_job:
        job_table(model, args)
    print(f"peak RSS of this process {peak_rss_mb():.0f} MiB")


if __name__ == "__main__":
    main()
