"""2:4 speed on a GPU: torch's semi-structured sparse tensors vs dense (issue 13).

Times ``F.linear`` for every pruned linear of a 2:4 checkpoint (default: the
built-in SmolLM2 pruned 2:4 by magnitude, in Rust) and for a LLaMA-7B-shaped
stack (q/k/v/o 4096×4096, gate/up 11008×4096, down 4096×11008, 2:4 by magnitude
on random weights), fp16 and bf16, for 1 to 64 tokens, with
``torch.sparse.to_sparse_semi_structured`` against the dense weight; prints one
Markdown row per shape, dtype and token count with the speed-up, and checks
that the sparse product equals the dense one (the kernels reorder sums, so
within fp16/bf16 tolerance).

    python benches/bench_semistructured.py                    # needs a CUDA GPU (sm80+)
    python benches/bench_semistructured.py --model pruned/... # any 2:4 checkpoint
    python benches/bench_semistructured.py --check            # CPU: shapes and 2:4 only

Without a GPU, ``--check`` verifies what can be verified (the checkpoint is 2:4,
the shapes meet the kernels' alignment) and prints the plan.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from symprune import checkpoint, data

LLAMA7B = {
    "q/k/v/o_proj": (4096, 4096),
    "gate/up_proj": (11008, 4096),
    "down_proj": (4096, 11008),
}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def two_four(weight: torch.Tensor) -> torch.Tensor:
    """Keeps the 2 largest magnitudes of every 4 consecutive inputs (ties by index)."""
    groups = weight.reshape(weight.shape[0], -1, 4)
    keep = groups.abs().argsort(dim=-1, descending=True, stable=True)[..., :2]
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return (groups * mask).reshape(weight.shape)


def is_two_four(weight: torch.Tensor) -> bool:
    return bool(((weight.reshape(weight.shape[0], -1, 4) != 0).sum(-1) <= 2).all())


def checkpoint_shapes(model: Path) -> dict[str, torch.Tensor]:
    """One 2:4 weight per distinct shape of the checkpoint's pruned linears."""
    reader = checkpoint.CheckpointReader(model)
    found: dict[tuple[int, ...], tuple[str, torch.Tensor]] = {}
    for t in checkpoint.inspect(model, pattern="2:4").tensors:
        if t.selected and len(t.shape) == 2 and t.shape not in found:
            if t.nm_violations:
                sys.exit(f"{model}: {t.name} is not 2:4; prune with --pattern 2:4 first")
            found[t.shape] = (t.name, reader.torch(t.name))
    return {f"{n} {tuple(w.shape)}": w for n, w in found.values()}


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` CUDA-synchronized runs (after warm-up)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(label: str, weight: torch.Tensor, tokens: list[int], repeats: int) -> None:
    from torch.sparse import to_sparse_semi_structured

    for dname, dtype in DTYPES.items():
        dense = weight.to("cuda", dtype)
        sparse = to_sparse_semi_structured(dense)
        for n in tokens:
            # The kernels want the token count padded to a multiple of 8 or 16.
            x = torch.randn(max(n, 16), dense.shape[1], device="cuda", dtype=dtype)
            expected = F.linear(x, dense)
            got = F.linear(x, sparse)
            err = float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-6))
            t_dense = timed(lambda x=x, w=dense: F.linear(x, w), repeats)
            t_sparse = timed(lambda x=x, w=sparse: F.linear(x, w), repeats)
            print(
                f"| {label} | {dname} | {n} | {t_dense * 1e6:.1f} | {t_sparse * 1e6:.1f} "
                f"| {t_dense / t_sparse:.2f}× | {err:.1e} |",
                flush=True,
            )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="a 2:4 checkpoint (default: SmolLM2 pruned here)")
    ap.add_argument("--tokens", default="1,8,16,32,64", help="token counts (comma-separated)")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--check", action="store_true", help="CPU: check shapes and 2:4, no timing")
    args = ap.parse_args()
    tokens = [int(t) for t in args.tokens.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            model = Path(tmp) / "smollm2-2of4"
            checkpoint.prune_checkpoint(
                data.builtin_model(), model, method="magnitude", pattern="2:4"
            )
        weights = checkpoint_shapes(model)
        generator = torch.Generator().manual_seed(0)
        for label, (rows, cols) in LLAMA7B.items():
            w = torch.randn(rows, cols, generator=generator, dtype=torch.float32)
            weights[f"LLaMA-7B {label} {(rows, cols)}"] = two_four(w)
        for label, w in weights.items():
            aligned = w.shape[0] % 32 == 0 and w.shape[1] % 64 == 0
            print(f"{label}: 2:4 {is_two_four(w)}, kernel-aligned {aligned}")
        if args.check:
            return 0
        if not torch.cuda.is_available():
            sys.exit("no CUDA GPU: run with --check here, or on a GPU machine (sm80+)")
        print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}\n")
        print("| weight | dtype | tokens | dense µs | 2:4 µs | speed-up | max rel. error |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for label, w in weights.items():
            bench(label, w, tokens, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
