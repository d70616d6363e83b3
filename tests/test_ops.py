"""symprune.ops against the plain numpy reference, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reference import scores as ref
from symprune import InvalidInputError, SymPruneError, ops

SHAPES = [(1, 1), (3, 7), (17, 33), (64, 96), (5, 128)]


def rand(shape, seed, ties=False):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(np.float32)
    if ties:  # few distinct values, like a dequantized checkpoint
        w = np.round(w * 2) / 2
    return w


def stats(rows, cols, seed):
    rng = np.random.default_rng(seed + 1)
    sq = (rng.random(cols) * 5).astype(np.float32)
    out_sq = (rng.random(rows) * 3).astype(np.float32)
    return sq, out_sq


def all_scores(w, sq, out_sq, tensor="t", w_ref=None):
    """(ours, reference) pairs for every score; ``w_ref`` is ``w`` as a float32 numpy array."""
    if w_ref is None:
        w_ref = w
    ours_w, w = w, w_ref
    return {
        "magnitude": (ops.magnitude(ours_w), ref.magnitude(w)),
        "wanda": (ops.wanda(ours_w, sq), ref.wanda(w, sq)),
        "ria": (ops.ria(ours_w, sq), ref.ria(w, sq)),
        "ria-a1": (ops.ria(ours_w, sq, a=1.0), ref.ria(w, sq, a=1.0)),
        "ria-data-free": (ops.ria(ours_w, None, a=0.0), ref.ria(w, None, a=0.0)),
        "lp-ria-p2": (ops.lp_ria(ours_w, sq, p=2.0), ref.lp_ria(w, sq, p=2.0)),
        "lp-ria-p3": (ops.lp_ria(ours_w, sq, p=3.0), ref.lp_ria(w, sq, p=3.0)),
        "stochria": (
            ops.stochria(ours_w, sq, beta=0.1, seed=3, tensor=tensor),
            ref.stochria(w, sq, beta=0.1, seed=3, tensor=tensor),
        ),
        "stochria-no-act": (
            ops.stochria(ours_w, None, beta=0.3, seed=1, tensor=tensor),
            ref.stochria(w, None, beta=0.3, seed=1, tensor=tensor),
        ),
        "symmetric": (ops.symmetric(ours_w), ref.symmetric(w)),
        "symwanda": (ops.symwanda(ours_w, sq, out_sq), ref.symwanda(w, sq, out_sq)),
        "symwanda-l0.5": (
            ops.symwanda(ours_w, sq, out_sq, lam=0.5),
            ref.symwanda(w, sq, out_sq, lam=0.5),
        ),
        "owanda": (ops.owanda(ours_w, out_sq), ref.owanda(w, out_sq)),
    }


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ties", [False, True])
def test_scores_match_reference(shape, ties):
    w = rand(shape, sum(shape), ties)
    sq, out_sq = stats(*shape, 7)
    for name, (ours, theirs) in all_scores(w, sq, out_sq).items():
        assert ours.dtype == np.float32 and ours.shape == shape, name
        np.testing.assert_array_equal(ours, theirs, err_msg=name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_score_like_their_f32_values(dtype):
    t = torch.from_numpy(rand((19, 40), 5)).to(dtype)
    w32 = t.float().numpy()
    sq, out_sq = stats(19, 40, 2)
    for name, (ours, theirs) in all_scores(t, sq, out_sq, w_ref=w32).items():
        np.testing.assert_array_equal(ours, theirs, err_msg=name)
    if dtype == torch.float16:  # numpy float16 arrays take the same path
        np.testing.assert_array_equal(ops.wanda(t.numpy(), sq), ref.wanda(w32, sq))


def test_stochria_properties():
    w = rand((30, 50), 1)
    sq, _ = stats(30, 50, 1)
    a = ops.stochria(w, sq, beta=0.1, seed=0, tensor="layer.a")
    np.testing.assert_array_equal(a, ops.stochria(w, sq, beta=0.1, seed=0, tensor="layer.a"))
    assert not np.array_equal(a, ops.stochria(w, sq, beta=0.1, seed=0, tensor="layer.b"))
    assert not np.array_equal(a, ops.stochria(w, sq, beta=0.1, seed=1, tensor="layer.a"))
    np.testing.assert_array_equal(ops.stochria(w, sq, beta=1.0, tensor="x"), ops.ria(w, sq))
    # beta = 0.1 of 30 rows is 3 rows per column subset (half up).
    assert [len(ref.subset(30, 3, 1, 1, j)) for j in range(2)] == [3, 3]


@pytest.mark.parametrize("shape", SHAPES + [(8, 1000)])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.6, 0.999])
def test_unstructured_masks_match_reference(shape, sparsity):
    for ties in (False, True):
        s = np.abs(rand(shape, 11, ties))
        m = ops.mask(s, sparsity)
        np.testing.assert_array_equal(m, ref.mask_per_row(s, sparsity))
        assert (m.sum(axis=1) == int(shape[1] * sparsity)).all()
        m = ops.mask(s, sparsity, pattern="per-matrix")
        np.testing.assert_array_equal(m, ref.mask_per_matrix(s, sparsity))
        assert m.sum() == int(s.size * sparsity)


@pytest.mark.parametrize("nm", ["2:4", "4:8", "1:4", "3:4"])
def test_nm_masks_match_reference(nm):
    n, m = map(int, nm.split(":"))
    for ties in (False, True):
        s = np.abs(rand((13, 8 * m), 3, ties))
        got = ops.mask(s, pattern=nm)
        np.testing.assert_array_equal(got, ref.mask_nm(s, n, m))
        assert (got.reshape(13, -1, m).sum(axis=2) == n).all()


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_adaptive_mask_matches_reference(sparsity):
    s = np.abs(rand((40, 256), 9))
    got = ops.mask(s, sparsity, pattern="adaptive")
    np.testing.assert_array_equal(got, ref.mask_adaptive(s, sparsity))
    assert abs(got.mean() - sparsity) <= 0.002


def test_negative_scores_and_signed_zero_rank_by_value():
    s = np.array([[0.0, -0.0, -1.0, 2.0, -0.0, 0.0]], dtype=np.float32)
    np.testing.assert_array_equal(ops.mask(s, 0.5), ref.mask_per_row(s, 0.5))
    np.testing.assert_array_equal(ops.mask(s, 0.5), [[True, True, True, False, False, False]])


@pytest.mark.parametrize("dtype", [np.float32, np.float16, "bf16"])
def test_apply_mask_zeroes_in_place(dtype):
    w = rand((6, 16), 4)
    t = torch.from_numpy(w.copy()).to(torch.bfloat16) if dtype == "bf16" else w.astype(dtype)
    before = t.clone() if dtype == "bf16" else t.copy()
    m = ops.mask(ops.magnitude(t), 0.5)
    assert ops.apply_mask(t, m) == m.sum()
    after = t.float().numpy() if dtype == "bf16" else t.astype(np.float32)
    ref_before = before.float().numpy() if dtype == "bf16" else before.astype(np.float32)
    assert (after[m] == 0).all()
    np.testing.assert_array_equal(after[~m], ref_before[~m])


def test_non_contiguous_input_is_copied_for_reads_and_refused_for_writes():
    w = rand((16, 12), 2)
    view = w.T  # Fortran order
    np.testing.assert_array_equal(ops.magnitude(view), ref.magnitude(np.ascontiguousarray(view)))
    with pytest.raises(InvalidInputError, match="C-contiguous"):
        ops.apply_mask(view, np.zeros(view.shape, dtype=bool))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda w, sq: ops.wanda(w[0], sq), "2-D"),
        (lambda w, sq: ops.wanda(w, sq[:-1]), "in_sq: expected 8 values"),
        (lambda w, sq: ops.wanda(w, None), "needs input activation statistics"),
        (lambda w, sq: ops.mask(w, 1.0), r"sparsity: 1 must be in \[0, 1\)"),
        (lambda w, sq: ops.mask(w, -0.1), "sparsity"),
        (lambda w, sq: ops.mask(w, pattern="4:4"), "0 < N < M"),
        (lambda w, sq: ops.mask(w, pattern="2:3"), "not a multiple of M = 3"),
        (lambda w, sq: ops.mask(w, pattern="two:four"), "not N:M"),
        (lambda w, sq: ops.mask(w, 0.5, pattern="per-col"), "pattern"),
        (lambda w, sq: ops.score(w, "nope"), "method"),
        (lambda w, sq: ops.magnitude(w.astype(np.float64)), "float64"),
        (lambda w, sq: ops.lp_ria(w, sq, p=0.0), "p: 0"),
        (lambda w, sq: ops.stochria(w, sq, beta=0.0), "beta"),
        (lambda w, sq: ops.wanda(w, -sq - 1), "negative"),
        (
            lambda w, sq: ops.apply_mask(w, np.zeros((4, 8), dtype=bool)),
            "mask: expected a bool array",
        ),
    ],
)
def test_bad_input_raises_clear_errors(call, match):
    w = np.abs(rand((5, 8), 1))
    sq = np.ones(8, dtype=np.float32)
    with pytest.raises(InvalidInputError, match=match) as info:
        call(w, sq)
    assert isinstance(info.value, (SymPruneError, ValueError))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused_with_their_position(bad):
    w = rand((4, 6), 3)
    w[2, 5] = bad
    with pytest.raises(InvalidInputError, match="row 2, column 5"):
        ops.magnitude(w)
    with pytest.raises(InvalidInputError, match="row 2, column 5"):
        ops.mask(w, 0.5)
    sq = np.ones(6, dtype=np.float32)
    sq[4] = bad
    with pytest.raises(InvalidInputError, match="in_sq"):
        ops.wanda(rand((4, 6), 3), sq)
