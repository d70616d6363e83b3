"""DSnoT and R²-DSnoT (symprune.ops.dsnot / r2dsnot) against the plain reference.

Masks must equal tests/reference/dsnot_ref.py bit for bit, on random layers and on
real SmolLM2 layers with real calibration statistics; the invariants of methods.md
§5/§7 are checked on the kernels' own output.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reference import dsnot_ref as ref
from symprune import InvalidInputError, data, ops
from symprune.spec import VOCABULARY

# (rows, cols, pattern): odd shapes unstructured, multiples of M for N:M.
SHAPES = [(17, 53, None), (9, 91, None), (13, 48, "2:4"), (6, 96, "4:8")]

DSNOT = [
    {},
    {"same_sign": True},
    {"same_sign": False},
    {"threshold": 0.0, "max_cycles": 7},
    {"var_power": 0.0},
    {"var_power": 2.0, "threshold": 0.5},
]

# R²-DSnoT's defaults before issue 5's measurement (alpha 0.5), pinned so that the
# reference comparisons keep covering them; the current defaults have their own test.
R2_PINNED = {
    "ri_phase": "prune",
    "alpha": 0.5,
    "gamma": 0.0,
    "same_sign": True,
    "on_reject": "stop",
}

R2 = (
    [
        {**R2_PINNED, "ri_phase": phase, "gamma": gamma, "on_reject": rej}
        for phase in ("prune", "grow", "none")
        for gamma in (0.0, 0.3)
        for rej in ("stop", "skip")
    ]
    + [
        {**R2_PINNED, **params}
        for params in (
            {"same_sign": False},
            {"same_sign": False, "on_reject": "skip", "gamma": 2.0},
            {"p": 2.0, "gamma": 1.0},
            {"p": 0.5, "gamma": 1.0, "on_reject": "skip"},
            {"alpha": 1.0},
            {"alpha": 0.0, "ri_phase": "none"},
            {"gamma": 50.0},
            {"var_power": 0.5, "threshold": 0.0, "max_cycles": 9},
        )
    ]
    + [{}]
)  # the current defaults, on both sides


DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def random_layer(rows: int, cols: int, seed: int):
    """Weights and plausible statistics; two channels have zero variance."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols)) * 0.1).astype(np.float32)
    in_sq = rng.gamma(2.0, 1.0, cols).astype(np.float32)
    act_sum = (rng.standard_normal(cols) * 3).astype(np.float32)
    act_var = rng.gamma(2.0, 1.0, cols).astype(np.float32)
    act_var[[1, cols // 2]] = 0.0
    return w, in_sq, act_sum, act_var


def nm_of(pattern: str | None) -> tuple[int, int] | None:
    if pattern is None:
        return None
    n, m = pattern.split(":")
    return int(n), int(m)


def ref_mask(rows: list[ref.Row]) -> np.ndarray:
    return np.array([r.mask for r in rows], dtype=bool)


def check_report(report: ops.RefineReport, rows: list[ref.Row], max_cycles: int) -> None:
    np.testing.assert_array_equal(report.swaps_per_row, [r.swaps for r in rows])
    assert report.swaps == sum(r.swaps for r in rows)
    assert report.rows_stopped == sum(r.stopped for r in rows)
    assert report.cycles == max((r.cycles for r in rows), default=0) <= max_cycles


def check_structure(out: np.ndarray, start: np.ndarray, pattern: str | None) -> None:
    np.testing.assert_array_equal(out.sum(axis=1), start.sum(axis=1))
    if pattern is not None:
        n, m = nm_of(pattern)
        assert (out.reshape(out.shape[0], -1, m).sum(axis=2) == n).all()


def err_pen(w, mask, in_sq, act_sum, p=1.0):
    """Per-row ``err`` and ``pen`` recomputed from scratch (float64)."""
    d = (w * act_sum[None, :]).astype(np.float64)
    s = np.abs(w).astype(np.float64) * np.sqrt(in_sq.astype(np.float64))[None, :]
    return (d * mask).sum(axis=1), ((s**p) * mask).sum(axis=1) ** (1 / p)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,cols,pattern", SHAPES)
def test_dsnot_matches_reference(rows, cols, pattern, dtype):
    w, in_sq, act_sum, act_var = random_layer(rows, cols, seed=rows * cols)
    weight = torch.from_numpy(w).to(DTYPES[dtype])
    w = weight.float().numpy()
    start = ops.mask(ops.wanda(weight, in_sq), 0.6, pattern=pattern)
    for params in DSNOT:
        out, report = ops.dsnot(weight, start, in_sq, act_sum, act_var, pattern=pattern, **params)
        expect = ref.dsnot(w, start, in_sq, act_sum, act_var, nm=nm_of(pattern), **params)
        np.testing.assert_array_equal(out, ref_mask(expect), err_msg=str(params))
        check_report(report, expect, params.get("max_cycles", 50))
        check_structure(out, start, pattern)
    assert any(r.swaps for r in expect)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,cols,pattern", SHAPES)
def test_r2dsnot_matches_reference(rows, cols, pattern, dtype):
    w, in_sq, act_sum, act_var = random_layer(rows, cols, seed=rows + cols)
    weight = torch.from_numpy(w).to(DTYPES[dtype])
    w = weight.float().numpy()
    start = ops.mask(ops.wanda(weight, in_sq), 0.6, pattern=pattern)
    swaps = 0
    for params in R2:
        out, report = ops.r2dsnot(weight, start, in_sq, act_sum, act_var, pattern=pattern, **params)
        expect = ref.r2dsnot(w, start, in_sq, act_sum, act_var, nm=nm_of(pattern), **params)
        np.testing.assert_array_equal(out, ref_mask(expect), err_msg=str(params))
        check_report(report, expect, params.get("max_cycles", 50))
        check_structure(out, start, pattern)
        swaps += report.swaps
    assert swaps > 0


def test_dsnot_initial_scores_pick_inside_groups():
    w, in_sq, act_sum, act_var = random_layer(11, 64, seed=5)
    scores = ops.magnitude(w)
    start = ops.mask(scores, pattern="2:4")
    out, _ = ops.dsnot(w, start, in_sq, act_sum, act_var, pattern="2:4", initial_scores=scores)
    expect = ref.dsnot(w, start, in_sq, act_sum, act_var, nm=(2, 4), initial_scores=scores)
    np.testing.assert_array_equal(out, ref_mask(expect))
    wanda, _ = ops.dsnot(w, start, in_sq, act_sum, act_var, pattern="2:4")
    assert (wanda != out).any()  # the initial scores matter
    # Unstructured DSnoT orders by Wanda whatever the initial scores.
    start = ops.mask(scores, 0.5)
    np.testing.assert_array_equal(
        ops.dsnot(w, start, in_sq, act_sum, act_var, initial_scores=scores)[0],
        ops.dsnot(w, start, in_sq, act_sum, act_var)[0],
    )


@pytest.mark.parametrize("initial", ["wanda", "magnitude"])
@pytest.mark.parametrize("gamma", [0.0, 0.4])
@pytest.mark.parametrize("on_reject", ["stop", "skip"])
@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_r2dsnot_invariants(initial, gamma, on_reject, alpha):
    """§7: Φ never increases (checked cycle by cycle); with γ = 0, |err| never ends above
    its start."""
    w, in_sq, act_sum, act_var = random_layer(24, 77, seed=11)
    scores = ops.wanda(w, in_sq) if initial == "wanda" else ops.magnitude(w)
    start = ops.mask(scores, 0.6)
    e0, p0 = err_pen(w, start, in_sq, act_sum)

    def phi(mask):
        e, p = err_pen(w, mask, in_sq, act_sum)
        return np.abs(e) / np.abs(e0) + gamma * p / p0, np.abs(e)

    prev, _ = phi(start)
    for cycles in range(1, 25):
        out, _ = ops.r2dsnot(
            w,
            start,
            in_sq,
            act_sum,
            act_var,
            alpha=alpha,
            gamma=gamma,
            on_reject=on_reject,
            max_cycles=cycles,
            threshold=0.0,
        )
        now, err = phi(out)
        assert (now <= prev + 1e-9).all()
        if gamma == 0.0:
            assert (err <= np.abs(e0) + 1e-9).all()
        prev = now
    assert (prev < phi(start)[0]).any()
    # The reference's own trace: Φ strictly decreases at every accepted swap.
    trace = ref.r2dsnot(
        w, start, in_sq, act_sum, act_var, alpha=alpha, gamma=gamma, on_reject=on_reject
    )
    for row in trace:
        assert all(b < a for a, b in zip([1.0 + gamma] + row.phi, row.phi, strict=False))


def test_r2dsnot_defaults_are_the_measured_ones():
    """Issue 5 (benches/RESULTS.md): the best mean over calibration seeds on SmolLM2."""
    import inspect

    measured = {"ri_phase": "prune", "alpha": 1.0, "gamma": 0.0, "p": 1.0}
    measured |= {"same_sign": True, "on_reject": "stop", "max_cycles": 50, "threshold": 0.1}
    core = {p["name"]: p["default"] for p in VOCABULARY["refiners"]["r2dsnot"]["parameters"]}
    assert {k: core[k] for k in measured} == measured
    defaults = {k: v.default for k, v in inspect.signature(ref.r2dsnot).parameters.items()}
    assert {k: defaults[k] for k in measured} == measured
    w, in_sq, act_sum, act_var = random_layer(20, 60, seed=4)
    start = ops.mask(ops.wanda(w, in_sq), 0.6)
    np.testing.assert_array_equal(
        ops.r2dsnot(w, start, in_sq, act_sum, act_var)[0],
        ops.r2dsnot(w, start, in_sq, act_sum, act_var, **measured)[0],
    )
    assert (
        ops.r2dsnot(w, start, in_sq, act_sum, act_var)[0]
        != ops.r2dsnot(w, start, in_sq, act_sum, act_var, alpha=0.5)[0]
    ).any()


def test_large_gamma_returns_the_wanda_mask():
    w, in_sq, act_sum, act_var = random_layer(20, 60, seed=3)
    start = ops.mask(ops.wanda(w, in_sq), 0.6)
    out, report = ops.r2dsnot(w, start, in_sq, act_sum, act_var, gamma=1e6)
    np.testing.assert_array_equal(out, start)
    assert report.swaps == 0 and report.rows_stopped == 20 and report.cycles == 1


def test_zero_variance_is_floored_at_the_smallest_normal_float32():
    w, in_sq, act_sum, act_var = random_layer(10, 40, seed=8)
    start = ops.mask(ops.wanda(w, in_sq), 0.5)
    act_var[:5] = 0.0
    floored = act_var.copy()
    floored[:5] = np.finfo(np.float32).smallest_normal
    for fn in (ops.dsnot, ops.r2dsnot):
        got, _ = fn(w, start, in_sq, act_sum, act_var)
        np.testing.assert_array_equal(got, fn(w, start, in_sq, act_sum, floored)[0])
    # A constant channel with D != 0 is regrown first (infinite priority).
    ranked = ref.dsnot(w, start, in_sq, act_sum, act_var, max_cycles=1)
    np.testing.assert_array_equal(
        ops.dsnot(w, start, in_sq, act_sum, act_var, max_cycles=1)[0], ref_mask(ranked)
    )


def test_bad_input_is_refused():
    w, in_sq, act_sum, act_var = random_layer(6, 16, seed=1)
    start = ops.mask(ops.wanda(w, in_sq), 0.5)

    def fails(match, *args, fn=ops.dsnot, **kwargs):
        args = args or (w, start, in_sq, act_sum, act_var)
        with pytest.raises(InvalidInputError, match=match):
            fn(*args, **kwargs)

    nan = act_sum.copy()
    nan[3] = np.nan
    fails("sum: non-finite value NaN at row 0, column 3", w, start, in_sq, nan, act_var)
    fails("var: expected 16 values, got 15", w, start, in_sq, act_sum, act_var[:-1])
    neg = act_var.copy()
    neg[2] = -1.0
    fails("var: value -1 at index 2 is negative", w, start, in_sq, act_sum, neg)
    fails("act_var: mask refinement needs", w, start, in_sq, act_sum, None)
    uneven = start.copy()
    uneven[4, 0] = not uneven[4, 0]
    fails("row 4 prunes", w, uneven, in_sq, act_sum, act_var)
    fails("not 2; the initial mask must be 2:4", pattern="2:4", fn=ops.r2dsnot)
    fails("prune_mask: expected a bool array", w, start.T, in_sq, act_sum, act_var)
    fails('ri_phase: "both" is not one of prune, grow, none', fn=ops.r2dsnot, ri_phase="both")
    fails("on_reject", fn=ops.r2dsnot, on_reject="retry")
    fails("gamma", fn=ops.r2dsnot, gamma=-1.0)
    fails("threshold", threshold=float("nan"))
    fails("max_cycles: -1 must be a whole number >= 0", max_cycles=-1)
    fails("unknown parameter gamma; dsnot takes max_cycles", gamma=1.0)
    fails(
        "initial_scores",
        w,
        ops.mask(w, pattern="2:4"),
        in_sq,
        act_sum,
        act_var,
        pattern="2:4",
        initial_scores=np.zeros((6, 8), np.float32),
    )
    big = w.copy()
    big[1, 2] = 3e38
    fails(
        r"weight · sum \(f32 overflow\): non-finite value inf at row 1, column 2",
        big,
        ops.mask(ops.wanda(big, in_sq), 0.5),
        in_sq,
        act_sum * 0 + 2,
        act_var,
    )


# -- real SmolLM2 layers with real calibration statistics --

REAL = [
    # (module, dtype, pattern, variant, params)
    ("model.layers.0.self_attn.q_proj", "f32", None, "dsnot", {}),
    ("model.layers.0.self_attn.q_proj", "f32", None, "r2dsnot", {}),  # current defaults
    ("model.layers.0.self_attn.q_proj", "f32", None, "r2dsnot", R2_PINNED),
    (
        "model.layers.0.self_attn.q_proj",
        "f32",
        None,
        "r2dsnot",
        {**R2_PINNED, "ri_phase": "grow", "gamma": 0.5, "on_reject": "skip"},
    ),
    ("model.layers.0.self_attn.k_proj", "bf16", None, "dsnot", {"same_sign": True}),
    ("model.layers.0.self_attn.k_proj", "f32", "2:4", "dsnot", {}),
    (
        "model.layers.0.self_attn.k_proj",
        "bf16",
        "2:4",
        "r2dsnot",
        {**R2_PINNED, "ri_phase": "none"},
    ),
    ("model.layers.1.mlp.down_proj", "f32", None, "dsnot", {}),
    ("model.layers.1.mlp.down_proj", "bf16", None, "r2dsnot", {**R2_PINNED, "gamma": 0.2}),
    (
        "model.layers.1.mlp.gate_proj",
        "f32",
        "2:4",
        "r2dsnot",
        {**R2_PINNED, "on_reject": "skip", "gamma": 0.3},
    ),
]


@pytest.fixture(scope="module")
def smollm2_calibrated():
    return calibrated_linears({n for n, _, _, _, _ in REAL})


def calibrated_linears(names: set[str]) -> dict:
    """Weights and §2 statistics of SmolLM2 linears: the dense model on 4 windows of 64
    tokens (2 batches of 2) of the built-in calibration text."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = data.builtin_model()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    # The first 200k characters are plenty for 4 windows and tokenize in a blink.
    ids = tokenizer(data.builtin_corpus().calibration[:200_000])["input_ids"]
    windows = torch.tensor(data.calibration_windows(ids, 4, 64, seed=0))

    stats = {n: {"n": 0, "tokens": 0} for n in names}

    def hook(name):
        def add(_module, args, _output):
            # §2's running formulas, in float64: sq, sum rescaled by n/(n+b); var
            # as the token-weighted mean of per-batch population variances.
            x = args[0].detach().double()
            b, t = x.shape[0], x.shape[1]
            x = x.reshape(b * t, -1)
            s = stats[name]
            n = s["n"]
            for key in ("in_sq", "sum"):
                s[key] = s.get(key, 0.0) * (n / (n + b))
            s["n"] = n = n + b
            s["in_sq"] = s["in_sq"] + (x * x).sum(0) / n
            s["sum"] = s["sum"] + x.sum(0) / n
            var_b = x.var(0, unbiased=False)
            tokens = s["tokens"]
            s["var"] = (s.get("var", 0.0) * tokens + var_b * (b * t)) / (tokens + b * t)
            s["tokens"] = tokens + b * t

        return add

    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    with torch.no_grad():
        for batch in windows.split(2):
            model.model(batch)
    for h in handles:
        h.remove()
    return {
        n: (
            modules[n].weight.detach().clone(),
            *(stats[n][k].float().numpy() for k in ("in_sq", "sum", "var")),
        )
        for n in names
    }


@pytest.mark.real
@pytest.mark.parametrize("name,dtype,pattern,variant,params", REAL)
def test_real_layers_match_reference(smollm2_calibrated, name, dtype, pattern, variant, params):
    weight, in_sq, act_sum, act_var = smollm2_calibrated[name]
    assert (act_var > 0).all() and np.abs(act_sum).max() > 0.1
    if dtype == "bf16":
        weight = weight.to(torch.bfloat16)
    w = weight.float().numpy()
    start = ops.mask(ops.wanda(weight, in_sq), 0.6, pattern=pattern)
    out, report = getattr(ops, variant)(
        weight, start, in_sq, act_sum, act_var, pattern=pattern, **params
    )
    expect = getattr(ref, variant)(w, start, in_sq, act_sum, act_var, nm=nm_of(pattern), **params)
    np.testing.assert_array_equal(out, ref_mask(expect))
    check_report(report, expect, 50)
    check_structure(out, start, pattern)
    assert report.swaps > 0
    if variant == "r2dsnot" and params.get("gamma", 0.0) == 0.0:
        e0, _ = err_pen(w, start, in_sq, act_sum)
        e1, _ = err_pen(w, out, in_sq, act_sum)
        assert (np.abs(e1) <= np.abs(e0) * (1 + 1e-9)).all()
