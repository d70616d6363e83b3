"""SparseGPT's column loop in Rust (the CPU path) against the torch loop (the GPU
path), on random layers with a correlated Hessian and on real SmolLM2 layers with the
Hessian of real calibration inputs (methods.md §6).

The two differ only in summation order, so their weights agree to float32 rounding;
a mask can differ where two scores of a later block tie within that rounding (real
dequantized weights tie often), which the tolerance allows for.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file

from symprune import InvalidInputError, api
from symprune.methods.sparsegpt import column_loop, inverse_factor, sparsegpt, torch_column_loop
from symprune.spec import PruneSpec

PATTERNS = [{"sparsity": 0.5}, {"sparsity": 0.6}, {"pattern": "2:4"}, {"pattern": "4:8"}]
FIRST_LAYERS = r"re:model\.layers\.[01]\.(self_attn|mlp)\..*_proj$"


def correlated_hessian(cols: int, seed: int) -> torch.Tensor:
    """``XᵀX`` of inputs whose channels share a few common factors, some dead."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4 * cols, 6, generator=g) @ torch.randn(6, cols, generator=g)
    x += 0.3 * torch.randn(4 * cols, cols, generator=g)
    x[:, ::11] = 0  # dead input channels
    return x.T @ x


def both_paths(weight: torch.Tensor, hessian: torch.Tensor, spec: PruneSpec):
    """(Rust mask, Rust-pruned weight) and (torch mask, torch-pruned weight) of the
    same damped factor."""
    params = spec.effective_params
    w, hinv = inverse_factor(weight, hessian, float(params["percdamp"]), "w")
    ours, theirs = w.clone(), w.clone()
    mask = column_loop(ours, hinv, int(params["blocksize"]), spec, "w")
    expected = torch_column_loop(theirs, hinv, int(params["blocksize"]), spec).numpy()
    return (mask, ours), (expected, theirs)


@pytest.mark.parametrize("kw", PATTERNS, ids=lambda kw: str(next(iter(kw.values()))))
@pytest.mark.parametrize("shape", [(24, 40), (37, 64), (5, 256)])
def test_random_layers_match_the_torch_loop(shape, kw):
    rows, cols = shape
    weight = torch.randn(rows, cols, generator=torch.Generator().manual_seed(rows))
    spec = PruneSpec(method="sparsegpt", params={"blocksize": 16}, **kw)
    hessian = correlated_hessian(cols, cols)
    (mask, ours), (theirs, w) = both_paths(weight, hessian, spec)
    np.testing.assert_array_equal(mask, theirs)
    pruned = weight.clone()
    np.testing.assert_array_equal(sparsegpt(pruned, {}, hessian, spec, "w"), mask)
    np.testing.assert_array_equal(pruned.numpy(), ours.numpy())  # the method is this path
    np.testing.assert_allclose(ours.numpy(), w.numpy(), rtol=1e-4, atol=1e-5)
    assert not ours.numpy()[mask].any() and ours.numpy()[~mask].all()
    if "pattern" in kw:
        n, m = map(int, kw["pattern"].split(":"))
        assert (mask.reshape(rows, cols // m, m).sum(-1) == n).all()
    else:
        widths = [min(16, cols - i) for i in range(0, cols, 16)]
        assert mask.sum() == sum(int(kw["sparsity"] * rows * b) for b in widths)


def test_bf16_weights_are_pruned_in_float32_and_cast_back():
    weight = torch.randn(16, 32, generator=torch.Generator().manual_seed(0)).bfloat16()
    spec = PruneSpec(method="sparsegpt", sparsity=0.5)
    mask = sparsegpt(weight, {}, correlated_hessian(32, 1), spec, "w")
    assert weight.dtype == torch.bfloat16 and not weight[torch.from_numpy(mask)].any()


def test_bad_columns_for_n_m_are_one_clear_error():
    spec = PruneSpec(method="sparsegpt", pattern="2:4")
    with pytest.raises(InvalidInputError, match="not a multiple of M = 4"):
        sparsegpt(torch.randn(4, 6), {}, correlated_hessian(6, 0), spec, "w")


def test_importing_one_family_first_keeps_the_registry_whole():
    # A fresh interpreter: the registry is per process.
    code = (
        "import symprune.methods.sparsegpt\n"
        "from symprune import methods\n"
        "methods.get('wanda'); methods.get('magnitude'); methods.get_refiner('dsnot')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def smollm2_hessians(smollm2_dir, tmp_path_factory) -> dict[str, np.ndarray]:
    """Gram matrices of the first two layers' inputs on real calibration text."""
    out = tmp_path_factory.mktemp("stats") / "stats.safetensors"
    api.calibrate(
        smollm2_dir, out, nsamples=4, seqlen=128, device="cpu", gram=True,
        targets=FIRST_LAYERS, progress=False,
    )  # fmt: skip
    return {k.removesuffix(".gram"): v for k, v in load_file(out).items() if k.endswith(".gram")}


@pytest.mark.real
@pytest.mark.parametrize("kw", [{"sparsity": 0.5}, {"pattern": "2:4"}], ids=["50%", "2:4"])
def test_smollm2_layers_match_the_torch_loop(smollm2_dir, smollm2_hessians, kw):
    spec = PruneSpec(method="sparsegpt", **kw)
    assert len(smollm2_hessians) == 14
    weights = safe_open(smollm2_dir / "model.safetensors", framework="pt")
    for module, gram in smollm2_hessians.items():
        weight = weights.get_tensor(f"{module}.weight")
        hessian = torch.from_numpy(gram)
        (mask, ours), (theirs, w) = both_paths(weight, hessian, spec)
        agree = (mask == theirs).mean()
        assert agree >= 0.999, f"{module}: masks agree on {agree:.5f}"
        same = mask == theirs
        close = np.isclose(ours.numpy(), w.numpy(), rtol=1e-3, atol=1e-5)
        assert close[same].mean() >= 0.999, module
        # The layer-wise loss of both within 0.1%.
        x_dir = weight.float() - ours
        y_dir = weight.float() - w
        loss = float(torch.einsum("ij,jk,ik->", x_dir, hessian, x_dir))
        ref = float(torch.einsum("ij,jk,ik->", y_dir, hessian, y_dir))
        assert abs(loss - ref) <= 1e-3 * ref, f"{module}: {loss} vs {ref}"
