"""Scale-out over torch.distributed: data-parallel calibration, shard-parallel pruning.

Launched by ``torchrun`` (anything that sets ``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``), a run is split two ways:

- data-aware methods: every rank streams the same layers but runs only its
  contiguous block of the calibration windows (all ranks draw the same list
  with the same seed); the additive statistics (methods.md §2) are summed over
  the ranks before a layer is pruned, so every rank computes the same masks and
  feeds its own windows through the pruned layer. Rank 0 alone writes.
- the Rust engine (data-free methods, ``--stats``): shard ``k`` goes to rank
  ``k % world``; each rank writes its shards, and rank 0 finishes the checkpoint
  (index, non-weight files, ``sparsity.json``) once all are done.

Backends: gloo on the CPU, NCCL on GPUs (rank ``r`` computes on ``cuda:LOCAL_RANK``).

Failure: the ranks agree at every layer boundary and at the end with a status
round, an all-reduce of one flag per rank. A rank that fails sets its flag in
the round its peers are waiting in (it has skipped nothing: every rank runs the
same sequence of rounds), so all of them stop with an error naming it; the
writer aborts and no ``sparsity.json`` appears. A rank that dies outright
breaks the connection (gloo raises; torchrun stops the other ranks).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from symprune.calibration.stats import LinearStats
from symprune.errors import DistributedError, InvalidInputError

T = TypeVar("T")


def split(n: int, rank: int, world: int) -> slice:
    """Rank ``rank``'s contiguous block of ``n`` items (the first ``n % world`` get one more)."""
    if n < world:
        raise InvalidInputError(
            f"nsamples: {n} calibration windows cannot be split over {world} ranks; "
            "every rank needs at least one"
        )
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


@dataclass
class Ranks:
    """The ranks of one run and the protocol between them (see the module docstring);
    a run closes it, so each run needs its own."""

    rank: int
    world: int
    device: str  # where this rank computes; collective tensors live there too
    _state: str = "open"  # "open", then "failed" or "closed": no more rounds

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def windows(self, n: int) -> slice:
        """This rank's block of ``n`` calibration windows."""
        return split(n, self.rank, self.world)

    def check(self) -> None:
        """A status round: returns when every rank got here without failing."""
        self._round(ok=True)

    def fail(self) -> None:
        """Tells the other ranks that this one failed (once; nothing after a closed run)."""
        if self._state == "open":
            try:
                self._round(ok=False)
            except DistributedError:
                pass

    def close(self) -> None:
        """Ends the protocol: no rounds after this (a later local failure concerns no peer)."""
        self._state = "closed"

    def _round(self, ok: bool) -> None:
        if self._state != "open":
            raise DistributedError(f"rank {self.rank}: the run already {self._state}")
        flags = torch.zeros(self.world, dtype=torch.int32, device=self.device)
        flags[self.rank] = 0 if ok else 1
        self._all_reduce(flags)
        failed = [r for r, f in enumerate(flags.tolist()) if f]
        if failed:
            self._state = "failed"
            if ok:
                who = ", ".join(map(str, failed))
                raise DistributedError(
                    f"rank {who} failed (its own error is in its output); "
                    f"rank {self.rank} stops too, nothing is finished"
                )

    def _all_reduce(self, tensor: torch.Tensor) -> None:
        try:
            dist.all_reduce(tensor)
        except RuntimeError as e:  # a peer died or hung up
            self._state = "failed"
            raise DistributedError(
                f"rank {self.rank}: lost contact with the other ranks, one of them crashed or "
                f"was stopped ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
            ) from e

    def reduce_stats(self, stats: dict[str, LinearStats]) -> None:
        """Sums every rank's statistics of one layer in place (the same result on all ranks).

        The float64 vectors and the counts travel in one buffer (counts are exact
        in float64); each float32 Hessian is summed in place, never copied.
        """
        ordered = [stats[k] for k in sorted(stats)]
        states = [s.state() for s in ordered]
        vectors = [t for st in states for t in st if t.dtype == torch.float64]
        hessians = [t for st in states for t in st if t.dtype != torch.float64]
        counts = [c for s in ordered for c in (s.sequences, s.tokens)]
        flat = torch.cat([*vectors, torch.tensor(counts, dtype=torch.float64, device=self.device)])
        self.check()  # nothing between this round and the sums below can fail alone
        if not ordered:  # no linear of this layer is pruned
            return
        self._all_reduce(flat)
        for h in hessians:
            self._all_reduce(h)
        sizes = [v.numel() for v in vectors]
        for t, part in zip(vectors, flat[: sum(sizes)].split(sizes), strict=True):
            t.copy_(part)
        totals = flat[sum(sizes) :].tolist()
        for i, s in enumerate(ordered):
            s.sequences, s.tokens = int(totals[2 * i]), int(totals[2 * i + 1])


def leader_finishes(ranks: Ranks | None, finish: Callable[[], T]) -> T | None:
    """The end of a run: every rank agrees it succeeded, rank 0 runs ``finish``
    (writes the output), then every rank learns that it did."""
    if ranks is None:
        return finish()
    ranks.check()
    result = finish() if ranks.leader else None
    ranks.check()
    ranks.close()
    return result


@contextmanager
def session(device: str) -> Iterator[Ranks | None]:
    """The ranks of a torchrun launch (``WORLD_SIZE`` > 1), or None when not launched so.

    Initializes the default process group unless the caller already did (and
    then destroys it at the end); NCCL when ``device`` is a GPU, gloo otherwise.
    On an exception inside, the other ranks are told (:meth:`Ranks.fail`).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield None
        return
    gpu = device.startswith("cuda")
    if device == "cuda":
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    if gpu:
        torch.cuda.set_device(device)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if gpu else "gloo")
    ranks = Ranks(rank=dist.get_rank(), world=dist.get_world_size(), device=device)
    try:
        yield ranks
    except BaseException:
        ranks.fail()
        raise
    finally:
        if created:
            dist.destroy_process_group()


__all__ = ["Ranks", "leader_finishes", "session", "split"]
