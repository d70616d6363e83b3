"""DSnoT: symprune's Rust kernel vs a vectorized torch CPU implementation, and its cost
relative to computing the initial Wanda mask.

The torch version below is the same algorithm (methods.md §5 as defined in
``rust/symprune-core/src/dsnot.rs``) written the way the reference code is: all rows
at once, full sorts, one gather/scatter step per cycle. It must return the same mask,
which is asserted. Every measurement runs in its own process so that its peak RSS
(VmHWM, reset after the inputs are built) is its own. Run:

    python benches/bench_dsnot.py [--rows 4096 --cols 11008 --repeat 7 --threads 2]

Wall times are the best of ``--repeat`` runs (torch: of 2); CPU seconds are those of
the same run, all threads together.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

VAR_EPS = float(np.finfo(np.float32).smallest_normal)


def torch_dsnot(
    w: torch.Tensor,
    prune: torch.Tensor,
    in_sq: torch.Tensor,
    act_sum: torch.Tensor,
    act_var: torch.Tensor,
    *,
    max_cycles: int = 50,
    threshold: float = 0.1,
    var_power: float = 1.0,
    same_sign: bool = False,
) -> torch.Tensor:
    """Unstructured DSnoT, vectorized over rows (every row prunes the same count)."""
    w = w.float()
    rows, cols = w.shape
    k = int(prune[0].sum())
    mask = prune.clone()
    d = w * act_sum[None, :]
    err = (d.double() * mask).sum(dim=1)
    sign0 = torch.sign(err)
    divisor = torch.pow(act_var.double(), var_power).float().clamp_min(VAR_EPS)
    grow_score = d / divisor[None, :]
    # Columns of each row, pruned first then kept, each part in column order.
    by_state = torch.sort(mask.to(torch.int8), dim=1, descending=True, stable=True).indices
    pruned, kept = by_state[:, :k], by_state[:, k:]
    # Grow order: the pruned weights by (G, column).
    grow = pruned.gather(1, torch.sort(grow_score.gather(1, pruned), dim=1, stable=True).indices)
    # Prune order: kept with D < 0 by Wanda ascending, then D > 0 descending; D = 0 last,
    # outside the order.
    # torch's float32 CPU sqrt is not correctly rounded; via float64 it is.
    wanda = w.abs() * torch.sqrt(in_sq.double()).float()[None, :]
    kept = kept.gather(1, torch.sort(wanda.gather(1, kept), dim=1, stable=True).indices)
    dk = d.gather(1, kept)
    n = kept.shape[1]
    q = torch.arange(n).expand(rows, n)
    rank = torch.where(dk < 0, q, torch.where(dk > 0, 2 * n - q, 3 * n + q))
    prune_order = kept.gather(1, rank.argsort(dim=1))

    r = torch.arange(rows)
    grow_head, grow_tail = torch.zeros(rows, dtype=torch.long), torch.full((rows,), k)
    prune_head, prune_tail = torch.zeros(rows, dtype=torch.long), (dk != 0).sum(dim=1)
    active = torch.ones(rows, dtype=torch.bool)
    for _ in range(max_cycles):
        if not active.any():
            break
        from_tail = err > 0
        prune_from_tail = err < 0
        active &= (err.abs() > threshold) & (grow_head < grow_tail) & (prune_head < prune_tail)
        g = grow[r, torch.where(from_tail, grow_tail - 1, grow_head).clamp(0, k - 1)]
        p = prune_order[r, torch.where(prune_from_tail, prune_tail - 1, prune_head).clamp(0, n - 1)]
        after = (err + d[r, p].double()) - d[r, g].double()
        if same_sign:
            active &= torch.sign(after) == sign0
        mask[r[active], p[active]] = True
        mask[r[active], g[active]] = False
        err = torch.where(active, after, err)
        grow_tail -= (active & from_tail).long()
        grow_head += (active & ~from_tail).long()
        prune_tail -= (active & prune_from_tail).long()
        prune_head += (active & ~prune_from_tail).long()
    return mask


def layer(rows: int, cols: int, seed: int = 0):
    """A random layer with plausible statistics (sum in seqlen × mean units)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(0.02)
    in_sq = (rng.gamma(2.0, 1.0, cols) * 50).astype(np.float32)
    act_sum = (rng.standard_normal(cols) * 5).astype(np.float32)
    act_var = rng.gamma(2.0, 0.5, cols).astype(np.float32)
    return w, in_sq, act_sum, act_var


