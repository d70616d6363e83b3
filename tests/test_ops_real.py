"""symprune.ops on the real weights of SmolLM2-135M (dequantized Q4_1: ties galore)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reference import scores as ref
from symprune import ops

pytestmark = pytest.mark.real


def real_stats(w: np.ndarray, seed: int):
    rng = np.random.default_rng(seed)
    return (
        (rng.gamma(2.0, 1.0, w.shape[1]) * 40).astype(np.float32),
        (rng.gamma(2.0, 1.0, w.shape[0]) * 40).astype(np.float32),
    )


def test_real_weights_tie_a_lot(smollm2_linears):
    w = smollm2_linears["model.layers.0.self_attn.q_proj.weight"]
    assert np.unique(np.abs(w)).size < w.size / 10


@pytest.mark.parametrize(
    "name",
    [
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.weight",
        "model.layers.7.mlp.down_proj.weight",
    ],
)
def test_real_scores_and_masks_match_reference(smollm2_linears, name):
    w = smollm2_linears[name]
    sq, out_sq = real_stats(w, 0)
    pairs = {
        "magnitude": (ops.magnitude(w), ref.magnitude(w)),
        "wanda": (ops.wanda(w, sq), ref.wanda(w, sq)),
        "ria": (ops.ria(w, sq), ref.ria(w, sq)),
        "lp-ria": (ops.lp_ria(w, sq, p=2.0), ref.lp_ria(w, sq, p=2.0)),
        "symmetric": (ops.symmetric(w), ref.symmetric(w)),
        "symwanda": (ops.symwanda(w, sq, out_sq), ref.symwanda(w, sq, out_sq)),
        "owanda": (ops.owanda(w, out_sq), ref.owanda(w, out_sq)),
    }
    for method, (ours, theirs) in pairs.items():
        np.testing.assert_array_equal(ours, theirs, err_msg=method)
        for s in (0.5, 0.6):
            np.testing.assert_array_equal(ops.mask(ours, s), ref.mask_per_row(theirs, s))
            np.testing.assert_array_equal(
                ops.mask(ours, s, pattern="per-matrix"), ref.mask_per_matrix(theirs, s)
            )
        np.testing.assert_array_equal(ops.mask(ours, pattern="2:4"), ref.mask_nm(theirs, 2, 4))
    # Magnitude masks on raw tied weights: ties must go to the lower column.
    m = ops.mask(ops.magnitude(w), 0.5)
    assert (m.sum(axis=1) == w.shape[1] // 2).all()


def test_real_stochria_matches_reference(smollm2_linears):
    name = "model.layers.0.self_attn.k_proj.weight"
    w = smollm2_linears[name]
    sq, _ = real_stats(w, 1)
    np.testing.assert_array_equal(
        ops.stochria(w, sq, beta=0.1, seed=0, tensor=name),
        ref.stochria(w, sq, beta=0.1, seed=0, tensor=name),
    )


def test_real_bf16_masks_and_apply(smollm2_linears):
    w = smollm2_linears["model.layers.29.mlp.up_proj.weight"]
    t = torch.from_numpy(w).to(torch.bfloat16)
    sq, _ = real_stats(w, 2)
    s = ops.wanda(t, sq)
    np.testing.assert_array_equal(s, ref.wanda(t.float().numpy(), sq))
    m = ops.mask(s, 0.5, pattern="adaptive")
    np.testing.assert_array_equal(m, ref.mask_adaptive(s, 0.5))
    ops.apply_mask(t, m)
    assert (t.float().numpy()[m] == 0).all() and abs(m.mean() - 0.5) <= 0.002
