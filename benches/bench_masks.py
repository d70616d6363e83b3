"""Per-row and N:M masks: symprune vs torch sort (Wanda's way), torch topk, numpy
argpartition, memcpy of the scores.

All in one process, on the same scores, best of N (wall time; symprune's CPU time,
all threads, is shown too, as a check on a loaded machine). Per-row prunes 50% of
each row; N:M (2:4 by default) runs every baseline on the scores viewed as
(rows, cols/M, M) groups. Run:

    python benches/bench_masks.py [--repeat 5] [--threads 2] [--nm 2:4 4:8]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from symprune import ops


def best_of(repeat, fn, *fn_args):
    return best_of_cpu(repeat, fn, *fn_args)[0]


def best_of_cpu(repeat, fn, *fn_args):
    """Best wall time and best CPU time (all threads of the process) of `repeat` calls."""
    wall, cpu = [], []
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        fn(*fn_args)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return min(wall), min(cpu)


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


def groups(s, m: int):
    return s.reshape(s.shape[0], -1, m)


def nm_sort(s: torch.Tensor, n: int, m: int) -> torch.Tensor:
    g = groups(s, m)
    mask = torch.zeros_like(g, dtype=torch.bool)
    idx = torch.sort(g, dim=-1, stable=True)[1][..., :n]
    return mask.scatter_(-1, idx, True).reshape(s.shape)


def nm_topk(s: torch.Tensor, n: int, m: int) -> torch.Tensor:
    g = groups(s, m)
    mask = torch.zeros_like(g, dtype=torch.bool)
    return mask.scatter_(-1, torch.topk(g, n, dim=-1, largest=False)[1], True).reshape(s.shape)


def nm_argpartition(s: np.ndarray, n: int, m: int) -> np.ndarray:
    g = groups(s, m)
    mask = np.zeros(g.shape, dtype=bool)
    np.put_along_axis(mask, np.argpartition(g, n - 1, axis=-1)[..., :n], True, axis=-1)
    return mask.reshape(s.shape)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--nm", nargs="*", default=["2:4"], help="N:M patterns to add (e.g. 2:4 4:8)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, numpy {np.__version__}, threads {args.threads}")
    header = "| shape | dtype | mask | symprune ms | symprune CPU ms | torch sort ms"
    header += " | torch topk ms | numpy argpartition ms | memcpy ms"
    print(header + " | sort / symprune | symprune / memcpy |")
    print("|" + "---|" * 11)
    for rows, cols in [(4096, 4096), (4096, 11008)]:
        base = torch.from_numpy(np.random.default_rng(0).random((rows, cols), dtype=np.float32))
        for dtype in (torch.float32, torch.bfloat16):
            s = base.to(dtype)
            k = cols // 2
            s_np = s.float().numpy() if dtype == torch.bfloat16 else s.numpy()
            src = s.view(torch.int16).numpy()
            dst = np.empty_like(src)
            memcpy = best_of(args.repeat, np.copyto, dst, src)
            ours = ops.mask(s, 0.5)
            # Same mask as Wanda's stable sort (ties by column).
            assert np.array_equal(ours, wanda_sort(s, k).numpy())
            cases = [
                (
                    "per-row 50%",
                    (lambda x: ops.mask(x, 0.5), s),
                    (wanda_sort, s, k),
                    (topk, s, k),
                    (argpartition, s_np, k),
                )
            ]
            for pat in args.nm:
                n, m = (int(v) for v in pat.split(":"))
                ours = ops.mask(s, pattern=pat)
                assert np.array_equal(ours, nm_sort(s, n, m).numpy())
                cases.append(
                    (
                        pat,
                        (lambda x, p=pat: ops.mask(x, pattern=p), s),
                        (nm_sort, s, n, m),
                        (nm_topk, s, n, m),
                        (nm_argpartition, s_np, n, m),
                    )
                )
            for name, (f, *a), *rest in cases:
                ours, ours_cpu = best_of_cpu(args.repeat, f, *a)
                t = [ours] + [best_of(args.repeat, g, *b) for g, *b in rest]
                ms = [v * 1e3 for v in t]
                print(
                    f"| {rows}x{cols} | {str(dtype).split('.')[-1]} | {name} | {ms[0]:.1f} "
                    f"| {ours_cpu * 1e3:.1f} | {ms[1]:.1f} | {ms[2]:.1f} | {ms[3]:.1f} "
                    f"| {memcpy * 1e3:.1f} | {t[1] / t[0]:.1f}x | {t[0] / memcpy:.1f}x |"
                )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS of the whole run: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
