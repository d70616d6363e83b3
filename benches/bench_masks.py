"""Per-row mask: symprune vs torch sort (Wanda's way), torch topk, numpy argpartition, memcpy.

All in one process, on the same scores, interleaved, best of N. Run:

    python benches/bench_masks.py [--repeat 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from symprune import ops


def best_of(repeat, fn, *fn_args):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*fn_args)
        times.append(time.perf_counter() - t0)
    return min(times)


def wanda_sort(s: torch.Tensor, k: int) -> torch.Tensor:
    mask = torch.zeros_like(s, dtype=torch.bool)
    idx = torch.sort(s, dim=-1, stable=True)[1][:, :k]
    return mask.scatter_(1, idx, True)


def topk(s: torch.Tensor, k: int) -> torch.Tensor:
    mask = torch.zeros_like(s, dtype=torch.bool)
    return mask.scatter_(1, torch.topk(s, k, dim=1, largest=False)[1], True)


def argpartition(s: np.ndarray, k: int) -> np.ndarray:
    mask = np.zeros(s.shape, dtype=bool)
    np.put_along_axis(mask, np.argpartition(s, k - 1, axis=1)[:, :k], True, axis=1)
    return mask


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, numpy {np.__version__}, threads {args.threads}")
    header = "| shape | dtype | symprune ms | torch sort ms | torch topk ms | numpy argpartition ms"
    print(header + " | memcpy ms | sort / symprune | symprune / memcpy |")
    print("|" + "---|" * 9)
    for rows, cols in [(4096, 4096), (4096, 11008)]:
        base = torch.from_numpy(np.random.default_rng(0).random((rows, cols), dtype=np.float32))
        for dtype in (torch.float32, torch.bfloat16):
            s = base.to(dtype)
            k = cols // 2
            s_np = s.float().numpy() if dtype == torch.bfloat16 else s.numpy()
            ours = ops.mask(s, 0.5)
            # Same mask as Wanda's stable sort (ties by column).
            assert np.array_equal(ours, wanda_sort(s, k).numpy())
            src = s.view(torch.int16).numpy()
            dst = np.empty_like(src)
            t = {
                "symprune": best_of(args.repeat, ops.mask, s, 0.5),
                "sort": best_of(args.repeat, wanda_sort, s, k),
                "topk": best_of(args.repeat, topk, s, k),
                "argpartition": best_of(args.repeat, argpartition, s_np, k),
                "memcpy": best_of(args.repeat, np.copyto, dst, src),
            }
            ms = {name: v * 1e3 for name, v in t.items()}
            print(
                f"| {rows}x{cols} | {str(dtype).split('.')[-1]} | {ms['symprune']:.1f} "
                f"| {ms['sort']:.1f} | {ms['topk']:.1f} | {ms['argpartition']:.1f} "
                f"| {ms['memcpy']:.1f} | {t['sort'] / t['symprune']:.1f}x "
                f"| {t['symprune'] / t['memcpy']:.1f}x |"
            )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS of the whole run: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
