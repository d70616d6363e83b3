"""Plain exact-objective swaps (methods.md §9), row by row, from the formulas.

Used only by the tests. Every round starts from scratch: ``δ = W_i ⊙ pruned``,
``g = H δ`` and ``L = δᵀ H δ`` in float64 (no incremental update), then
``a_p = 2 w_p g_p + w_p² H_pp`` for the kept ``p``, ``b_q = −2 w_q g_q + w_q² H_qq``
for the pruned ``q``, candidates by full sorts on ``(value, column)``, and
``Δ_pq = a_p + b_q − 2 w_p w_q H_pq`` on every pair of a group's block (the whole row,
or each group of ``M`` under N:M). The smallest ``(Δ, p, q)`` is applied while
``Δ < −tol · L``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Row:
    """What the swaps did to one row."""

    mask: np.ndarray
    swaps: int = 0
    stopped: bool = False
    losses: list[float] | None = None  # L before the first round and after every swap


def row_loss(w: np.ndarray, mask: np.ndarray, h: np.ndarray) -> float:
    """``δᵀ H δ`` of one row, from scratch in float64."""
    d = np.where(mask, w.astype(np.float64), 0.0)
    return float(d @ h.astype(np.float64) @ d)


def losses(w: np.ndarray, mask: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Every row's ``δᵀ H δ``, from scratch in float64."""
    d = np.where(mask, w.astype(np.float64), 0.0)
    return ((d @ h.astype(np.float64)) * d).sum(axis=1)


def swaps_row(
    w: np.ndarray,
    mask: np.ndarray,
    h: np.ndarray,  # float64
    *,
    candidates: int,
    max_swaps: int,
    tol: float,
    group: int,
) -> Row:
    w = w.astype(np.float64)
    diag = np.diag(h)
    out = Row(mask=mask.copy(), losses=[])
    while out.swaps < max_swaps:
        delta = np.where(out.mask, w, 0.0)
        g = h @ delta
        loss = float(delta @ g)
        out.losses.append(loss)
        a = (2 * w * g + w * w * diag).tolist()
        b = (-2 * w * g + w * w * diag).tolist()
        wl = w.tolist()
        best = None
        for start in range(0, len(w), group):
            cols = range(start, start + group)
            kept = sorted((j for j in cols if not out.mask[j]), key=lambda j: (a[j], j))
            pruned = sorted((j for j in cols if out.mask[j]), key=lambda j: (b[j], j))
            for p in kept[:candidates]:
                for q in pruned[:candidates]:
                    d = a[p] + b[q] - 2 * wl[p] * wl[q] * float(h[p, q])
                    if best is None or (d, p, q) < best:
                        best = (d, p, q)
        if best is None or not best[0] < -tol * loss:
            out.stopped = True
            break
        _, p, q = best
        out.mask[p], out.mask[q] = True, False
        out.swaps += 1
    out.losses.append(row_loss(w, out.mask, h))
    return out


def swaps(
    w: np.ndarray,
    prune: np.ndarray,
    gram: np.ndarray,
    *,
    candidates: int = 16,
    max_swaps: int = 32,
    tol: float = 1e-6,
    nm: tuple[int, int] | None = None,
    rows: range | None = None,
) -> list[Row]:
    """The swaps of every row of ``w`` (or of ``rows``), one :class:`Row` each."""
    group = w.shape[1] if nm is None else nm[1]
    gram = gram.astype(np.float64)
    return [
        swaps_row(
            w[i],
            prune[i],
            gram,
            candidates=candidates,
            max_swaps=max_swaps,
            tol=tol,
            group=group,
        )
        for i in (range(w.shape[0]) if rows is None else rows)
    ]
