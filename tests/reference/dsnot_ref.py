"""Plain DSnoT and R²-DSnoT (methods.md §5, §7), row by row, with lists and full sorts.

Written for clarity, used only by the tests to check the Rust kernels bit for
bit. The definitions and numerics are those spelled out in
``rust/symprune-core/src/dsnot.rs``:

- float32 element-wise values, computed here exactly (or correctly rounded) in
  float64 and rounded to float32 once, which gives the float32 operation's result;
- float64 for the row error and the penalty sum, accumulated in column order;
- orders by ``(value, column)``; ``-0.0 == 0.0``, as Python compares them.

Inputs are lists (or arrays) of float32-representable floats; ``w`` a list of rows,
``prune`` a list of rows of bools (True = pruned).

R²-DSnoT's exact decision (``decision="exact"``, methods.md §9) recomputes the row's
loss ``δᵀ H δ`` from scratch for every candidate (``swaps_ref.row_loss``).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from reference.swaps_ref import row_loss

VAR_EPS = 2.0**-126  # the smallest normal float32


def f32s(values: list[float]) -> list[float]:
    """Each value rounded to float32."""
    return array("f", values).tolist()


def sign(x: float) -> int:
    return (x > 0) - (x < 0)


def lp_term(x: float, p: float) -> float:
    return x if p == 1 else x * x if p == 2 else x**p


def lp_root(s: float, p: float) -> float:
    return s if p == 1 else math.sqrt(s) if p == 2 else s ** (1.0 / p)


def relative(row: list[float], c: list[float], r: float) -> list[float]:
    """RIA's relative importance ``|w|/c_j + |w|/r`` of one row in float32 (a zero sum adds 0)."""
    by_col = f32s([abs(x) / c[j] if c[j] > 0 else 0.0 for j, x in enumerate(row)])
    by_row = f32s([abs(x) / r if r > 0 else 0.0 for x in row])
    return f32s([a + b for a, b in zip(by_col, by_row, strict=True)])


def abs_sums(w: list[list[float]]) -> tuple[list[float], list[float]]:
    """Column and row sums of ``|W|`` in float64, in index order, rounded to float32."""
    cols = len(w[0])
    c = [0.0] * cols
    for row in w:
        for j in range(cols):
            c[j] += abs(row[j])
    r = []
    for row in w:
        s = 0.0
        for x in row:
            s += abs(x)
        r.append(s)
    return f32s(c), f32s(r)


@dataclass
class Row:
    """What refinement did to one row."""

    mask: list[bool]
    swaps: int = 0
    cycles: int = 0
    stopped: bool = False
    phi: list[float] = field(default_factory=list)  # R²: Φ after every accepted swap


@dataclass
class Rule:
    max_cycles: int
    threshold: float
    same_sign: bool
    nm: tuple[int, int] | None
    regions: bool = False  # R²: pointers stay inside their sign regions
    gamma: float | None = None  # R²: the objective Φ (None: DSnoT)
    p: float = 1.0
    skip: bool = False


def refine_row(
    init: list[bool],
    d: list[float],
    grow_score: list[float],
    prune_score: list[float],
    wanda: list[float],
    rule: Rule,
    loss_of: Callable[[list[bool]], float] | None = None,
) -> Row:
    """One row of DSnoT / R²-DSnoT (the cycle of methods.md §5 and §7); ``loss_of``
    (the exact decision) is the row's loss of a mask."""
    cols = len(init)
    out = Row(mask=list(init))
    err = 0.0
    for j in range(cols):
        if init[j]:
            err += d[j]
    sign0 = sign(err)

    # Grow order: the initially pruned weights by (G, column).
    grow = sorted((j for j in range(cols) if init[j]), key=lambda j: (grow_score[j], j))
    # Prune order: kept with D < 0 ascending, then kept with D > 0 descending.
    neg = sorted(
        (j for j in range(cols) if not init[j] and d[j] < 0), key=lambda j: (prune_score[j], j)
    )
    pos = sorted(
        (j for j in range(cols) if not init[j] and d[j] > 0), key=lambda j: (prune_score[j], j)
    )
    prune = neg + pos[::-1]
    grow_head, grow_tail = 0, len(grow)  # unused entries: [head, tail)
    prune_head, prune_tail = 0, len(prune)
    passed = [False] * cols  # N:M: kept weights passed over by "skip"

    q = 0.0
    base0 = abs(err) if loss_of is None else loss_of(init)
    pen0 = 0.0
    if rule.gamma is not None:
        for j in range(cols):
            if init[j]:
                q += lp_term(wanda[j], rule.p)
        pen0 = lp_root(max(q, 0.0), rule.p)

    def phi(mask: list[bool], e: float, qq: float) -> float:
        x = abs(e) if loss_of is None else loss_of(mask)
        rel_err = x / base0 if base0 != 0 else 0.0
        rel_pen = rule.gamma * (lp_root(max(qq, 0.0), rule.p) / pen0) if pen0 != 0 else 0.0
        return rel_err + rel_pen

    while out.cycles < rule.max_cycles:
        out.cycles += 1
        if abs(err) <= rule.threshold:
            out.stopped = True
            break
        # Grow candidate: the largest G when err > 0, else the smallest.
        g = None
        if grow_head < grow_tail:
            if err > 0:
                g = grow[grow_tail - 1]
                if rule.regions and not grow_score[g] > 0:
                    g = None
            else:
                g = grow[grow_head]
                if rule.regions and not grow_score[g] < 0:
                    g = None
        if g is None:
            out.stopped = True
            break
        # Prune candidate.
        p = None
        if rule.nm is None:
            if prune_head < prune_tail:
                if err < 0:
                    p = prune[prune_tail - 1]
                    if rule.regions and not d[p] > 0:
                        p = None
                else:
                    p = prune[prune_head]
                    if rule.regions and not d[p] < 0:
                        p = None
            if p is None:
                out.stopped = True
                break
        else:
            m = rule.nm[1]
            start = g - g % m
            free = [
                j
                for j in range(start, start + m)
                if not init[j] and not out.mask[j] and not passed[j]
            ]
            if free:
                p = min(free, key=lambda j: (prune_score[j], j))

        accepted = False
        if p is not None:
            after = (err + d[p]) - d[g]
            accepted = not rule.same_sign or sign(after) == sign0
            q_after = q
            if rule.gamma is not None:
                q_after = (q + lp_term(wanda[p], rule.p)) - lp_term(wanda[g], rule.p)
                swapped = list(out.mask)
                swapped[p], swapped[g] = True, False
                accepted = accepted and phi(swapped, after, q_after) < phi(out.mask, err, q)
        if not accepted and not rule.skip:
            out.stopped = True
            break
        # Advance the pointers used.
        if err > 0:
            grow_tail -= 1
        else:
            grow_head += 1
        if rule.nm is None:
            if err < 0:
                prune_tail -= 1
            else:
                prune_head += 1
        elif p is not None and not accepted:
            passed[p] = True
        if accepted:
            out.mask[p] = True
            out.mask[g] = False
            err, q = after, q_after
            out.swaps += 1
            if rule.gamma is not None:
                out.phi.append(phi(out.mask, err, q))
    return out


