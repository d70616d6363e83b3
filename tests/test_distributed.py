"""Scale-out: data-parallel calibration and shard-parallel pruning against one process.

Two gloo ranks on the CPU, spawned with ``torch.multiprocessing`` (the same
environment variables as torchrun) or launched by ``torchrun`` itself.

Tolerance: the statistics are sums, and a different split of the windows sums
them in another order. Wanda and RIA read float64 sums rounded to float32, so
their masks come out identical. SparseGPT reads the float32 Hessian sum, and
its rank-deficient Hessian (4 × 64 tokens < 576 inputs) makes near-ties flip:
when the ranks' batches coincide with the single process's (same summation
order) the masks are identical; when they do not, ≥ 99.9% of every first-layer
tensor's mask entries agree (measured: ≥ 99.97%), and later layers compound
the differences of the updated weights, so they are not compared.
"""

from __future__ import annotations

import filecmp
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from reference.checkpoints import tiny_llama, tree_digest
from symprune import api, checkpoint, data
from symprune.calibration import distributed
from symprune.calibration.pipeline import Report, prune_streamed
from symprune.calibration.stats import LinearStats
from symprune.calibration.streaming import StreamedModel
from symprune.errors import CheckpointError, InvalidInputError
from symprune.spec import Calibration, PruneSpec

# name -> (method, batch size, targets); every case: 4 windows of 64 tokens.
# Batch 1 splits the windows so that the ranks sum them in another order than
# one process; batch 2 gives each rank exactly one of the single process's
# batches. SparseGPT's column loop is slow on the CPU, hence few layers.
CASES: dict[str, tuple[str, int, str | None]] = {
    "wanda": ("wanda", 1, None),
    "ria": ("ria", 1, None),
    "sparsegpt": ("sparsegpt", 2, r"model\.layers\.[01]\..*"),
    "sparsegpt-reordered": ("sparsegpt", 1, r"model\.layers\.0\..*"),
}
WRITTEN = "wanda"  # the case whose output checkpoint is compared byte for byte
FAILING_LAYER = 2


def run_case(
    name: str, model: Path, calib: Path, out: Path, ranks: distributed.Ranks | None
) -> Report:
    method, batch, targets = CASES[name]
    return prune_streamed(
        model,
        out / name if name == WRITTEN else None,
        PruneSpec(method=method, targets=targets),
        Calibration(source=str(calib), nsamples=4, seqlen=64, batch_size=batch),
        device="cpu",
        keep_masks=True,
        progress=False,
        ranks=ranks,
    )


class _Counting(distributed.Ranks):
    """Ranks that note how many sequences each layer's statistics hold, before and after
    the sum over the ranks."""

    def __init__(self, ranks: distributed.Ranks) -> None:
        super().__init__(ranks.rank, ranks.world, ranks.device)
        self.counts: set[tuple[int, int]] = set()

    def reduce_stats(self, stats: dict[str, LinearStats]) -> None:
        before = {s.sequences for s in stats.values()}
        super().reduce_stats(stats)
        self.counts |= {(b, s.sequences) for b in before for s in stats.values()}


def _failing_run(rank: int, model: str, calib: str, out: Path, fail: Any) -> str:
    """A wanda run in which rank 1 calls ``fail()`` instead of loading layer FAILING_LAYER;
    what the run ended with on this rank."""
    original = StreamedModel.load_layer
    if rank == 1:

        def load_layer(self: StreamedModel, index: int) -> torch.nn.Module:
            return fail() if index == FAILING_LAYER else original(self, index)

        StreamedModel.load_layer = load_layer  # type: ignore[method-assign]
    ranks = distributed.Ranks(rank, 2, "cpu")
    try:
        prune_streamed(
            model,
            out,
            PruneSpec(),
            Calibration(source=calib, nsamples=4, seqlen=64, batch_size=1),
            device="cpu",
            progress=False,
            ranks=ranks,
        )
        return "finished"
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    finally:
        StreamedModel.load_layer = original  # type: ignore[method-assign]


