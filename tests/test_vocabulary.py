"""One vocabulary: every name, default and selection rule comes from the core, and both
engines agree on what they select and how they describe a run."""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from reference.checkpoints import tiny_lm
from symprune import InvalidInputError, _core, api, ops
from symprune.calibration.pipeline import prune_streamed
from symprune.checkpoint import prune_checkpoint, read_manifest
from symprune.cli import main
from symprune.spec import METHODS, REFINERS, VOCABULARY, Calibration, PruneSpec
from symprune.spec import selection_rule as spec_selection

# Everything the engines write about a run, apart from how it was calibrated.
RUN_FIELDS = ("method", "parameters", "pattern", "sparsity", "refine", "refine_parameters")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smollm2_dir) -> Path:
    """A tiny random Llama with SmolLM2's tokenizer, as transformers saves it."""
    return tiny_lm(tmp_path_factory.mktemp("tiny"), smollm2_dir)


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> Calibration:
    from symprune import data

    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text(data.builtin_corpus().calibration[:20_000], encoding="utf-8")
    return Calibration(str(path), nsamples=2, seqlen=32, batch_size=2)


def tensors(folder: Path) -> dict[str, bytes]:
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, framework="pt") as f:
            for k in f.keys():
                out[k] = f.get_tensor(k).contiguous().view(torch.uint8).numpy().tobytes()
    return out


@pytest.mark.parametrize("targets", [None, "q_proj"])
def test_both_engines_select_the_same_tensors_and_write_the_same_run(
    tiny, calib, tmp_path, targets
):
    spec = PruneSpec(method="magnitude", sparsity=0.5, targets=targets)
    rust, streamed = tmp_path / "rust", tmp_path / "streamed"
    prune_checkpoint(tiny, rust, spec)
    prune_streamed(tiny, streamed, spec, calib, device="cpu", progress=False)
    a, b = read_manifest(rust), read_manifest(streamed)
    assert {k: a[k] for k in RUN_FIELDS} == {k: b[k] for k in RUN_FIELDS}
    assert a["selection"] == b["selection"]
    assert set(a["tensors"]) == set(b["tensors"])
    chosen = set(a["tensors"])
    if targets:
        assert chosen == {f"model.layers.{i}.self_attn.q_proj.weight" for i in range(2)}
    else:
        assert len(chosen) == 2 * 7  # q, k, v, o, gate, up, down
    assert tensors(rust) == tensors(streamed)  # magnitude: the same masks, byte for byte


def test_the_one_selection_rule_skips_moe_routers():
    """Both engines ask this rule (the pipeline per linear module, the Rust engine per
    tensor): MoE routers and shared-expert gates are never pruned by default."""
    rule = spec_selection()
    kept = [
        "model.layers.0.mlp.gate_proj.weight",
        "model.layers.3.mlp.shared_expert.up_proj.weight",
    ]
    skipped = [
        "model.layers.0.mlp.gate.weight",  # Mixtral / Qwen2-MoE router
        "model.layers.0.mlp.shared_expert_gate.weight",  # Qwen2-MoE
        "model.layers.0.block_sparse_moe.router.weight",
        "model.embed_tokens.weight",
        "lm_head.weight",
    ]
    assert all(rule.selects(n, [8, 8], "BF16") for n in kept)
    assert not any(rule.selects(n, [8, 8], "BF16") for n in skipped)
    assert not rule.selects(kept[0], [8, 0], "BF16")  # nothing to score


def test_unknown_parameters_are_errors_on_both_paths(tiny, tmp_path):
    stats = tmp_path / "stats.safetensors"
    for kwargs in ({"stats": stats}, {}):
        with pytest.raises(InvalidInputError, match="wanda: unknown parameter a; wanda takes"):
            api.prune(tiny, tmp_path / "o", method="wanda", params={"a": 0.5}, **kwargs)
    with pytest.raises(InvalidInputError, match="unknown parameter alpha; dsnot takes"):
        api.prune(tiny, tmp_path / "o", refine="dsnot", refine_params={"alpha": 1.0})
    with pytest.raises(InvalidInputError, match="gamma given without a refinement"):
        PruneSpec(refine_params={"gamma": 1.0})
    assert not (tmp_path / "o").exists()