def _columns(w, in_sq, act_sum, act_var, var_power):
    norm = f32s([math.sqrt(x) for x in in_sq])
    divisor = [max(v, VAR_EPS) for v in f32s([v**var_power for v in act_var])]
    d = [f32s([x * act_sum[j] for j, x in enumerate(row)]) for row in w]
    wanda = [f32s([abs(x) * norm[j] for j, x in enumerate(row)]) for row in w]
    return norm, divisor, d, wanda


def dsnot(
    w,
    prune,
    in_sq,
    act_sum,
    act_var,
    *,
    max_cycles=50,
    threshold=0.1,
    var_power=1.0,
    same_sign=None,
    nm=None,
    initial_scores=None,
) -> list[Row]:
    """DSnoT, one :class:`Row` per row of ``w``."""
    w = [[float(x) for x in row] for row in w]
    _, divisor, d, wanda = _columns(w, in_sq, act_sum, act_var, var_power)
    rule = Rule(max_cycles, threshold, nm is not None if same_sign is None else same_sign, nm)
    rows = []
    for i in range(len(w)):
        grow_score = f32s([d[i][j] / divisor[j] for j in range(len(w[i]))])
        score = wanda[i]
        if nm is not None and initial_scores is not None:
            score = [float(x) for x in initial_scores[i]]
        rows.append(refine_row(list(prune[i]), d[i], grow_score, score, wanda[i], rule))
    return rows


def r2dsnot(
    w,
    prune,
    in_sq,
    act_sum,
    act_var,
    *,
    max_cycles=50,
    threshold=0.1,
    var_power=1.0,
    ri_phase="prune",
    alpha=1.0,
    gamma=0.0,
    p=1.0,
    same_sign=True,
    on_reject="stop",
    decision="mean",
    nm=None,
    gram=None,
) -> list[Row]:
    """R²-DSnoT, one :class:`Row` per row of ``w``; ``decision="exact"`` needs ``gram``."""
    w = [[float(x) for x in row] for row in w]
    norm, divisor, d, wanda = _columns(w, in_sq, act_sum, act_var, var_power)
    act = f32s([n**alpha if alpha != 0 else 1.0 for n in norm])
    c, r = abs_sums(w)
    rule = Rule(
        max_cycles,
        threshold,
        same_sign,
        nm,
        regions=True,
        gamma=gamma,
        p=p,
        skip=on_reject == "skip",
    )
    rows = []
    for i, row in enumerate(w):
        ri = relative(row, c, r[i])
        grow_score = f32s([d[i][j] / divisor[j] for j in range(len(row))])
        if ri_phase == "grow":
            grow_score = f32s([g * ri[j] for j, g in enumerate(grow_score)])
        if ri_phase == "prune":
            score = f32s([ri[j] * act[j] for j in range(len(row))])
        else:
            score = f32s([abs(x) * act[j] for j, x in enumerate(row)])
        loss_of = None
        if decision == "exact":
            w_i = np.asarray(row)

            def loss_of(mask, w_i=w_i):
                return row_loss(w_i, np.asarray(mask), gram)

        rows.append(refine_row(list(prune[i]), d[i], grow_score, score, wanda[i], rule, loss_of))
    return rows
