"""The streaming checkpoint engine against an independent path (safetensors + symprune.ops)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import save_file

from reference.checkpoints import LINEAR, SHARDS, entry, safetensors_bytes, tiny_llama, tree_digest
from symprune import CheckpointError, InvalidInputError, __version__, ops
from symprune.checkpoint import (
    CheckpointReader,
    CheckpointWriter,
    inspect,
    prune_checkpoint,
    read_manifest,
)
from symprune.spec import PruneSpec


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


def load(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(file, framework="pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(
        a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)
    )


def expected_masks(weights, method, *, sparsity=0.5, pattern=None, stats=None):
    """Masks of every default-selected weight through symprune.ops."""
    out = {}
    for name, w in weights.items():
        if not LINEAR.fullmatch(name):
            continue
        prefix = name.removesuffix(".weight")
        extra = {}
        if stats is not None:
            extra = {"in_sq": stats[prefix + ".in_sq"], "out_sq": stats[prefix + ".out_sq"]}
        scores = ops.score(w, method, tensor=name, **extra)
        out[name] = ops.mask(scores, sparsity, pattern=pattern, tensor=name)
    return out


def check_output(src: Path, dst: Path, masks: dict[str, np.ndarray]) -> None:
    """Pruned tensors are the input with the mask zeroed; every other byte is the input's."""
    before, after = load(src), load(dst)
    assert set(before) == set(after)
    for name, w in before.items():
        if name in masks:
            want = w.clone()
            want[torch.from_numpy(masks[name])] = 0
            assert same_bytes(after[name], want), name
        else:
            assert same_bytes(after[name], w), name
    for file in SHARDS:
        a, b = (src / file).read_bytes(), (dst / file).read_bytes()
        n = 8 + int.from_bytes(a[:8], "little")
        assert len(a) == len(b) and a[:n] == b[:n], file
    for name in ("config.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (src / name).read_bytes() == (dst / name).read_bytes()
    index_in = json.loads((src / "model.safetensors.index.json").read_text())
    index_out = json.loads((dst / "model.safetensors.index.json").read_text())
    assert index_out["weight_map"] == index_in["weight_map"]
    total = sum(t.numel() * t.element_size() for t in before.values())
    assert index_out["metadata"]["total_size"] == total


CASES = [
    ("magnitude", {"sparsity": 0.5}),
    ("symmetric", {"sparsity": 0.6, "pattern": "per-matrix"}),
    ("magnitude", {"pattern": "2:4"}),
    ("ria", {"sparsity": 0.3, "params": {"a": 0.0}, "pattern": "per-matrix"}),
]


@pytest.mark.parametrize(("method", "kw"), CASES)
def test_round_trip_matches_ops(tiny, tmp_path, method, kw):
    digest = tree_digest(tiny)
    out = tmp_path / "out"
    report = prune_checkpoint(tiny, out, method=method, **kw)
    mask_kw = {k: v for k, v in kw.items() if k in ("sparsity", "pattern")}
    if method == "ria":  # ops.ria with a = 0 needs no statistics either
        masks = {
            n: ops.mask(ops.ria(w, None, a=0.0), kw["sparsity"], pattern=kw["pattern"], tensor=n)
            for n, w in load(tiny).items()
            if LINEAR.fullmatch(n)
        }
    else:
        masks = expected_masks(load(tiny), method, **mask_kw)
    check_output(tiny, out, masks)
    assert tree_digest(tiny) == digest

    assert sorted(t.name for t in report.tensors) == sorted(masks)
    for t in report.tensors:
        assert t.sparsity == masks[t.name].sum() / masks[t.name].size
        assert t.zeros == masks[t.name].sum()
    if kw.get("pattern", "per-row") == "per-row":
        for m in masks.values():
            assert (m.sum(axis=1) == int(m.shape[1] * kw["sparsity"])).all()
    info = read_manifest(out)
    assert info["method"] == method
    assert info["pattern"] == kw.get("pattern", "per-row")
    assert info["symprune_version"] == __version__
    assert set(info["tensors"]) == set(masks)
    # No journal, no temporary files: only the marker of a symprune output.
    assert [p.name for p in out.glob(".*")] == [".symprune-output"]


def test_output_loads_with_transformers(tiny, tmp_path):
    import transformers

    out = tmp_path / "out"
    prune_checkpoint(tiny, out, method="magnitude", sparsity=0.5)
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    q = model.model.layers[2].self_attn.q_proj.weight
    assert (q == 0).float().mean().item() == 0.5
    logits = model(torch.tensor([[1, 2, 3, 4, 5]])).logits
    assert logits.shape == (1, 5, 128) and torch.isfinite(logits).all()


def stats_file(tiny: Path, path: Path, drop: str | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    stats = {}
    for name, w in load(tiny).items():
        if LINEAR.fullmatch(name):
            prefix = name.removesuffix(".weight")
            rows, cols = w.shape
            stats[prefix + ".in_sq"] = (rng.random(cols) * 4).astype(np.float32)
            stats[prefix + ".out_sq"] = (rng.random(rows) * 2).astype(np.float32)
            stats[prefix + ".sum"] = rng.standard_normal(cols).astype(np.float32)
            stats[prefix + ".var"] = rng.random(cols).astype(np.float32)
    if drop:
        del stats[drop]
    save_file(stats, path)
    return stats


@pytest.mark.parametrize("method", ["wanda", "symwanda"])
def test_data_aware_methods_read_statistics(tiny, tmp_path, method):
    stats = stats_file(tiny, tmp_path / "stats.safetensors")
    out = tmp_path / "out"
    prune_checkpoint(tiny, out, method=method, sparsity=0.5, stats=tmp_path / "stats.safetensors")
    check_output(tiny, out, expected_masks(load(tiny), method, stats=stats))


def test_missing_statistics_are_named(tiny, tmp_path):
    missing = "model.layers.1.mlp.down_proj"
    stats_file(tiny, tmp_path / "stats.safetensors", drop=missing + ".in_sq")
    with pytest.raises(CheckpointError, match=rf"tensor {missing}\.weight: .*no {missing}\.in_sq"):
        prune_checkpoint(tiny, tmp_path / "o", method="wanda", stats=tmp_path / "stats.safetensors")
    with pytest.raises(InvalidInputError, match="needs activation statistics: give a"):
        prune_checkpoint(tiny, tmp_path / "o", method="wanda")
    assert not (tmp_path / "o").exists()


def test_reader_views(tiny):
    reader = CheckpointReader(tiny)
    tensors = load(tiny)
    assert sorted(reader.names()) == sorted(tensors) and len(reader) == len(tensors)
    assert reader.shards == SHARDS and reader.metadata == {"format": "pt"}
    names = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32", torch.int8: "I8"}
    for name, want in tensors.items():
        assert reader.dtype(name) == names[want.dtype]
        assert reader.shape(name) == tuple(want.shape)
        assert same_bytes(reader.torch(name), want), name
        view = reader.numpy(name)
        assert not view.flags.writeable
        assert view.tobytes() == want.contiguous().view(torch.uint8).numpy().tobytes()
    with pytest.raises(CheckpointError, match="tensor nope: is not in this checkpoint"):
        reader.numpy("nope")


def test_shards_larger_than_memory_open(tmp_path):
    size = 64 * 2**30  # more than the memory of the machines this runs on
    raw = safetensors_bytes({"big": entry("U8", [size], 0, size)}, b"")
    (tmp_path / "big").mkdir()
    with open(tmp_path / "big" / "model.safetensors", "wb") as f:
        f.write(raw)
        f.truncate(len(raw) + size)  # sparse: takes no disk
    reader = CheckpointReader(tmp_path / "big")
    view = reader.numpy("big")
    assert view.shape == (size,) and view[-1] == 0 and not view.flags.writeable


def test_python_writer_matches_the_engine(tiny, tmp_path):
    engine, by_hand = tmp_path / "engine", tmp_path / "hand"
    prune_checkpoint(tiny, engine, method="magnitude", sparsity=0.5)
    reader = CheckpointReader(tiny)
    masks = expected_masks(load(tiny), "magnitude")
    with CheckpointWriter(tiny, by_hand) as writer:
        for name, prune in masks.items():
            w = reader.torch(name).clone()
            w[torch.from_numpy(prune)] = 0
            writer.write(name, w.float() if w.dtype == torch.bfloat16 else w)
        done = writer.finish(PruneSpec(method="magnitude", sparsity=0.5).describe())
    assert set(done["tensors"]) == set(masks)
    for file in [*SHARDS, "model.safetensors.index.json", "config.json"]:
        assert (engine / file).read_bytes() == (by_hand / file).read_bytes(), file
    assert read_manifest(by_hand)["tensors"] == read_manifest(engine)["tensors"]


def test_writer_refuses_wrong_tensors_and_aborts_cleanly(tiny, tmp_path):
    out = tmp_path / "out"
    name = "model.layers.2.mlp.up_proj.weight"
    with pytest.raises(RuntimeError, match="boom"):
        with CheckpointWriter(tiny, out) as writer:
            with pytest.raises(InvalidInputError, match="shape"):
                writer.write(name, np.zeros((3, 3), np.float32))
            with pytest.raises(InvalidInputError, match="cannot be written as F32"):
                writer.write(name, np.zeros((64, 32), np.float64))
            writer.write(name, np.zeros((64, 32), np.float32))
            raise RuntimeError("boom")
    left = {p.name for p in out.iterdir()}
    assert left == {".symprune-journal.json", ".symprune-output"}, left


def test_an_interrupted_run_resumes_byte_identical(tiny, tmp_path):
    digest = tree_digest(tiny)
    once, twice = tmp_path / "once", tmp_path / "twice"
    prune_checkpoint(tiny, once, method="symmetric", sparsity=0.5)

    seen = []

    def stop_in_shard_two(report):
        seen.append(report.name)
        if len(seen) == 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prune_checkpoint(tiny, twice, method="symmetric", sparsity=0.5, progress=stop_in_shard_two)
    assert not (twice / "sparsity.json").exists() and not (twice / "config.json").exists()
    assert (twice / SHARDS[0]).exists() and not (twice / SHARDS[1]).exists()
    with pytest.raises(CheckpointError, match="interrupted run with other settings"):
        prune_checkpoint(tiny, twice, method="magnitude", sparsity=0.5)
    report = prune_checkpoint(tiny, twice, method="symmetric", sparsity=0.5)
    assert report.resumed_shards == 1 and sum(t.resumed for t in report.tensors) == 7
    assert tree_digest(twice) == tree_digest(once)
    assert tree_digest(tiny) == digest


def test_output_location_is_checked(tiny, tmp_path):
    with pytest.raises(CheckpointError, match="is the input directory .* or inside it"):
        prune_checkpoint(tiny, tiny / "pruned", method="magnitude")
    with pytest.raises(CheckpointError, match="is the input directory"):
        prune_checkpoint(tiny, tiny, method="magnitude")
    out = tmp_path / "out"
    prune_checkpoint(tiny, out, method="magnitude")
    with pytest.raises(CheckpointError, match="already holds a finished pruned checkpoint"):
        prune_checkpoint(tiny, out, method="magnitude")
    prune_checkpoint(tiny, out, overwrite=True, method="magnitude", sparsity=0.25)
    assert read_manifest(out)["sparsity"] == 0.25
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="exists and is not empty"):
        prune_checkpoint(tiny, tmp_path / "busy", method="magnitude")


def test_selection_rules(tiny, tmp_path):
    report = prune_checkpoint(
        tiny,
        tmp_path / "a",
        method="magnitude",
        targets=["re:.*q_proj$", "lm_head"],
        ignore=[r"layers\.0\."],
    )
    assert sorted(t.name for t in report.tensors) == [
        "lm_head.weight",
        "model.layers.1.self_attn.q_proj.weight",
        "model.layers.2.self_attn.q_proj.weight",
    ]
    with pytest.raises(CheckpointError, match="no tensor matches the selection"):
        prune_checkpoint(tiny, tmp_path / "b", method="magnitude", targets="nothing-like-this")
    with pytest.raises(InvalidInputError, match="not a valid regex"):
        prune_checkpoint(tiny, tmp_path / "c", method="magnitude", ignore="re:(")


def test_inspect_reports_sparsity_and_nm(tiny, tmp_path):
    prune_checkpoint(tiny, tmp_path / "nm", method="magnitude", pattern="2:4")
    prune_checkpoint(tiny, tmp_path / "un", method="magnitude", sparsity=0.5)
    good = inspect(tmp_path / "nm", pattern="2:4")
    bad = inspect(tmp_path / "un", pattern="2:4")
    assert good.nm_ok is True and bad.nm_ok is False
    assert good.selected_sparsity == 0.5
    by_name = {t.name: t for t in good.tensors}
    assert by_name["model.layers.0.mlp.up_proj.weight"].nm_violations == 0
    assert by_name["model.layers.2.mlp.qweight"].nm_violations is None
    assert not by_name["model.layers.2.mlp.qweight"].selected
    dense = inspect(tiny)
    assert dense.selected_sparsity == 0.0 and dense.pattern is None and dense.nm_ok is None
    assert "model.layers.0.mlp.up_proj.weight *" in good.table()
