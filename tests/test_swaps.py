"""Exact-objective swaps and R²-DSnoT's exact decision (methods.md §9) against plain
references that recompute the loss from scratch (tests/reference/swaps_ref.py,
tests/reference/dsnot_ref.py), on random layers with correlated Gram matrices and on a
real SmolLM2 layer with a real Gram matrix; plus the invariants: counts, N:M, a loss
that never increases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reference import dsnot_ref
from reference import swaps_ref as ref
from symprune import InvalidInputError, _core, data, ops
from symprune.spec import VOCABULARY

# (rows, cols, pattern, sparsity): odd shapes unstructured, multiples of M for N:M.
SHAPES = [
    (17, 53, None, 0.5),
    (9, 91, None, 0.6),
    (13, 48, "2:4", None),
    (6, 96, "4:8", None),
]

PARAMS = [
    {},  # the defaults
    {"candidates": 3},
    {"candidates": 1},
    {"candidates": 10_000, "max_swaps": 6},  # the full 1-swap search
    {"max_swaps": 2},
    {"tol": 1e-2},
    {"tol": 0.0, "candidates": 5},
]

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}


def correlated_gram(cols: int, tokens: int, rng: np.random.Generator) -> np.ndarray:
    """``XᵀX`` of tokens whose channels co-vary (a few shared factors, neighbour mixing,
    uneven scales), exactly symmetric in float32."""
    z = rng.standard_normal((tokens, cols))
    factors = rng.standard_normal((tokens, 4)) @ rng.standard_normal((4, cols))
    x = (z + 0.6 * np.roll(z, 1, axis=1) + factors) * rng.gamma(2.0, 0.5, cols)
    h = x.T @ x
    return ((h + h.T) / 2).astype(np.float32)


def random_layer(rows: int, cols: int, seed: int):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols)) * 0.1).astype(np.float32)
    return w, correlated_gram(cols, 3 * cols, rng)


def wanda_start(weight, gram: np.ndarray, pattern: str | None, sparsity: float | None):
    """The Wanda mask, with ``in_sq`` the Gram matrix's diagonal (its mean of squares
    up to a factor)."""
    in_sq = np.diag(gram).astype(np.float32)
    return ops.mask(ops.wanda(weight, in_sq), sparsity, pattern=pattern)


def nm_of(pattern: str | None) -> tuple[int, int] | None:
    if pattern is None:
        return None
    n, m = pattern.split(":")
    return int(n), int(m)


def check_structure(out: np.ndarray, start: np.ndarray, pattern: str | None) -> None:
    np.testing.assert_array_equal(out.sum(axis=1), start.sum(axis=1))
    if pattern is not None:
        n, m = nm_of(pattern)
        assert (out.reshape(out.shape[0], -1, m).sum(axis=2) == n).all()


def check_report(report: ops.RefineReport, rows: list[ref.Row], w, start, gram) -> None:
    np.testing.assert_array_equal(report.swaps_per_row, [r.swaps for r in rows])
    assert report.swaps == sum(r.swaps for r in rows)
    assert report.rows_changed == sum(r.swaps > 0 for r in rows)
    assert report.rows_stopped == sum(r.stopped for r in rows)
    assert report.cycles == max(r.swaps + r.stopped for r in rows)
    before = ref.losses(w, start, gram)
    after = ref.losses(w, np.array([r.mask for r in rows]), gram)
    assert report.loss_before == pytest.approx(before.sum(), rel=1e-9)
    assert report.loss_after == pytest.approx(after.sum(), rel=1e-9, abs=1e-12 * before.sum())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,cols,pattern,sparsity", SHAPES)
def test_swaps_match_reference(rows, cols, pattern, sparsity, dtype):
    w, gram = random_layer(rows, cols, seed=rows * cols)
    weight = torch.from_numpy(w).to(DTYPES[dtype])
    w = weight.float().numpy()
    start = wanda_start(weight, gram, pattern, sparsity)
    total = 0
    for params in PARAMS:
        out, report = ops.swaps(weight, start, gram, pattern=pattern, **params)
        expect = ref.swaps(w, start, gram, nm=nm_of(pattern), **params)
        np.testing.assert_array_equal(out, [r.mask for r in expect], err_msg=str(params))
        check_report(report, expect, w, start, gram)
        check_structure(out, start, pattern)
        # The loss never increases, swap by swap (the reference's own trace).
        for r in expect:
            assert all(b < a for a, b in zip(r.losses, r.losses[1:-1], strict=False))
        total += report.swaps
    assert total > 0


@pytest.mark.parametrize("sparsity", [0.5, 0.6])
def test_swaps_lower_every_row_and_keep_counts(sparsity):
    w, gram = random_layer(40, 64, seed=7)
    start = wanda_start(w, gram, None, sparsity)
    out, report = ops.swaps(w, start, gram)
    before, after = ref.losses(w, start, gram), ref.losses(w, out, gram)
    assert (after <= before * (1 + 1e-12)).all()
    assert after.sum() < 0.9 * before.sum()  # a correlated Gram leaves a lot to gain
    check_structure(out, start, None)
    assert report.rows_changed == (out != start).any(axis=1).sum() == 40
    # Any initial mask: a per-matrix one (unequal row counts) keeps each row's count.
    uneven = ops.mask(ops.magnitude(w), sparsity, pattern="per-matrix")
    assert len(set(uneven.sum(axis=1))) > 1
    out, _ = ops.swaps(w, uneven, gram)
    np.testing.assert_array_equal(out.sum(axis=1), uneven.sum(axis=1))
    expect = ref.swaps(w, uneven, gram)
    np.testing.assert_array_equal(out, [r.mask for r in expect])


def test_full_search_finds_the_best_single_swap():
    """``candidates >= in``, one swap: the best of all (kept, pruned) pairs by brute
    force, every loss recomputed from scratch."""
    w, gram = random_layer(6, 21, seed=3)
    start = wanda_start(w, gram, None, 0.5)
    out, _ = ops.swaps(w, start, gram, candidates=21, max_swaps=1, tol=0.0)
    found = 0
    for i in range(6):
        base = ref.row_loss(w[i], start[i], gram)
        best, pair = 0.0, None
        for p in np.flatnonzero(~start[i]):
            for q in np.flatnonzero(start[i]):
                m = start[i].copy()
                m[p], m[q] = True, False
                d = ref.row_loss(w[i], m, gram) - base
                if d < best - 1e-12 * base:
                    best, pair = d, (p, q)
        changed = np.flatnonzero(out[i] != start[i])
        assert list(changed) == ([] if pair is None else sorted(pair)), i
        found += pair is not None
    assert found >= 4


def test_the_scale_of_the_gram_matrix_does_not_matter():
    """Any positive factor of H (SparseGPT's 2/N) ranks swaps the same way; ``tol`` is
    relative."""
    w, gram = random_layer(10, 40, seed=5)
    start = wanda_start(w, gram, None, 0.6)
    out, report = ops.swaps(w, start, gram)
    out4, report4 = ops.swaps(w, start, gram * np.float32(4.0))
    np.testing.assert_array_equal(out, out4)
    assert report4.loss_before == pytest.approx(4 * report.loss_before, rel=1e-12)


# -- R²-DSnoT's exact decision --

R2_EXACT = [
    {},
    {"gamma": 0.3},
    {"gamma": 0.3, "on_reject": "skip"},
    {"ri_phase": "grow", "same_sign": False},
    {"ri_phase": "none", "alpha": 0.5, "p": 2.0, "gamma": 1.0},
]


def r2_layer(rows: int, cols: int, seed: int):
    """Weights, statistics consistent with the Gram matrix's tokens, and the Gram matrix."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols)) * 0.1).astype(np.float32)
    x = (
        rng.standard_normal((4 * cols, cols))
        + 0.5
        + rng.standard_normal((4 * cols, 3)) @ (rng.standard_normal((3, cols)))
    )
    h = x.T @ x
    gram = ((h + h.T) / 2).astype(np.float32)
    in_sq = (x * x).mean(0).astype(np.float32)
    act_sum = x.mean(0).astype(np.float32) * 8
    act_var = x.var(0).astype(np.float32)
    return w, gram, in_sq, act_sum, act_var


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,cols,pattern", [(15, 47, None), (8, 40, "2:4")])
def test_r2dsnot_exact_matches_reference(rows, cols, pattern, dtype):
    w, gram, in_sq, act_sum, act_var = r2_layer(rows, cols, seed=rows + cols)
    weight = torch.from_numpy(w).to(DTYPES[dtype])
    w = weight.float().numpy()
    start = ops.mask(ops.wanda(weight, in_sq), 0.6, pattern=pattern)
    swaps = 0
    for params in R2_EXACT:
        kw = {**params, "decision": "exact"}
        out, report = ops.r2dsnot(
            weight, start, in_sq, act_sum, act_var, pattern=pattern, gram=gram, **kw
        )
        expect = dsnot_ref.r2dsnot(
            w, start, in_sq, act_sum, act_var, nm=nm_of(pattern), gram=gram, **kw
        )
        np.testing.assert_array_equal(out, [r.mask for r in expect], err_msg=str(params))
        np.testing.assert_array_equal(report.swaps_per_row, [r.swaps for r in expect])
        assert report.rows_stopped == sum(r.stopped for r in expect)
        check_structure(out, start, pattern)
        before, after = ref.losses(w, start, gram), ref.losses(w, out, gram)
        assert report.loss_before == pytest.approx(before.sum(), rel=1e-9)
        assert report.loss_after == pytest.approx(after.sum(), rel=1e-9)
        if params.get("gamma", 0.0) == 0.0:
            assert (after <= before * (1 + 1e-12)).all()
        for row in expect:  # Φ strictly decreases at every accepted swap
            g = params.get("gamma", 0.0)
            assert all(b < a for a, b in zip([1.0 + g] + row.phi, row.phi, strict=False))
        swaps += report.swaps
    assert swaps > 0


def test_r2dsnot_exact_differs_from_mean_and_mean_is_unchanged():
    w, gram, in_sq, act_sum, act_var = r2_layer(30, 64, seed=2)
    start = ops.mask(ops.wanda(w, in_sq), 0.6)
    mean, report = ops.r2dsnot(w, start, in_sq, act_sum, act_var)
    assert report.loss_before is None and report.loss_after is None
    np.testing.assert_array_equal(
        mean, ops.r2dsnot(w, start, in_sq, act_sum, act_var, decision="mean")[0]
    )
    expect = dsnot_ref.r2dsnot(w, start, in_sq, act_sum, act_var)
    np.testing.assert_array_equal(mean, [r.mask for r in expect])
    exact, _ = ops.r2dsnot(w, start, in_sq, act_sum, act_var, gram=gram, decision="exact")
    assert (exact != mean).any()
    assert ref.losses(w, exact, gram).sum() < ref.losses(w, mean, gram).sum()


# -- errors and vocabulary --


def test_bad_input_is_refused():
    w, gram = random_layer(6, 16, seed=1)
    start = wanda_start(w, gram, None, 0.5)
    stats = [np.ones(16, np.float32)] * 3

    def fails(match, fn=ops.swaps, *args, **kwargs):
        with pytest.raises(InvalidInputError, match=match):
            fn(*(args or (w, start, gram)), **kwargs)

    fails(r"weight: gram: expected 16x16 \(in x in", ops.swaps, w, start, gram[:8, :8])
    fails("gram: expected a 2-D", ops.swaps, w, start, gram[0])
    nan = gram.copy()
    nan[2, 5] = np.nan
    fails(
        "layer.up: gram: non-finite value NaN at row 2, column 5",
        ops.swaps,
        w,
        start,
        nan,
        tensor="layer.up",
    )
    big = w.copy()
    big[3, 1] = np.inf
    fails("weight: non-finite value inf at row 3, column 1", ops.swaps, big, start, gram)
    fails("candidates: 0 must be a whole number >= 1", candidates=0)
    fails("candidates: -1 must be a whole number", candidates=-1)
    fails("tol: -0.1 must be a number >= 0", tol=-0.1)
    fails("unknown parameter gamma; swaps takes candidates, max_swaps, tol", gamma=1.0)
    fails("not 2; the initial mask must be 2:4", pattern="2:4")
    fails("prune_mask: expected a bool array", ops.swaps, w, start.T, gram)
    fails("gram: swaps with these parameters needs the Gram matrix", ops.refine, "swaps", w, start)
    fails(
        "gram: dsnot with these parameters does not read",
        ops.refine,
        "dsnot",
        w,
        start,
        *stats,
        gram=gram,
    )
    fails("does not read a Gram matrix", ops.r2dsnot, w, start, *stats, gram=gram)
    fails(
        "gram: r2dsnot with these parameters needs", ops.r2dsnot, w, start, *stats, decision="exact"
    )
    fails('decision: "l2" is not one of mean, exact', ops.r2dsnot, w, start, *stats, decision="l2")
    fails("act_var: mask refinement needs", ops.refine, "dsnot", w, start, *stats[:2])


def test_the_vocabulary_says_who_needs_the_gram_matrix():
    refiners = VOCABULARY["refiners"]
    assert "swaps" in VOCABULARY["refiner_names"]
    assert refiners["swaps"]["needs_gram"] and not refiners["swaps"]["needs_stats"]
    assert not refiners["dsnot"]["needs_gram"] and not refiners["r2dsnot"]["needs_gram"]
    defaults = {p["name"]: p["default"] for p in refiners["swaps"]["parameters"]}
    assert defaults == {"candidates": 16, "max_swaps": 32, "tol": 1e-6}
    decision = {p["name"]: p for p in refiners["r2dsnot"]["parameters"]}["decision"]
    assert decision["default"] == "mean" and decision["choices"] == ["mean", "exact"]
    assert _core.Request(refine="swaps").refine_needs_gram
    assert _core.Request(refine="r2dsnot", refine_params={"decision": "exact"}).refine_needs_gram
    assert not _core.Request(refine="r2dsnot").refine_needs_gram
    assert not _core.Request().refine_needs_gram
    described = _core.Request(refine="swaps", refine_params={"candidates": 8}).describe()
    assert described["refine_parameters"] == {"candidates": 8, "max_swaps": 32, "tol": 1e-6}


# -- a real SmolLM2 layer with a real Gram matrix --


@pytest.fixture(scope="module")
def smollm2_grams():
    """Weights and input Gram matrices (float64 sums, symmetrized, float32) of two
    SmolLM2 linears: the dense model on 8 windows of 128 tokens of the built-in
    calibration text."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    names = ["model.layers.1.self_attn.k_proj", "model.layers.2.mlp.down_proj"]
    path = data.builtin_model()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = tokenizer(data.builtin_corpus().calibration[:200_000])["input_ids"]
    windows = torch.tensor(data.calibration_windows(ids, 8, 128, seed=0))
    grams: dict[str, torch.Tensor] = {}

    def hook(name):
        def add(_module, args, _output):
            x = args[0].detach().double().reshape(-1, args[0].shape[-1])
            grams[name] = grams.get(name, 0.0) + x.T @ x

        return add

    class Done(Exception):
        """Raised after the last layer needed: the rest of the forward is skipped."""

    def stop(_module, _args, _output):
        raise Done

    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    handles.append(model.model.layers[2].register_forward_hook(stop))
    with torch.no_grad():
        for batch in windows.split(4):
            with pytest.raises(Done):
                model.model(batch)
    for h in handles:
        h.remove()
    out = {}
    for n in names:
        g = grams[n]
        out[n] = (modules[n].weight.detach().clone(), ((g + g.T) / 2).float().numpy())
    return out


@pytest.mark.real
@pytest.mark.parametrize(
    "name,dtype,pattern",
    [
        ("model.layers.1.self_attn.k_proj", "f32", None),
        ("model.layers.1.self_attn.k_proj", "bf16", "2:4"),
        ("model.layers.2.mlp.down_proj", "bf16", None),
    ],
)
def test_real_layer_matches_reference(smollm2_grams, name, dtype, pattern):
    weight, gram = smollm2_grams[name]
    if dtype == "bf16":
        weight = weight.to(torch.bfloat16)
    w = weight.float().numpy()
    start = wanda_start(weight, gram, pattern, 0.6)
    out, report = ops.swaps(weight, start, gram, pattern=pattern, tensor=name)
    check_structure(out, start, pattern)
    rows = range(0, w.shape[0], w.shape[0] // 12)  # the reference on 12 rows (~0.4 s each)
    expect = ref.swaps(w, start, gram, nm=nm_of(pattern), rows=rows)
    np.testing.assert_array_equal(out[list(rows)], [r.mask for r in expect])
    np.testing.assert_array_equal(report.swaps_per_row[list(rows)], [r.swaps for r in expect])
    before, after = ref.losses(w, start, gram), ref.losses(w, out, gram)
    assert (after <= before * (1 + 1e-9)).all()
    assert report.loss_before == pytest.approx(before.sum(), rel=1e-6)
    assert report.loss_after == pytest.approx(after.sum(), rel=1e-6)
    assert report.loss_after < 0.95 * report.loss_before


@pytest.mark.real
@pytest.mark.parametrize(
    "refine,params,pattern",
    [("swaps", {}, None), ("swaps", {}, "2:4"), ("r2dsnot", {"decision": "exact"}, None)],
)
def test_pipeline_refines_on_the_true_loss(smollm2_dir, refine, params, pattern):
    """The layer-streamed pipeline collects the Gram matrix for these refiners, and every
    refined tensor of the real model ends with a lower layer-wise loss at the exact
    sparsity; the per-layer records carry the sums."""
    from symprune.calibration.pipeline import prune_streamed
    from symprune.spec import Calibration, PruneSpec

    spec = PruneSpec(
        method="wanda",
        sparsity=None if pattern else 0.6,
        pattern=pattern,
        refine=refine,
        refine_params=params,
        targets=r"layers\.[01]\.",
    )
    calib = Calibration(nsamples=2, seqlen=64)
    report = prune_streamed(smollm2_dir, None, spec, calib, device="cpu", progress=False)
    assert len(report.tensors) == 14
    for t in report.tensors:
        assert t.loss_before is not None and t.loss_after is not None, t.name
        assert t.loss_after <= t.loss_before, t.name
        # At least the target (a dequantized weight may already be zero elsewhere).
        target = 0.5 if pattern else int(t.shape[1] * 0.6) / t.shape[1]
        assert t.sparsity >= target - 1e-12, t.name
    assert sum(t.loss_after for t in report.tensors) < sum(t.loss_before for t in report.tensors)
    refined = [r for r in report.layers if r.loss_before is not None]
    assert [r.index for r in refined] == [0, 1]
    for r in refined:
        mine = [t for t in report.tensors if f".layers.{r.index}." in t.name]
        assert r.loss_after == pytest.approx(sum(t.loss_after for t in mine))