def _rank_main(rank: int, port: int, model: str, calib: str, out: str) -> None:
    """One of two ranks: every case, then a run in which rank 1 raises mid-way, then one
    in which it dies (exit status 3)."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE="2",
        RANK=str(rank),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)  # two ranks on two cores
    results: dict[str, Any] = {}
    with distributed.session("cpu") as ranks:
        assert ranks is not None and ranks.rank == rank
        for name in CASES:
            run = _Counting(ranks)
            results[name] = run_case(name, Path(model), Path(calib), Path(out), run).masks
            results[f"{name} sequences"] = run.counts

        def raise_() -> None:
            raise RuntimeError(f"injected failure on rank 1 at layer {FAILING_LAYER}")

        results["failure"] = _failing_run(rank, model, calib, Path(out) / "failed", raise_)

        def die() -> None:
            _save(results, out, rank)
            os._exit(3)

        results["crash"] = _failing_run(rank, model, calib, Path(out) / "crashed", die)
    _save(results, out, rank)


def _save(results: dict[str, Any], out: str, rank: int) -> None:
    with open(Path(out) / f"rank{rank}.pkl", "wb") as f:
        pickle.dump(results, f)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text(data.builtin_corpus().calibration[:60_000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank; keeps float results comparable
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def two_ranks(smollm2_dir, calib_file, tmp_path_factory) -> tuple[Path, list[dict[str, Any]]]:
    """Every case run by two gloo ranks: the output folder and each rank's results."""
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("ranks")
    args = (free_port(), str(smollm2_dir), str(calib_file), str(out))
    context = mp.start_processes(_rank_main, args=args, nprocs=2, join=False)
    for process in context.processes:
        process.join(timeout=600)
    assert [p.exitcode for p in context.processes] == [0, 3]  # rank 1 died on purpose
    results = []
    for rank in (0, 1):
        with open(out / f"rank{rank}.pkl", "rb") as f:
            results.append(pickle.load(f))
    return out, results


@pytest.fixture(scope="module")
def one_process(smollm2_dir, calib_file, tmp_path_factory, one_thread) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("single")
    return out, {n: run_case(n, smollm2_dir, calib_file, out, None).masks for n in CASES}


def test_split_gives_contiguous_blocks_covering_every_window():
    for n, world in [(4, 2), (5, 2), (7, 3), (3, 3)]:
        blocks = [distributed.split(n, r, world) for r in range(world)]
        assert [i for b in blocks for i in range(n)[b]] == list(range(n))
        assert max(b.stop - b.start for b in blocks) - min(b.stop - b.start for b in blocks) <= 1
    with pytest.raises(InvalidInputError, match="at least one"):
        distributed.split(1, 0, 2)


@pytest.mark.real
@pytest.mark.parametrize("name", ["wanda", "ria", "sparsegpt"])
def test_two_ranks_compute_the_masks_of_one_process(two_ranks, one_process, name):
    (_, ranks), (_, single) = two_ranks, one_process
    for rank in ranks:
        assert rank[f"{name} sequences"] == {(2, 4)}  # its 2 windows, then all 4
        assert set(rank[name]) == set(single[name]) and single[name]
        for tensor, mask in single[name].items():
            np.testing.assert_array_equal(rank[name][tensor], mask, err_msg=tensor)


@pytest.mark.real
def test_sparsegpt_in_another_summation_order_within_tolerance(two_ranks, one_process):
    (_, (rank0, rank1)), (_, single) = two_ranks, one_process
    name = "sparsegpt-reordered"
    assert len(single[name]) == 7
    for tensor, mask in single[name].items():
        np.testing.assert_array_equal(rank0[name][tensor], rank1[name][tensor])  # all ranks agree
        assert (rank0[name][tensor] == mask).mean() >= 0.999, tensor


@pytest.mark.real
def test_only_rank_0_writes_the_same_checkpoint(two_ranks, one_process):
    (out, _), (single_out, _) = two_ranks, one_process
    written, expected = out / WRITTEN, single_out / WRITTEN
    assert (written / checkpoint.MANIFEST).is_file()
    names = sorted(p.name for p in expected.iterdir())
    assert sorted(p.name for p in written.iterdir()) == names
    _, mismatch, errors = filecmp.cmpfiles(expected, written, names, shallow=False)
    assert not mismatch and not errors