def memory_mib() -> tuple[float, float]:
    """(current RSS, peak RSS since the last reset) in MiB."""
    status = Path("/proc/self/status").read_text().splitlines()
    kib = {line.split(":")[0]: int(line.split()[1]) for line in status if line.startswith("Vm")}
    return kib["VmRSS"] / 1024, kib["VmHWM"] / 1024


# name: (label, implementation, threshold)
RUNS = {
    "wanda": ("initial Wanda mask (ops.wanda + ops.mask)", "wanda", None),
    "rust": ("DSnoT, Rust (ops.dsnot), f32", "rust", 0.1),
    "rust-bf16": ("DSnoT, Rust, bf16 weights", "rust", 0.1),
    "rust-r2": ("R²-DSnoT, Rust (ops.r2dsnot), defaults", "r2", 0.1),
    "torch": ("DSnoT, torch vectorized (reference style)", "torch", 0.1),
    "rust-t0": ("DSnoT, Rust, threshold 0 (every row runs 50 cycles)", "rust", 0.0),
    "torch-t0": ("DSnoT, torch, threshold 0", "torch", 0.0),
}


def child(what: str, args: argparse.Namespace) -> None:
    from symprune import ops

    torch.set_num_threads(args.threads)
    _, impl, threshold = RUNS[what]
    w, in_sq, act_sum, act_var = layer(args.rows, args.cols)
    weight = torch.from_numpy(w).to(torch.bfloat16) if what == "rust-bf16" else torch.from_numpy(w)
    start = ops.mask(ops.wanda(weight, in_sq), args.sparsity)
    stats = (in_sq, act_sum, act_var)
    tensors = [torch.from_numpy(x) for x in (start, *stats)]
    runs = {
        "wanda": lambda: (ops.mask(ops.wanda(weight, in_sq), args.sparsity), {}),
        "rust": lambda: ops.dsnot(weight, start, *stats, threshold=threshold),
        "r2": lambda: ops.r2dsnot(weight, start, *stats, threshold=threshold),
        "torch": lambda: (torch_dsnot(weight, *tensors, threshold=threshold).numpy(), {}),
    }
    base, _ = memory_mib()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM
    times, out = [], None
    for _ in range(args.repeat):
        out = None  # the previous result must not count towards this run's peak
        t0, c0 = time.perf_counter(), time.process_time()
        out, report = runs[impl]()
        times.append((time.perf_counter() - t0, time.process_time() - c0))
    _, peak = memory_mib()
    np.save(Path(args.out) / f"{what}.npy", out)
    wall, cpu = min(times)
    result = {"seconds": wall, "cpu": cpu, "peak": peak, "base": base}
    result |= {k: getattr(report, k) for k in ("swaps", "cycles") if hasattr(report, k)}
    print(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=11008)
    ap.add_argument("--sparsity", type=float, default=0.6)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args)
        return

    results = {}
    with tempfile.TemporaryDirectory() as out:
        for what, (_, impl, _) in RUNS.items():
            repeat = 2 if impl == "torch" else args.repeat
            cmd = [sys.executable, __file__, "--child", what, "--out", out]
            cmd += ["--rows", str(args.rows), "--cols", str(args.cols)]
            cmd += ["--sparsity", str(args.sparsity), "--repeat", str(repeat)]
            cmd += ["--threads", str(args.threads)]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            results[what] = json.loads(done.stdout.strip().splitlines()[-1])
        for a, b in (("rust", "torch"), ("rust-t0", "torch-t0")):
            same = (np.load(Path(out) / f"{a}.npy") == np.load(Path(out) / f"{b}.npy")).all()
            assert same, f"{a} and {b} masks differ"

    print(
        f"{args.rows}x{args.cols} f32, {args.sparsity:.0%} per-row Wanda start, max_cycles 50, "
        f"threads {args.threads}, torch {torch.__version__}; Rust and torch masks equal"
    )
    print(
        "| step | seconds (best) | CPU seconds | / Rust DSnoT | / Wanda mask | swaps | cycles "
        "| peak RSS MiB | above inputs MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for what, (label, _, _) in RUNS.items():
        r = results[what]
        ref = results["rust-t0" if what.endswith("t0") else "rust"]["seconds"]
        print(
            f"| {label} | {r['seconds']:.3f} | {r['cpu']:.3f} | {r['seconds'] / ref:.1f}x "
            f"| {r['seconds'] / results['wanda']['seconds']:.2f}x | {r.get('swaps', '')} "
            f"| {r.get('cycles', '')} | {r['peak']:.0f} | {r['peak'] - r['base']:.0f} |"
        )


if __name__ == "__main__":
    main()
