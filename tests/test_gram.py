"""``symprune calibrate --gram`` and refinement from a statistics file (issue 11).

The Gram matrices stored by calibration let ``prune --stats`` refine in the Rust shard
engine without the model; its masks must equal the same kernels called one by one
from Python (``ops.wanda`` → ``ops.mask`` → ``ops.swaps`` / ``ops.dsnot``) on the same
statistics, bit for bit.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from test_cli_errors import one_line, run

from reference.checkpoints import tiny_lm
from symprune import api, ops

SPARSITY = 0.5
# SmolLM2: layers 0 and 1 only, to keep it fast.
FIRST_LAYERS = r"re:model\.layers\.[01]\.(self_attn|mlp)\..*_proj$"


@pytest.fixture(scope="module")
def model(tmp_path_factory, smollm2_dir) -> Path:
    return tiny_lm(tmp_path_factory.mktemp("tiny") / "model", smollm2_dir)


def calibrate(capsys, model: Path, out: Path, *extra: str) -> dict[str, np.ndarray]:
    window = ["--nsamples", "2", "--seqlen", "64", "--device", "cpu", "--no-progress"]
    done = run(capsys, "calibrate", model, "--out", out, *window, *extra)
    assert done.returncode == 0, done.stderr
    return load_file(out)


@pytest.fixture(scope="module")
def stats(tmp_path_factory, model) -> Path:
    from symprune.cli import main

    out = tmp_path_factory.mktemp("stats") / "stats.safetensors"
    window = ["--nsamples", "2", "--seqlen", "64", "--device", "cpu", "--no-progress"]
    assert main(["calibrate", str(model), "--out", str(out), "--gram", *window]) == 0
    return out


def weights_of(model: Path) -> dict[str, np.ndarray]:
    from symprune.checkpoint import CheckpointReader

    reader = CheckpointReader(model)
    return {n: np.array(reader.numpy(n)) for n in reader.names()}


def expected_mask(w, st, prefix, refine, pattern) -> tuple[np.ndarray, object]:
    """The engine's steps, one kernel at a time: wanda, mask, refine."""
    initial = ops.mask(ops.wanda(w, st[prefix + ".in_sq"]), SPARSITY, pattern=pattern)
    if refine == "swaps":
        return ops.swaps(w, initial, st[prefix + ".gram"], pattern=pattern)
    if refine == "r2dsnot-exact":
        args = [st[prefix + k] for k in (".in_sq", ".sum", ".var")]
        return ops.r2dsnot(
            w, initial, *args, pattern=pattern, gram=st[prefix + ".gram"], decision="exact"
        )
    args = [st[prefix + k] for k in (".in_sq", ".sum", ".var")]
    return ops.dsnot(w, initial, *args, pattern=pattern)


def check_refined_run(model, stats_path, out, refine, pattern=None, targets=None) -> int:
    """Prunes from ``stats_path`` with wanda + ``refine`` and checks every pruned tensor
    against :func:`expected_mask`; returns how many masks the refiner changed."""
    refine_name, params = (
        ("r2dsnot", {"decision": "exact"}) if refine == "r2dsnot-exact" else (refine, {})
    )
    report = api.prune(
        model,
        out,
        method="wanda",
        sparsity=None if pattern else SPARSITY,
        pattern=pattern,
        refine=refine_name,
        refine_params=params,
        targets=targets,
        stats=stats_path,
        progress=False,
    )
    assert report.device == "cpu (Rust engine)" and report.refine == refine_name
    st = load_file(stats_path)
    before, after = weights_of(model), weights_of(out)
    assert report.tensors
    changed = 0
    for t in report.tensors:
        w = before[t.name]
        prefix = t.name.removesuffix(".weight")
        mask, done = expected_mask(w, st, prefix, refine, pattern)
        initial = ops.mask(ops.wanda(w, st[prefix + ".in_sq"]), SPARSITY, pattern=pattern)
        changed += int((mask != initial).any())
        want = w.copy()
        want[mask] = 0
        assert np.array_equal(after[t.name].view(np.uint8), want.view(np.uint8)), t.name
        assert (t.loss_before, t.loss_after) == (done.loss_before, done.loss_after), t.name
    untouched = set(before) - {t.name for t in report.tensors}
    for name in untouched:
        assert np.array_equal(before[name].view(np.uint8), after[name].view(np.uint8)), name
    return changed