@pytest.mark.real
def test_a_failing_rank_fails_the_run_everywhere(two_ranks):
    out, (rank0, rank1) = two_ranks
    assert rank1["failure"] == f"RuntimeError: injected failure on rank 1 at layer {FAILING_LAYER}"
    assert rank0["failure"].startswith("DistributedError: rank 1 failed"), rank0["failure"]
    assert not (out / "failed" / checkpoint.MANIFEST).exists()


@pytest.mark.real
def test_a_rank_that_dies_fails_the_run(two_ranks):
    out, (rank0, _) = two_ranks
    assert rank0["crash"].startswith("DistributedError: rank 0: lost contact"), rank0["crash"]
    assert not (out / "crashed" / checkpoint.MANIFEST).exists()


def torchrun(*args: str | Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    return subprocess.run(
        [*cmd, "-m", "symprune.cli", *map(str, args)], capture_output=True, text=True, timeout=300
    )


@pytest.mark.real
def test_calibrate_under_torchrun_sums_the_statistics_of_one_process(
    smollm2_dir, calib_file, tmp_path, one_thread
):
    from safetensors.numpy import load_file

    window = ["--calib", calib_file, "--nsamples", "4", "--seqlen", "64", "--batch-size", "1"]
    done = torchrun("calibrate", smollm2_dir, "--out", tmp_path / "2.st", "--device=cpu", *window)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("statistics written to") == 1  # rank 0 alone reports
    api.calibrate(
        smollm2_dir,
        tmp_path / "1.st",
        calibration=str(calib_file),
        nsamples=4,
        seqlen=64,
        batch_size=1,
        device="cpu",
        progress=False,
    )
    two, one = load_file(tmp_path / "2.st"), load_file(tmp_path / "1.st")
    assert set(two) == set(one)
    for key, value in one.items():  # float64 sums in another order, rounded to float32
        np.testing.assert_allclose(two[key], value, rtol=1e-6, atol=0, err_msg=key)


@pytest.fixture
def sharded(tmp_path) -> Path:
    return tiny_llama(tmp_path / "model")


def test_shard_parallel_under_torchrun_writes_the_bytes_of_one_process(sharded, tmp_path):
    single = checkpoint.prune_checkpoint(sharded, tmp_path / "one", method="symmetric")
    done = torchrun("prune", sharded, tmp_path / "two", "--method", "symmetric", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    assert tree_digest(tmp_path / "two") == tree_digest(tmp_path / "one")
    assert '"overall_sparsity"' in done.stdout and done.stdout.count("overall_sparsity") == 1
    assert len(single.tensors) == 21


def test_shard_parallel_parts_then_finalize(sharded, tmp_path):
    out = tmp_path / "parts"
    checkpoint.prune_checkpoint(sharded, tmp_path / "one", method="magnitude")
    part1 = checkpoint.prune_checkpoint(sharded, out, method="magnitude", rank=1, world_size=2)
    assert {t.name.split(".")[2] for t in part1.tensors} == {"1"}  # shard 2 of 3: layer 1
    assert not (out / checkpoint.MANIFEST).exists()
    with pytest.raises(CheckpointError, match=r"model-00001-of-00003.safetensors \(rank 0\)"):
        checkpoint.finalize(out)
    checkpoint.prune_checkpoint(sharded, out, method="magnitude", rank=0, world_size=2)
    done = checkpoint.finalize(out)
    assert len(done.tensors) == 21 and done.sparsity == pytest.approx(0.5)
    assert tree_digest(out) == tree_digest(tmp_path / "one")


def test_parts_are_refused_where_they_cannot_work(sharded, tmp_path):
    with pytest.raises(InvalidInputError, match="give both"):
        api.prune(sharded, tmp_path / "o", method="magnitude", rank=0)
    with pytest.raises(InvalidInputError, match="torchrun"):
        api.prune(sharded, tmp_path / "o", method="wanda", rank=0, world_size=2)
    with pytest.raises(InvalidInputError, match="finalize"):
        api.prune(sharded, tmp_path / "o", method="magnitude", rank=0, world_size=2, evaluate=True)
    with pytest.raises(InvalidInputError, match="rank 2 of world size 2"):
        api.prune(sharded, tmp_path / "o", method="magnitude", rank=2, world_size=2)
