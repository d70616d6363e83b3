"""The symprune CLI: prune / inspect, and one clear error line for every malformed input."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from reference.checkpoints import SHARDS, entry, safetensors_bytes, tiny_llama, tree_digest
from symprune.cli import main

GOOD = {"w": entry("F32", [2, 2], 0, 16)}


def cli(*args: str | Path, **kw) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "symprune.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)


def run(capsys, *args: str | Path) -> subprocess.CompletedProcess:
    """The CLI inside this process (no interpreter start-up): exit status and streams."""
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def one_line_error(done: subprocess.CompletedProcess, *fragments: str) -> str:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("symprune: error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("cli") / "model")


def single(path: Path, content: bytes) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(content)
    return path


MALFORMED = {
    "truncated": (b"\x01\x02", ["too short"]),
    "header past end": (safetensors_bytes(GOOD, b"\0" * 16, length=10_000), ["runs past the end"]),
    "header too large": (safetensors_bytes(GOOD, b"", length=200_000_000), ["100 MB"]),
    "invalid json": (safetensors_bytes("{'w': 1", b""), ["not a valid JSON object"]),
    "unknown dtype": (
        safetensors_bytes({"w": entry("Q4_K", [2], 0, 2)}, b"\0" * 2),
        ["tensor w", 'unknown dtype "Q4_K"'],
    ),
    "overlap": (
        safetensors_bytes(
            {"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 4, 12)}, b"\0" * 12
        ),
        ["tensor b", "overlap the previous tensor a"],
    ),
    "gap": (
        safetensors_bytes(
            {"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 12, 20)}, b"\0" * 20
        ),
        ["tensor b", "leave a gap"],
    ),
    "out of range": (
        safetensors_bytes({"a": entry("F32", [4], 0, 16)}, b"\0" * 8),
        ["tensor a", "run past the end of the data"],
    ),
    "shape mismatch": (
        safetensors_bytes({"a": entry("F32", [3, 3], 0, 16)}, b"\0" * 16),
        ["tensor a", "needs 36 bytes"],
    ),
    "trailing bytes": (safetensors_bytes(GOOD, b"\0" * 20), ["4 bytes follow the last tensor"]),
}


@pytest.mark.parametrize("case", MALFORMED)
@pytest.mark.parametrize("command", ["prune", "inspect"])
def test_malformed_shards_give_one_line(capsys, tmp_path, case, command):
    content, fragments = MALFORMED[case]
    model = single(tmp_path / "model", content)
    digest = tree_digest(model)
    args = [command, model] + ([tmp_path / "out"] if command == "prune" else [])
    one_line_error(run(capsys, *args), "model.safetensors", *fragments)
    assert not (tmp_path / "out").exists()
    assert tree_digest(model) == digest


def sharded_variant(tiny: Path, dst: Path, case: str) -> list[str]:
    """A copy of the tiny checkpoint with its index broken in one way."""
    import shutil

    shutil.copytree(tiny, dst)
    index_path = dst / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    name = "model.layers.1.mlp.up_proj.weight"
    if case == "missing shard":
        (dst / SHARDS[1]).unlink()
        return ["tensor model.layers.1.", f"shard {SHARDS[1]}, which does not exist"]
    if case == "listed twice":
        text = index_path.read_text()
        line = f'"{name}": "{SHARDS[1]}",'
        index_path.write_text(text.replace(line, line + "\n    " + line))
        return [f"tensor {name}", "listed twice in weight_map"]
    if case == "stored twice":
        shutil.copy(dst / SHARDS[1], dst / "extra.safetensors")
        index["weight_map"]["model.norm.weight"] = "extra.safetensors"
        index["weight_map"][name] = "extra.safetensors"
        index_path.write_text(json.dumps(index))
        return ["is also in shard"]
    if case == "mapped elsewhere":
        index["weight_map"][name] = SHARDS[0]
        index_path.write_text(json.dumps(index))
        return [f"tensor {name}", f"is mapped to {SHARDS[0]} but stored in {SHARDS[1]}"]
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case", ["missing shard", "listed twice", "stored twice", "mapped elsewhere"]
)
def test_malformed_indexes_give_one_line(capsys, tiny, tmp_path, case):
    model = tmp_path / "model"
    fragments = sharded_variant(tiny, model, case)
    one_line_error(run(capsys, "prune", model, tmp_path / "out"), *fragments)
    assert not (tmp_path / "out").exists()


def test_prune_and_inspect(tiny, tmp_path):
    digest = tree_digest(tiny)
    out = tmp_path / "out"
    done = cli("prune", tiny, out, "--method", "magnitude", "--sparsity", "0.5", "--pattern", "2:4")
    assert done.returncode == 0, done.stderr
    for row in ("tensors pruned     21", "achieved sparsity  0.5000", "peak RSS", "bytes written"):
        assert row in done.stdout, done.stdout
    assert tree_digest(tiny) == digest

    shown = cli("inspect", out, "--json", "--pattern", "2:4")
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert info["nm_ok"] is True and info["selected_sparsity"] == 0.5
    table = cli("inspect", out)
    assert "model.layers.0.mlp.up_proj.weight *" in table.stdout

    one_line_error(cli("prune", tiny, out), "already holds a finished pruned checkpoint")
    one_line_error(cli("prune", tiny, tiny / "sub"), "or inside it")
    one_line_error(
        cli("prune", tiny, tmp_path / "o2", "--method", "wanda", "--stats", tmp_path / "no.st"),
        "no.st",
    )
    one_line_error(cli("prune", tiny, tmp_path / "o3", "--pattern", "3:3"), '"3:3" is not N:M')
    one_line_error(cli("prune", tiny, tmp_path / "o4", "--sparsity", "1.5"), "sparsity")
    one_line_error(cli("prune", tmp_path / "nowhere", tmp_path / "o5"), "nowhere: no such folder")
    # A failed --overwrite run keeps the finished output; a good one replaces it.
    one_line_error(cli("prune", tiny, out, "--overwrite", "--seqlen", "4096"), "seqlen 4096")
    assert (out / "sparsity.json").is_file()
    assert cli("prune", tiny, out, "--overwrite", "--method", "magnitude").returncode == 0


def limit_file_size(limit: int):
    def apply() -> None:
        # EFBIG instead of the default SIGXFSZ kill, so the write fails as on a full disk.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_failed_write_then_rerun_is_byte_identical(tiny, tmp_path):
    once, twice = tmp_path / "once", tmp_path / "twice"
    assert cli("prune", tiny, once, "--method", "symmetric").returncode == 0
    sizes = sorted((tiny / f).stat().st_size for f in SHARDS)
    # Room for the first two shards, not for the largest (the third).
    failed = cli(
        "prune", tiny, twice, "--method", "symmetric", preexec_fn=limit_file_size(sizes[1])
    )
    one_line_error(failed, SHARDS[2], "File too large")
    assert not (twice / "sparsity.json").exists() and not (twice / "config.json").exists()
    assert (twice / SHARDS[1]).exists() and not (twice / SHARDS[2]).exists()
    kept = [(twice / f).stat().st_ino for f in SHARDS[:2]]
    resumed = cli("prune", tiny, twice, "--method", "symmetric")
    assert resumed.returncode == 0, resumed.stderr
    assert [(twice / f).stat().st_ino for f in SHARDS[:2]] == kept  # resumed, not rewritten
    assert tree_digest(twice) == tree_digest(once)
