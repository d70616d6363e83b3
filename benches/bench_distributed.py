"""Data-parallel calibration: 2 gloo ranks vs 1 process, and what the ranks all-reduce.

Runs ``symprune.calibration.pipeline.calibrate_streamed`` (the dense statistics of every
linear, layer by layer, methods.md §2) on the built-in SmolLM2-135M:

- one process with 2 torch threads (the machine's 2 cores), and with 1 for scale;
- two ranks (``torch.multiprocessing`` with torchrun's environment, gloo), one
  torch thread each, every rank on its contiguous half of the windows.

Each timing is the ``calibrate_streamed`` call (model skeleton, capture, the 30
layers, the file write; not the interpreter start), started together on both
ranks after a barrier; best of ``--repeat``. Throughput = calibration tokens /
seconds; CPU seconds (all threads, both ranks) say what a run costs however busy
the machine is. The all-reduced bytes are counted from the tensors handed to
``torch.distributed.all_reduce`` (numel × element size; a ring all-reduce sends
about 2·(world−1)/world of that per rank); SparseGPT's float32 Hessians, not
collected by ``calibrate``, are added from the linears' shapes (4·in² bytes each).
Appends the table and the command to ``benches/RESULTS.md`` unless ``--no-record``.

    python benches/bench_distributed.py --nsamples 32 --seqlen 256 --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from symprune import data
from symprune.calibration import distributed
from symprune.calibration.pipeline import calibrate_streamed, calibration_ids
from symprune.calibration.stats import linear_modules
from symprune.calibration.streaming import StreamedModel
from symprune.spec import Calibration

RESULTS = Path(__file__).with_name("RESULTS.md")


def timed_runs(args: argparse.Namespace, folder: Path, ranks_of: Any) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of each ``calibrate_streamed`` call (``ranks_of()`` gives each
    run's ranks); CPU seconds count every thread of this process."""
    calib = Calibration(
        source=str(folder / "calib.txt"),
        nsamples=args.nsamples,
        seqlen=args.seqlen,
        batch_size=args.batch_size,
    )
    times = []
    for k in range(args.repeat):
        ranks = ranks_of()
        if ranks is not None:
            dist.barrier()
        start, cpu = time.perf_counter(), time.process_time()
        calibrate_streamed(
            None,
            folder / f"stats{k}.st",
            calibration=calib,
            device="cpu",
            progress=False,
            ranks=ranks,
        )
        times.append((time.perf_counter() - start, time.process_time() - cpu))
    return times


def rank_main(rank: int, port: int, args: argparse.Namespace, folder: Path) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE="2",
        RANK=str(rank),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    reduced = {"bytes": 0, "calls": 0}
    all_reduce = dist.all_reduce

    def counting(tensor: torch.Tensor, *a: Any, **kw: Any) -> Any:
        reduced["bytes"] += tensor.numel() * tensor.element_size()
        reduced["calls"] += 1
        return all_reduce(tensor, *a, **kw)

    dist.all_reduce = counting  # what the statistics cost on the wire
    with distributed.session("cpu") as ranks:
        assert ranks is not None

        def fresh() -> distributed.Ranks:
            return distributed.Ranks(ranks.rank, ranks.world, ranks.device)

        times = timed_runs(args, folder, fresh)
    (folder / f"rank{rank}.json").write_text(json.dumps({"times": times, **reduced}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hessian_bytes(model_dir: Path) -> tuple[int, int]:
    """Float32 Hessian bytes of one decoder layer's linears, and the layer count."""
    streamed = StreamedModel(model_dir, "cpu")
    layer = streamed.layers[0]
    return sum(4 * m.in_features**2 for m in linear_modules(layer).values()), streamed.num_layers


def main() -> None:
    import torch.multiprocessing as mp

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args()

    model_dir = data.builtin_model()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "calib.txt").write_text(data.builtin_corpus().calibration[:2_000_000])
        # Tokenizes once into symprune's cache, so no timed run pays for it.
        calibration_ids(model_dir, Calibration(str(folder / "calib.txt"), 1, 8))
        torch.set_num_threads(1)
        single_1 = timed_runs(args, folder, lambda: None)
        torch.set_num_threads(2)
        single = timed_runs(args, folder, lambda: None)
        mp.spawn(rank_main, args=(free_port(), args, folder), nprocs=2)
        ranks = [json.loads((folder / f"rank{r}.json").read_text()) for r in (0, 1)]
    tokens = args.nsamples * args.seqlen
    # A 2-rank run lasts as long as its slower rank and costs both ranks' CPU.
    two = [
        (max(a[0], b[0]), a[1] + b[1]) for a, b in zip(*(r["times"] for r in ranks), strict=True)
    ]
    hessians, layers = hessian_bytes(model_dir)
    per_run = ranks[0]["bytes"] / args.repeat
    rows = [
        ("1 process, 2 torch threads", min(single)),
        ("2 gloo ranks, 1 torch thread each", min(two)),
        ("1 process, 1 torch thread (for scale)", min(single_1)),
    ]
    lines = [
        f"| run | seconds (best of {args.repeat}) | tokens/s | speed-up | CPU seconds "
        "| tokens per CPU second |",
        "|---|---|---|---|---|---|",
        *(
            f"| {n} | {s:.2f} | {tokens / s:.0f} | {rows[0][1][0] / s:.2f}x | {c:.2f} "
            f"| {tokens / c:.0f} |"
            for n, (s, c) in rows
        ),
        "",
        "| all-reduced per decoder layer (2 ranks) | bytes |",
        "|---|---|",
        f"| statistics: float64 sums and counts, status flags (whole run / {layers}; "
        f"{ranks[0]['calls'] // args.repeat} all-reduce calls per run) | {per_run / layers:,.0f} |",
        f"| SparseGPT adds: float32 Hessians, 4·in² per linear | {hessians:,} |",
    ]
    table = "\n".join(lines)
    print(table)
    if args.no_record:
        return
    load = os.getloadavg()
    command = "python benches/bench_distributed.py " + " ".join(sys.argv[1:])
    section = f"""
## Data-parallel calibration: 2 gloo ranks vs 1 process ({time.strftime("%Y-%m-%d")})

Command: `{command}`

Machine: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), no GPU;
load average {load[0]:.1f} at the end (other jobs share the machine). SmolLM2-135M
(30 layers, float32), `symprune calibrate`'s work (`calibrate_streamed`): {args.nsamples}
windows × {args.seqlen} tokens, batch {args.batch_size}; the single process uses 2 torch
threads, each rank 1 (2 cores in all). Seconds: the call, model skeleton to stats file,
not the interpreter start; ranks start after a barrier and the slower one counts; CPU
seconds: all threads, both ranks. The bytes are the tensors handed to all-reduce
(a ring all-reduce sends about 2·(world−1)/world of them per rank).

{table}
"""
    with RESULTS.open("a", encoding="utf-8") as f:
        f.write(section)


if __name__ == "__main__":
    main()