def test_stochria_seed_changes_its_mask(smollm2_linears, tmp_path, capsys):
    w = smollm2_linears["model.layers.0.self_attn.q_proj.weight"]
    masks = [ops.mask(ops.stochria(w, None, seed=s, tensor="q"), 0.5) for s in (0, 1)]
    assert (masks[0] != masks[1]).any()
    # Through the CLI: --seed reaches stochria (data-free with activation off).
    from reference.checkpoints import tiny_llama

    tiny = tiny_llama(tmp_path / "tiny")
    outs = []
    for seed in ("1", "2"):
        out = tmp_path / f"s{seed}"
        args = ["prune", str(tiny), str(out), "--method", "stochria"]
        assert main([*args, "--param", "activation=false", "--seed", seed]) == 0
        assert read_manifest(out)["parameters"]["seed"] == int(seed)
        outs.append(tensors(out))
    capsys.readouterr()
    assert outs[0] != outs[1]


def test_lp_ria_is_not_ria(smollm2_linears):
    w = smollm2_linears["model.layers.7.mlp.down_proj.weight"]
    in_sq = np.linspace(0.5, 2.0, w.shape[1], dtype=np.float32)
    lp, ria = ops.mask(ops.lp_ria(w, in_sq), 0.5), ops.mask(ops.ria(w, in_sq), 0.5)
    assert (lp != ria).sum() > 1000  # of 884,736 entries
    assert np.array_equal(ops.mask(ops.lp_ria(w, in_sq, p=1.0), 0.5), ria)
    assert PruneSpec(method="lp-ria").effective_params["p"] == 2.0


def test_python_spells_no_method_name_or_default():
    """The lists come from the core; each has an implementation in the registry."""
    from symprune import methods

    assert METHODS == tuple(VOCABULARY["method_names"]) and "sparsegpt" in METHODS
    for name in METHODS:
        assert methods.get(name).name == name
    for name in REFINERS:
        assert callable(methods.get_refiner(name))
    spec = PruneSpec()
    assert (spec.method, spec.pattern, spec.sparsity) == ("wanda", "per-row", 0.5)


def test_the_data_free_cli_needs_no_torch(tmp_path):
    from reference.checkpoints import tiny_llama

    tiny = tiny_llama(tmp_path / "tiny")
    code = (
        "import sys; from symprune.cli import main; "
        f"rc = main(['prune', {str(tiny)!r}, {str(tmp_path / 'out')!r}, '--method', "
        "'magnitude', '--json']); "
        "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["bytes_written"] > 0


def _stub_signatures() -> dict[str, list[str]]:
    """Parameter names of every function and class constructor in ``_core.pyi``."""
    tree = ast.parse((Path(_core.__file__).parent / "_core.pyi").read_text())
    out = {}

    def names(fn: ast.FunctionDef, drop_self: bool) -> list[str]:
        a = fn.args
        params = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]
        return params[1:] if drop_self else params

    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            out[node.name] = names(node, False)
        elif isinstance(node, ast.ClassDef):
            out.setdefault(node.name, [])
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and not item.decorator_list:
                    key = node.name if item.name == "__init__" else f"{node.name}.{item.name}"
                    out[key] = names(item, True)
    return out


def test_the_stubs_match_the_compiled_module():
    stubs = _stub_signatures()
    for key, params in stubs.items():
        obj = _core
        for part in key.split("."):
            obj = getattr(obj, part)
        if params or not isinstance(obj, type):  # a class without __init__ in the stub
            got = [p for p in inspect.signature(obj).parameters if p != "self"]
            assert got == params, key
    compiled = {n for n in dir(_core) if not n.startswith("_") and callable(getattr(_core, n))}
    assert compiled <= {k.split(".")[0] for k in stubs}, compiled - set(stubs)
