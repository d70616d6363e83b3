"""Plain numpy implementations of methods.md §3–§4, written for clarity.

Used only by the tests, to check the Rust kernels bit for bit. Numerics follow
the documented convention: element-wise f32; row/column reductions in f64,
sequential in index order (np.cumsum is sequential), rounded to f32 once;
powers in f64 rounded to f32 once; a zero norm contributes 0.
"""

from __future__ import annotations

import numpy as np

F32, F64 = np.float32, np.float64


def _col_sums(t64: np.ndarray) -> np.ndarray:
    return np.cumsum(t64, axis=0)[-1]


def _row_sums(t64: np.ndarray) -> np.ndarray:
    return np.cumsum(t64, axis=1)[:, -1]


def _safe_div(x: np.ndarray, d: np.ndarray) -> np.ndarray:
    out = np.zeros(np.broadcast_shapes(x.shape, d.shape), dtype=F32)
    np.divide(x, d, out=out, where=np.broadcast_to(d > 0, out.shape))
    return out


def _act(sq, a, cols):
    if sq is None or a == 0:
        return np.ones(cols, dtype=F32)
    return np.power(np.sqrt(sq.astype(F32)).astype(F64), a).astype(F32)


def _ri(absw, c, r, act):
    return (_safe_div(absw, c[None, :]) + _safe_div(absw, r[:, None])) * act[None, :]


def magnitude(w):
    return np.abs(w.astype(F32))


def wanda(w, sq):
    return np.abs(w.astype(F32)) * np.sqrt(sq.astype(F32))[None, :]


def ria(w, sq, a=0.5):
    absw = np.abs(w.astype(F32))
    c = _col_sums(absw.astype(F64)).astype(F32)
    r = _row_sums(absw.astype(F64)).astype(F32)
    return _ri(absw, c, r, _act(sq, a, w.shape[1]))


def lp_ria(w, sq, p=2.0, a=0.5):
    absw = np.abs(w.astype(F32))
    x = absw.astype(F64)
    term = x if p == 1 else x * x if p == 2 else np.power(x, p)

    def root(s):
        return s if p == 1 else np.sqrt(s) if p == 2 else np.power(s, 1.0 / p)

    c = root(_col_sums(term)).astype(F32)
    r = root(_row_sums(term)).astype(F32)
    return _ri(absw, c, r, _act(sq, a, w.shape[1]))


# -- stochRIA's generator, re-implemented from its specification (rng.rs) --
M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def mix64(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & M64
    return h


def subset(n, k, key, axis, index):
    state = key ^ mix64(((axis << 56) ^ index) & M64)
    idx = list(range(n))
    if k >= n:
        return idx
    for t in range(k):
        state = (state + GOLDEN) & M64
        r = t + ((mix64(state) * (n - t)) >> 64)
        idx[t], idx[r] = idx[r], idx[t]
    return idx[:k]


def stochria(w, sq, beta=0.1, seed=0, tensor="", a=0.5):
    absw = np.abs(w.astype(F32))
    rows, cols = absw.shape
    key = fnv1a64(tensor.encode()) ^ mix64(seed)

    def size(n):
        return min(max(1, int(np.floor(beta * n + 0.5))), n)

    r = np.empty(rows, dtype=F32)
    for i in range(rows):
        s = 0.0
        for j in subset(cols, size(cols), key, 0, i):
            s += float(absw[i, j])
        r[i] = s
    c = np.empty(cols, dtype=F32)
    for j in range(cols):
        s = 0.0
        for i in subset(rows, size(rows), key, 1, j):
            s += float(absw[i, j])
        c[j] = s
    return _ri(absw, c, r, _act(sq, a, cols))


def symmetric(w):
    absw = np.abs(w.astype(F32))
    x = absw.astype(F64)
    c = np.sqrt(_col_sums(x * x)).astype(F32)
    r = np.sqrt(_row_sums(x * x)).astype(F32)
    return absw * (c[None, :] + r[:, None])


def _scaled_by_mean(v, scale):
    mean = np.cumsum(v.astype(F64))[-1] / len(v)
    if mean <= 0:
        return np.zeros_like(v, dtype=F32)
    return ((scale * v.astype(F64)) / mean).astype(F32)


def symwanda(w, sq, out_sq, lam=1.0):
    absw = np.abs(w.astype(F32))
    a = _scaled_by_mean(np.sqrt(sq.astype(F32)), 1.0)
    b = _scaled_by_mean(np.sqrt(out_sq.astype(F32)), lam)
    return absw * (a[None, :] + b[:, None])


def owanda(w, out_sq):
    return np.abs(w.astype(F32)) * np.sqrt(out_sq.astype(F32))[:, None]


# -- masks --


def mask_per_row(s, sparsity):
    rows, cols = s.shape
    k = int(cols * sparsity)
    order = np.argsort(s, axis=1, kind="stable")[:, :k]
    m = np.zeros(s.shape, dtype=bool)
    np.put_along_axis(m, order, True, axis=1)
    return m


def mask_per_matrix(s, sparsity):
    k = int(s.size * sparsity)
    m = np.zeros(s.size, dtype=bool)
    m[np.argsort(s.reshape(-1), kind="stable")[:k]] = True
    return m.reshape(s.shape)


def mask_nm(s, n, m):
    rows, cols = s.shape
    g = s.reshape(rows, cols // m, m)
    order = np.argsort(g, axis=2, kind="stable")[:, :, :n]
    out = np.zeros(g.shape, dtype=bool)
    np.put_along_axis(out, order, True, axis=2)
    return out.reshape(rows, cols)


def mask_adaptive(s, sparsity):
    """Wanda's variant: α bisection as in Wanda's code, exact per-row counts."""
    rows, cols = s.shape
    order = np.argsort(s, axis=1, kind="stable")
    cum = np.cumsum(np.take_along_axis(s, order, axis=1).astype(F64), axis=1)
    total = np.cumsum(s.astype(F64), axis=1)[:, -1]

    def counts(alpha):
        return [int(np.sum(cum[i] <= alpha * total[i])) for i in range(rows)]

    def achieved(c):
        return sum(c) / s.size

    alpha, lo, hi = 0.4, 0.0, 0.8
    c = counts(alpha)
    while abs(achieved(c) - sparsity) > 0.001 and hi - lo >= 0.001:
        if achieved(c) > sparsity:
            alpha, hi = (alpha + lo) / 2.0, alpha
        else:
            alpha, lo = (alpha + hi) / 2.0, alpha
        c = counts(alpha)
    m = np.zeros(s.shape, dtype=bool)
    for i in range(rows):
        m[i, order[i, : c[i]]] = True
    return m
