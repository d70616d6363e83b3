"""Compressed-tensors sparse checkpoints: symprune's output against the package's
layout (tests/reference/compressed.py, and the package itself where its venv exists),
byte-for-byte round trips, tensors left dense, malformed inputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from reference import compressed as ref
from reference.checkpoints import reshard, tiny_llama, tree_digest
from symprune import CheckpointError, cli
from symprune.checkpoint import (
    COMPRESSED_FORMATS,
    DEFAULT_COMPRESSED_FORMAT,
    SAVE_FORMATS,
    compress,
    decompress,
    inspect,
    prune_checkpoint,
)

ROOT = Path(__file__).resolve().parent
CT_PYTHON = Path(os.environ.get("SYMPRUNE_CT_PYTHON", "/work/venvs/ct/bin/python"))
"""An interpreter with compressed-tensors 0.14.0.1 (it needs transformers<5, so it
lives in its own venv; see tests/compat/ct_roundtrip.py)."""

PATTERN = {"sparse-bitmask": {"sparsity": 0.5}, "sparse-24-bitmask": {"pattern": "2:4"}}
STRUCTURE = {"sparse-bitmask": "unstructured", "sparse-24-bitmask": "2:4"}


def load(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(file, framework="pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


def shard_tensors(file: Path) -> dict[str, torch.Tensor]:
    with safe_open(file, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and a.contiguous().view(torch.uint8).equal(b.contiguous().view(torch.uint8))
    )


def weight_files(path: Path) -> list[str]:
    """The shards and, if there is one, the index."""
    return sorted(p.name for p in path.glob("*.safetensors*"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def pruned(tiny, tmp_path_factory):
    """Tiny Llama pruned by magnitude at 50% and at 2:4, by format."""
    root = tmp_path_factory.mktemp("pruned")
    out = {}
    for fmt, kw in PATTERN.items():
        prune_checkpoint(tiny, root / fmt, method="magnitude", **kw)
        out[fmt] = root / fmt
    return out


def check_round_trip(dense: Path, tmp: Path, fmt: str) -> Path:
    """Compresses `dense`, checks every shard against the reference layout and the
    config block, decompresses, checks the weights come back byte for byte."""
    packed, back = tmp / f"{fmt}.packed", tmp / f"{fmt}.back"
    report = compress(dense, packed, fmt)
    assert report.format == fmt and not report.left_dense
    targets = {t.name.removesuffix(".weight") for t in report.tensors}
    qc = json.loads((packed / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["version"] == "0.14.0.1"
    sc = qc["sparsity_config"]
    assert sc["format"] == fmt and sc["sparsity_structure"] == STRUCTURE[fmt]
    assert set(sc["targets"]) == targets and sc["ignore"] == []
    assert sc["registry_requires_subclass"] is False
    dense_tensors = load(dense)
    zeros = sum(int((t == 0).sum()) for t in dense_tensors.values() if t.is_floating_point())
    numel = sum(t.numel() for t in dense_tensors.values() if t.is_floating_point())
    assert sc["global_sparsity"] == pytest.approx(zeros / numel, abs=1e-12)
    for file in sorted(dense.glob("*.safetensors")):
        ours = shard_tensors(packed / file.name)
        theirs = ref.compress(shard_tensors(file), fmt, targets)
        assert ours.keys() == theirs.keys(), file.name
        bad = [n for n in ours if not same(ours[n], theirs[n])]
        assert not bad, f"{file.name}: {bad[:5]}"
    if (dense / "model.safetensors.index.json").exists():
        index = json.loads((packed / "model.safetensors.index.json").read_text())
        assert index["metadata"]["total_size"] == report.output_tensor_bytes
        assert set(index["weight_map"]) == set(load(packed))
    assert report.output_tensor_bytes < report.input_tensor_bytes

    restored = decompress(packed, back)
    assert len(restored.tensors) == len(report.tensors)
    for name in weight_files(dense):
        assert (back / name).read_bytes() == (dense / name).read_bytes(), name
    for name in ["sparsity.json", "generation_config.json", "tokenizer_config.json"]:
        if (dense / name).exists():
            assert (back / name).read_bytes() == (dense / name).read_bytes(), name
    assert json.loads((back / "config.json").read_text()) == json.loads(
        (dense / "config.json").read_text()
    )
    return packed


def test_formats_come_from_the_core():
    assert SAVE_FORMATS == ("dense", "sparse-bitmask", "sparse-24-bitmask")
    assert COMPRESSED_FORMATS == SAVE_FORMATS[1:]
    assert DEFAULT_COMPRESSED_FORMAT == "sparse-bitmask"


@pytest.mark.parametrize("fmt", COMPRESSED_FORMATS)
def test_tiny_round_trip_matches_the_package_layout(pruned, tmp_path, fmt):
    check_round_trip(pruned[fmt], tmp_path, fmt)


@pytest.fixture(scope="module")
def smollm2_pruned(smollm2_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("smollm2")
    out = {}
    for fmt, kw in PATTERN.items():
        prune_checkpoint(smollm2_dir, root / fmt, method="magnitude", **kw)
        out[fmt] = root / fmt
    return out


@pytest.mark.real
@pytest.mark.parametrize("fmt", COMPRESSED_FORMATS)
def test_smollm2_round_trip_matches_the_package_layout(smollm2_pruned, tmp_path, fmt):
    packed = check_round_trip(smollm2_pruned[fmt], tmp_path, fmt)
    # The format's arithmetic (docs/formats.md §6): F32 halves plus a bit per element.
    report = compress(smollm2_pruned[fmt], tmp_path / "again", fmt)
    dense = sum(t.dense_bytes for t in report.tensors)
    stored = sum(t.compressed_bytes for t in report.tensors)
    assert stored / dense == pytest.approx(0.5 + 1 / 32, abs=0.01)
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (
        packed / "model.safetensors"
    ).read_bytes()


def check_inspect(dense: Path, tmp: Path, fmt: str) -> None:
    """Inspecting the compressed checkpoint reports what inspecting it
    decompressed (and the dense input) does, for every pattern."""
    packed, back = tmp / f"{fmt}.ipacked", tmp / f"{fmt}.iback"
    compress(dense, packed, fmt)
    decompress(packed, back)

    def report(path: Path, pattern: str | None) -> dict:
        return {**inspect(path, pattern=pattern).to_dict(), "path": None}

    for pattern in [None, "2:4", "1:4", "4:8"]:
        got = report(packed, pattern)
        assert got == report(back, pattern) == report(dense, pattern), pattern
        assert {t["name"] for t in got["tensors"]} == set(load(back)), pattern
    assert inspect(packed, pattern="2:4").nm_ok is (fmt == "sparse-24-bitmask")


@pytest.mark.parametrize("fmt", COMPRESSED_FORMATS)
def test_inspect_reads_compressed_checkpoints(pruned, tmp_path, fmt, capsys):
    check_inspect(pruned[fmt], tmp_path, fmt)
    packed, back = tmp_path / f"{fmt}.ipacked", tmp_path / f"{fmt}.iback"
    tables = []
    for path in [packed, back]:
        cli.main(["inspect", str(path), "--pattern", "2:4"])
        tables.append(capsys.readouterr().out)
    assert tables[0] == tables[1] and ".weight *" in tables[0]


@pytest.mark.real
def test_an_interrupted_compression_of_smollm2_resumes_to_the_same_bytes(smollm2_pruned, tmp_path):
    fmt = "sparse-24-bitmask"
    dense = reshard(smollm2_pruned[fmt], tmp_path / "sharded", 3)
    whole = compress(dense, tmp_path / "whole", fmt)
    index = json.loads((dense / "model.safetensors.index.json").read_text())["weight_map"]
    first, second = (f"model-0000{i}-of-00003.safetensors" for i in (1, 2))

    class Stop(Exception):
        pass

    def stop_in_the_second_shard(t):
        if index[t.name] == second:
            raise Stop

    out = tmp_path / "out"
    with pytest.raises(Stop):
        compress(dense, out, fmt, progress=stop_in_the_second_shard)
    assert sorted(p.name for p in out.iterdir()) == [
        ".symprune-journal.json",
        ".symprune-output",
        first,
    ]
    with pytest.raises(CheckpointError, match="interrupted run of another input or other"):
        compress(dense, out, "sparse-bitmask")
    again = compress(dense, out, fmt)
    assert again.resumed_shards == 1 and whole.resumed_shards == 0
    assert [t.name for t in again.tensors] == [t.name for t in whole.tensors]
    assert again.global_sparsity == whole.global_sparsity
    assert tree_digest(out) == tree_digest(tmp_path / "whole")
    assert "resumed shards" in again.summary()


@pytest.mark.real
@pytest.mark.parametrize("fmt", COMPRESSED_FORMATS)
def test_inspect_reads_compressed_smollm2(smollm2_pruned, tmp_path, fmt):
    check_inspect(smollm2_pruned[fmt], tmp_path, fmt)


def run_compat(dense: Path, packed: Path, logits: bool) -> dict:
    cmd = [str(CT_PYTHON), str(ROOT / "compat" / "ct_roundtrip.py"), str(dense), str(packed)]
    done = subprocess.run(
        cmd + (["--logits"] if logits else []), capture_output=True, text=True, timeout=900
    )
    assert done.stdout, done.stderr[-3000:]
    result = json.loads(done.stdout[done.stdout.index("{") :])
    assert done.returncode == 0 and result["ok"], json.dumps(result, indent=2)
    return result


needs_ct = pytest.mark.skipif(
    not CT_PYTHON.exists(),
    reason=f"no compressed-tensors interpreter at {CT_PYTHON} (set SYMPRUNE_CT_PYTHON; "
    "see tests/compat/ct_roundtrip.py)",
)


@needs_ct
@pytest.mark.parametrize("fmt", COMPRESSED_FORMATS)
def test_the_package_reads_and_writes_the_same_tensors(pruned, tmp_path, fmt):
    packed = tmp_path / "packed"
    compress(pruned[fmt], packed, fmt)
    # transformers' loader compresses a meta-device model first, which the package's
    # sparse-bitmask compressor cannot (docs/formats.md §4); 2:4 loads.
    result = run_compat(pruned[fmt], packed, logits=fmt == "sparse-24-bitmask")
    assert result.get("logits_equal", True)


@pytest.mark.real
@needs_ct
@pytest.mark.parametrize("fmt", COMPRESSED_FORMATS)
def test_the_package_agrees_on_smollm2(smollm2_pruned, tmp_path, fmt):
    packed = tmp_path / "packed"
    compress(smollm2_pruned[fmt], packed, fmt)
    run_compat(smollm2_pruned[fmt], packed, logits=fmt == "sparse-24-bitmask")


def test_tensors_that_are_not_2_4_are_left_dense_and_ignored(tiny, tmp_path):
    # Layer 1 is not pruned at all: not 2:4.
    mixed = tmp_path / "mixed"
    prune_checkpoint(tiny, mixed, method="magnitude", pattern="2:4", ignore=r"layers\.1\.")
    report = compress(mixed, tmp_path / "packed", "sparse-24-bitmask")
    left = {t.name: t.reason for t in report.left_dense}
    assert left and all(".layers.1." in n for n in left)
    assert all(
        "is not 2:4: row 0, columns 0..3 hold more than 2 nonzeros" in r for r in left.values()
    )
    sc = json.loads((tmp_path / "packed" / "config.json").read_text())["quantization_config"][
        "sparsity_config"
    ]
    assert sorted(sc["ignore"]) == sorted(n.removesuffix(".weight") for n in left)
    assert not set(sc["ignore"]) & set(sc["targets"])
    packed = load(tmp_path / "packed")
    dense = load(mixed)
    for name in left:
        assert same(packed[name], dense[name])
    assert "left dense" in report.summary()
    # Inspected as it is: the ignored tensors dense, the others from their bitmasks.
    got = inspect(tmp_path / "packed", pattern="2:4")
    assert {**got.to_dict(), "path": None} == {
        **inspect(mixed, pattern="2:4").to_dict(),
        "path": None,
    }
    assert got.nm_ok is False
    # ... and still round trips.
    decompress(tmp_path / "packed", tmp_path / "back")
    for name in weight_files(mixed):
        assert (tmp_path / "back" / name).read_bytes() == (mixed / name).read_bytes()


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".symprune*"))
    return dst


def rewrite(dir: Path, edit) -> None:
    """Applies `edit` to the tensors of the shard holding layer 0, keeping the index."""
    file = next(f for f in sorted(dir.glob("*.safetensors")) if "layers.0" in str(shard_tensors(f)))
    tensors = shard_tensors(file)
    edit(tensors)
    save_file(tensors, file, metadata={"format": "pt"})
    index = dir / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"] = {
        n: f for n, f in data["weight_map"].items() if f != file.name or n in tensors
    }
    index.write_text(json.dumps(data))


def test_malformed_compressed_inputs_give_one_clear_error(pruned, tmp_path):
    packed = tmp_path / "packed"
    compress(pruned["sparse-bitmask"], packed, "sparse-bitmask")
    m = "model.layers.0.self_attn.q_proj"

    def shorter(t):
        t[f"{m}.bitmask"] = t[f"{m}.bitmask"][:, :-1].contiguous()

    def fewer(t):
        t[f"{m}.compressed"] = t[f"{m}.compressed"][:-1].contiguous()

    def config(c):
        c["quantization_config"]["sparsity_config"]["format"] = "sparse-8-bitmask"

    cases = {
        "short": (
            shorter,
            f"tensor {m}.weight: {m}.bitmask is U8 [32, 3]; the shape [32, 32] needs",
        ),
        "count": (fewer, f"tensor {m}.weight: {m}.compressed holds"),
    }
    for name, (edit, message) in cases.items():
        bad = copy_tree(packed, tmp_path / name)
        rewrite(bad, edit)
        with pytest.raises(CheckpointError) as e:
            inspect(bad)
        assert message in str(e.value)
        with pytest.raises(CheckpointError, match="bitmask") as e:
            decompress(bad, tmp_path / f"{name}.out")
        assert message in str(e.value)
        assert not list((tmp_path / f"{name}.out").glob("*.safetensors"))
    bad = copy_tree(packed, tmp_path / "config")
    data = json.loads((bad / "config.json").read_text())
    config(data)
    (bad / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match='format "sparse-8-bitmask" is not a sparse format'):
        decompress(bad, tmp_path / "config.out")
    with pytest.raises(CheckpointError, match="has no quantization_config"):
        decompress(pruned["sparse-bitmask"], tmp_path / "dense.out")


def test_cli_compress_and_decompress(pruned, tmp_path, capsys):
    dense = pruned["sparse-24-bitmask"]
    packed, back = tmp_path / "packed", tmp_path / "back"
    assert (
        cli.main(["compress", str(dense), str(packed), "--format", "sparse-24-bitmask", "--json"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["format"] == "sparse-24-bitmask" and out["tensors"]
    assert cli.main(["decompress", str(packed), str(back)]) == 0
    assert "tensors converted" in capsys.readouterr().out
    for name in weight_files(dense):
        assert (back / name).read_bytes() == (dense / name).read_bytes()
    assert cli.main(["compress", str(dense), str(packed)]) == 1
    assert "exists and is not empty" in capsys.readouterr().err


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
