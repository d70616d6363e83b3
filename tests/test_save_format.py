"""`prune --save-format`: a pruning run that stores its output compressed equals the
dense run compressed afterwards, byte for byte, and leaves no staging behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reference.checkpoints import tiny_llama, tree_digest
from symprune import InvalidInputError, api, cli
from symprune.checkpoint import compress, decompress


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize(
    ("fmt", "target"),
    [("sparse-bitmask", {"sparsity": 0.5}), ("sparse-24-bitmask", {"pattern": "2:4"})],
)
def test_a_compressed_run_equals_the_dense_run_compressed(tiny, tmp_path, fmt, target):
    dense = tmp_path / "dense"
    api.prune(tiny, dense, method="magnitude", progress=False, **target)
    compress(dense, tmp_path / "expected", fmt)

    out = tmp_path / "runs" / "out"
    report = api.prune(tiny, out, method="magnitude", save_format=fmt, progress=False, **target)
    assert tree_digest(out) == tree_digest(tmp_path / "expected")
    assert leftovers(out.parent) == []  # the dense staging is gone
    assert report.output == str(out)
    assert report.compression["format"] == fmt and report.compression["left_dense"] == []
    assert report.compression["stored_tensor_bytes"] < report.compression["dense_tensor_bytes"]
    assert f"{fmt}: tensor bytes" in report.summary()

    # Replaced only when asked, and then whole: the same bytes again.
    with pytest.raises(InvalidInputError, match="exists and is not empty"):
        api.prune(tiny, out, method="magnitude", save_format=fmt, progress=False, **target)
    api.prune(
        tiny, out, method="magnitude", save_format=fmt, overwrite=True, progress=False, **target
    )
    assert tree_digest(out) == tree_digest(tmp_path / "expected")
    assert leftovers(out.parent) == []


def test_a_foreign_directory_is_never_replaced(tiny, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(InvalidInputError, match="not a symprune output"):
        api.prune(
            tiny, out, method="magnitude", save_format="sparse-bitmask", overwrite=True,
            progress=False,
        )  # fmt: skip
    assert (out / "notes.txt").read_text() == "keep me"
    assert leftovers(tmp_path) == []  # refused before any work


def test_bad_save_formats_are_refused(tiny, tmp_path, capsys):
    with pytest.raises(InvalidInputError, match="unknown format 'bitmask'; one of dense"):
        api.prune(tiny, tmp_path / "o", method="magnitude", save_format="bitmask")
    with pytest.raises(InvalidInputError, match="symprune compress OUT_DIR NEW_DIR"):
        api.prune(
            tiny, tmp_path / "o", method="magnitude", save_format="sparse-bitmask", rank=0,
            world_size=2,
        )  # fmt: skip
    with pytest.raises(SystemExit) as done:
        cli.main(["prune", str(tiny), str(tmp_path / "o"), "--save-format", "x"])
    assert done.value.code == 2
    assert "--save-format: invalid choice: 'x'" in capsys.readouterr().err


def test_the_2_4_summary_suggests_the_2_4_format(tiny, tmp_path):
    report = api.prune(tiny, tmp_path / "o", method="magnitude", pattern="2:4", progress=False)
    assert "--save-format sparse-24-bitmask" in report.summary()


@pytest.mark.real
def test_cli_wanda_2_4_on_smollm2_stored_compressed(smollm2_dir, tmp_path, capsys):
    """The calibrated pipeline, stored as sparse-24-bitmask from the command line:
    decompressed, it is the dense run's checkpoint byte for byte."""
    args = ["--method", "wanda", "--pattern", "2:4", "--nsamples", "2", "--seqlen", "64"]
    args += ["--no-eval", "--no-progress", "--device", "cpu", "--batch-size", "1"]
    dense, packed = tmp_path / "dense", tmp_path / "packed"
    assert cli.main(["prune", str(smollm2_dir), str(dense), *args]) == 0
    capsys.readouterr()
    cmd = ["prune", str(smollm2_dir), str(packed), *args, "--save-format", "sparse-24-bitmask"]
    assert cli.main([*cmd, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["compression"]["format"] == "sparse-24-bitmask"
    assert out["output"] == str(packed)
    sc = json.loads((packed / "config.json").read_text())["quantization_config"]
    assert sc["sparsity_config"]["format"] == "sparse-24-bitmask"
    decompress(packed, tmp_path / "back")
    for file in sorted(dense.glob("*.safetensors*")):
        assert (tmp_path / "back" / file.name).read_bytes() == file.read_bytes(), file.name
    assert leftovers(tmp_path) == []