def test_calibrate_gram_stores_the_gram_matrix_of_every_selected_linear(capsys, model, stats):
    st = load_file(stats)
    plain = calibrate(capsys, model, stats.parent / "plain.safetensors")
    assert not any(k.endswith(".gram") for k in plain)
    prefixes = {k.removesuffix(".in_sq") for k in st if k.endswith(".in_sq")}
    assert len(prefixes) == 14  # 2 layers x 7 linears
    weights = weights_of(model)
    for prefix in prefixes:
        cols = weights[prefix + ".weight"].shape[1]
        h = st[prefix + ".gram"]
        assert h.dtype == np.float32 and h.shape == (cols, cols), prefix
        assert np.array_equal(h, h.T), prefix
        # The factor is SparseGPT's: (2/N) Σ x xᵀ, so its diagonal is 2 · in_sq.
        np.testing.assert_allclose(np.diag(h), 2 * st[prefix + ".in_sq"], rtol=1e-5)
        for key in ("in_sq", "sum", "var", "out_sq"):  # --gram adds, changes nothing
            assert np.array_equal(st[f"{prefix}.{key}"], plain[f"{prefix}.{key}"]), prefix
    # q, k and v read one input, so one Gram matrix.
    attn = "model.layers.1.self_attn"
    assert np.array_equal(st[f"{attn}.q_proj.gram"], st[f"{attn}.v_proj.gram"])
    assert len(st) == 5 * len(prefixes)


@pytest.mark.parametrize(
    ("refine", "pattern"),
    [("swaps", None), ("swaps", "2:4"), ("dsnot", None), ("r2dsnot-exact", None)],
)
def test_prune_from_stats_refines_as_the_kernels_do(model, stats, tmp_path, refine, pattern):
    changed = check_refined_run(model, stats, tmp_path / "out", refine, pattern)
    if refine == "swaps":
        assert changed > 0, "swaps changed no mask: the test could not fail"


def test_a_missing_gram_matrix_is_one_clear_error(capsys, model, stats, tmp_path):
    st = load_file(stats)
    bare = tmp_path / "bare.safetensors"
    save_file({k: v for k, v in st.items() if not k.endswith(".gram")}, bare)
    out = tmp_path / "out"
    args = ["prune", model, out, "--stats", bare, "--method", "wanda", "--refine", "swaps"]
    line = one_line(run(capsys, *args), "symprune calibrate --gram", "refine swaps")
    assert re.search(r"tensor model\.layers\.\d\.\S+\.weight", line), line
    assert not out.exists()
    # DSnoT reads no Gram matrix: the same file serves it.
    done = run(capsys, *args[:-1], "dsnot", "--no-progress")
    assert done.returncode == 0, done.stderr


def test_sparsegpt_with_a_statistics_file_is_still_refused(capsys, model, stats, tmp_path):
    out = tmp_path / "out"
    done = run(capsys, "prune", model, out, "--stats", stats, "--method", "sparsegpt")
    one_line(done, "stats", "sparsegpt", "calibrates layer by layer")
    assert not out.exists()


def test_smollm2_layers_refine_from_stats_as_the_kernels_do(capsys, smollm2_dir, tmp_path):
    stats_path = tmp_path / "stats.safetensors"
    st = calibrate(capsys, smollm2_dir, stats_path, "--gram", "--targets", FIRST_LAYERS)
    assert len({k.rsplit(".", 1)[0] for k in st}) == 14
    assert st["model.layers.1.mlp.down_proj.gram"].shape == (1536, 1536)
    changed = check_refined_run(
        smollm2_dir, stats_path, tmp_path / "out", "swaps", targets=FIRST_LAYERS
    )
    assert changed == 14
