"""Nothing outside the output can be harmed (issue 14), tried as an attacker would.

Every case of :data:`CASES` sets up an attack on a fresh copy of a tiny
checkpoint and runs the CLI: in this process where nothing can hang or crash
the interpreter, in a subprocess under a kill timeout where something could
(crafted headers, a shard truncated under the map, a killed run). Each checks
the exit status; for a refusal, one line on stderr naming the file and the
fix, and no output that looks finished (an output that was there is left as
it was); and, always, the sha256 of every file outside OUT_DIR unchanged, the
input's included.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from reference.checkpoints import LINEAR, SHARDS, entry, safetensors_bytes, tiny_llama
from symprune import CheckpointError, InvalidInputError
from symprune.checkpoint import (
    CheckpointReader,
    CheckpointWriter,
    prune_checkpoint,
    read_manifest,
)
from symprune.cli import main

TIMEOUT = 120  # seconds, for any one run
STAGING = ".out.symprune-staging"  # where an overwrite of OUT_DIR "out" is staged
U64_MAX = 2**64 - 1


@dataclass
class Attack:
    """One attack: a CLI command (or a Python script) and what must come of it."""

    argv: list[str | Path]
    out: Path | None = None  # what may change: OUT_DIR (None: nothing may)
    fragments: tuple[str, ...] = ()  # in the one error line: the file and the fix
    rc: int = 1
    script: str | None = None  # run `python -c script *argv` instead of the CLI
    isolated: bool = False  # in a subprocess: it could hang, abort or crash
    may_change: tuple[Path, ...] = ()  # files outside OUT_DIR the attack itself changes
    out_may_change: bool = False  # a failed run may leave resumable work in OUT_DIR
    after: Callable[[], None] | None = None  # further checks


@dataclass
class Work:
    root: Path
    model: Path  # a sharded tiny Llama (reference.checkpoints.tiny_llama)
    stats: Path  # its statistics file, for wanda
    calib_model: Path  # a single-file tiny Llama with a tokenizer, for calibrate
    calib_text: Path
    cleanup: list[Callable[[], None]] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return self.root / "out"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("safety") / "model")


@pytest.fixture(scope="module")
def calib_model(tmp_path_factory) -> tuple[Path, Path]:
    """A 2-layer Llama in one model.safetensors, with a word-level tokenizer and a text."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    path = tmp_path_factory.mktemp("calib") / "model"
    config = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    words = [f"w{i}" for i in range(100)]
    vocab = {w: i for i, w in enumerate(["[UNK]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    fast.save_pretrained(path)
    text = path.parent / "calib.txt"
    rng = np.random.default_rng(0)
    text.write_text(" ".join(rng.choice(words, 2000)), encoding="utf-8")
    return path, text


def write_stats(model: Path, path: Path) -> None:
    """F32 in_sq / out_sq of every default-pruned weight of ``model``."""
    reader = CheckpointReader(model)
    stats = {}
    for name in reader.names():
        if LINEAR.fullmatch(name):
            rows, cols = reader.shape(name)
            prefix = name.removesuffix(".weight")
            stats[prefix + ".in_sq"] = np.ones(cols, np.float32)
            stats[prefix + ".out_sq"] = np.ones(rows, np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(stats, path)


@pytest.fixture
def work(tiny, calib_model, tmp_path, monkeypatch) -> Work:
    model = tmp_path / "model"
    shutil.copytree(tiny, model)
    stats = tmp_path / "stats" / "stats.safetensors"
    write_stats(model, stats)
    calib = tmp_path / "calib-model"
    shutil.copytree(calib_model[0], calib)
    monkeypatch.chdir(tmp_path)
    w = Work(tmp_path, model, stats, calib, calib_model[1])
    yield w
    for undo in reversed(w.cleanup):
        undo()


def files_outside(root: Path, out: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` outside ``out``; a link counts as its
    target's name and is never followed."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here == out or out in here.parents:
            dirnames[:] = []
            continue
        for name in [*filenames, *dirnames]:
            path = here / name
            if path == out:
                continue
            if path.is_symlink():
                found[str(path.relative_to(root))] = "link to " + os.readlink(path)
            elif path.is_file():
                found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
        dirnames[:] = [d for d in dirnames if not (here / d).is_symlink()]
    return found


def tree(path: Path) -> dict[str, str]:
    if not path.is_dir():
        return {}
    return files_outside(path, path / "\0none")


def run(capsys, attack: Attack, cwd: Path) -> subprocess.CompletedProcess:
    args = [str(a) for a in attack.argv]
    if attack.isolated or attack.script:
        head = ["-c", attack.script] if attack.script else ["-m", "symprune.cli"]
        cmd = ["timeout", "-s", "KILL", str(TIMEOUT), sys.executable, *head, *args]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)

    def too_long(*_):
        raise TimeoutError(f"symprune {' '.join(args)} ran past {TIMEOUT} s")

    previous = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(TIMEOUT)
    try:
        code = main(args)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    streams = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, streams.out, streams.err)


def magnitude(model: Path, out: Path | str, *extra: str) -> list:
    return ["prune", model, out, "--method", "magnitude", *extra]


def finished(w: Work, out: Path, sparsity: float = 0.25) -> None:
    prune_checkpoint(w.model, out, method="magnitude", sparsity=sparsity)


def interrupted(w: Work, out: Path) -> None:
    """A magnitude 0.5 run stopped in the second shard: the first is finished."""
    seen = []

    def stop(report):
        seen.append(report)
        if len(seen) == 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prune_checkpoint(w.model, out, method="magnitude", progress=stop)
    assert (out / SHARDS[0]).is_file() and not (out / "sparsity.json").exists()


def hard_linked_copy(src: Path, dst: Path) -> None:
    """``cp -al src dst``."""
    dst.mkdir()
    for p in src.iterdir():
        os.link(p, dst / p.name)


def whole_and_loads(out: Path, model: Path, sparsity: float = 0.5) -> None:
    assert read_manifest(out)["sparsity"] == sparsity
    reader = CheckpointReader(out)
    assert sorted(reader.names()) == sorted(CheckpointReader(model).names())
    assert not [p for p in out.iterdir() if p.is_symlink()]


def single_file_model(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> Path:
    """A model.safetensors of tensors filled with ones, contiguous, in the given order."""
    header, data = {}, b""
    for name, (dtype, shape) in tensors.items():
        one = {"F32": struct.pack("<f", 1.0), "BF16": b"\x80\x3f"}[dtype]
        size = int(np.prod(shape, dtype=object))
        header[name] = entry(dtype, shape, len(data), len(data) + size * len(one))
        data += one * size
    path.mkdir()
    (path / "model.safetensors").write_bytes(safetensors_bytes(header, data))
    (path / "config.json").write_text("{}")
    return path


def crafted(w: Work, empty: list[int]) -> Path:
    """A model whose linear down_proj has no elements, with the given shape."""
    return single_file_model(
        w.root / "crafted",
        {
            "model.layers.0.mlp.up_proj.weight": ("F32", [4, 8]),
            "model.layers.0.mlp.down_proj.weight": ("F32", empty),
        },
    )


# --- the attacks -------------------------------------------------------------------------


def hard_linked_output(w: Work, overwrite: bool, marker: bool) -> Attack:
    hard_linked_copy(w.model, w.out)
    if marker:
        (w.out / ".symprune-output").write_text("")  # a forged marker changes nothing
    flags = ["--overwrite"] if overwrite else []
    return Attack(magnitude(w.model, w.out, *flags), w.out, ("out/", "a hard link", "choose"))


def bind_mounted_output(w: Work) -> Attack:
    w.out.mkdir()
    if os.geteuid() != 0:
        pytest.skip("bind mounts need root")
    done = subprocess.run(["mount", "--bind", w.model, w.out], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"mount --bind does not work here: {done.stderr.decode().strip()}")
    w.cleanup.append(lambda: subprocess.run(["umount", w.out], check=True))
    return Attack(
        magnitude(w.model, w.out, "--overwrite"),
        fragments=("is the input directory", "by device and inode", "choose an output directory"),
    )


def planted_config_link(w: Work) -> Attack:
    interrupted(w, w.out)
    victim = w.root / "victim.json"
    victim.write_text('{"mine": true}')
    (w.out / "config.json").symlink_to(victim)

    def check():
        assert not (w.out / "config.json").is_symlink()
        assert (w.out / "config.json").read_bytes() == (w.model / "config.json").read_bytes()
        whole_and_loads(w.out, w.model)

    return Attack(magnitude(w.model, w.out), w.out, rc=0, after=check)


def planted_temp_links(w: Work) -> Attack:
    interrupted(w, w.out)
    names = [
        *(f".{s}.tmp" for s in SHARDS),
        ".config.json.tmp",
        ".sparsity.json.tmp",
        ".model.safetensors.index.json.tmp",
        "..symprune-journal.json.tmp",
        ".symprune-journal.json.tmp",
    ]
    for name in names:
        (w.out / name).symlink_to(w.root / f"created-{name}")

    def check():
        assert not list(w.root.glob("created-*"))
        assert not [p for p in w.out.iterdir() if p.name.endswith(".tmp")]
        whole_and_loads(w.out, w.model)

    return Attack(magnitude(w.model, w.out), w.out, rc=0, after=check)


def shard_linked_to_the_input(w: Work) -> Attack:
    interrupted(w, w.out)
    (w.out / SHARDS[0]).unlink()
    (w.out / SHARDS[0]).symlink_to(w.model / SHARDS[0])  # looks finished, is the input

    def check():
        assert not (w.out / SHARDS[0]).is_symlink()
        whole_and_loads(w.out, w.model)

    return Attack(magnitude(w.model, w.out), w.out, rc=0, after=check)


def linked_marker(w: Work) -> Attack:
    w.out.mkdir()
    (w.root / "victim.txt").write_text("mine")
    (w.out / ".symprune-output").symlink_to(w.root / "victim.txt")
    return Attack(
        magnitude(w.model, w.out, "--overwrite"),
        w.out,
        (".symprune-output", "is a symbolic link", "remove it"),
    )


def linked_journal(w: Work) -> Attack:
    interrupted(w, w.out)
    journal = w.out / ".symprune-journal.json"
    (w.root / "victim.json").write_bytes(journal.read_bytes())
    journal.unlink()
    journal.symlink_to(w.root / "victim.json")
    return Attack(
        magnitude(w.model, w.out),
        w.out,
        ("out", "journal this version cannot read", "--overwrite"),
    )


def linked_journal_overwrite(w: Work) -> Attack:
    linked_journal(w)
    return Attack(
        magnitude(w.model, w.out, "--overwrite"),
        w.out,
        rc=0,
        after=lambda: whole_and_loads(w.out, w.model),
    )


def output_is_the_input(w: Work) -> Attack:
    return Attack(
        magnitude(w.model, w.model, "--overwrite"),
        fragments=("model", "is the input directory", "choose an output directory outside it"),
    )


def output_inside_the_input(w: Work) -> Attack:
    return Attack(
        magnitude(w.model, w.model / "pruned"),
        fragments=("model/pruned", "or inside it", "choose an output directory outside it"),
    )


def output_links_to_the_input(w: Work) -> Attack:
    (w.root / "link").symlink_to(w.model)
    return Attack(
        magnitude(w.model, w.root / "link", "--overwrite"),
        fragments=("is the input directory", "choose an output directory outside it"),
    )


def output_is_an_ancestor(w: Work) -> Attack:
    return Attack(
        magnitude(w.model, w.root, "--overwrite"),
        fragments=("contains the input directory", "does not hold the input"),
    )


def output_is_an_empty_string(w: Work) -> Attack:
    # The current directory (w.root) holds the input.
    return Attack(
        magnitude(w.model, "", "--overwrite"),
        fragments=("output: is an empty path", "name the output directory"),
    )


def output_is_the_current_directory(w: Work) -> Attack:
    return Attack(
        magnitude(w.model, ".", "--overwrite"),
        fragments=("contains the input directory", "does not hold the input"),
    )


def output_holds_the_stats(w: Work) -> Attack:
    return Attack(
        ["prune", w.model, w.stats.parent, "--method", "wanda", "--stats", w.stats, "--overwrite"],
        fragments=("stats", "contains the statistics file", "does not hold the input"),
    )


def stats_hard_linked_into_output(w: Work) -> Attack:
    finished(w, w.out)
    os.link(w.stats, w.out / "stats.safetensors")
    argv = ["prune", w.model, w.out, "--method", "wanda", "--stats", w.stats, "--overwrite"]
    return Attack(argv, w.out, ("stats.safetensors", "is the statistics file", "a hard link"))


def output_not_written_by_symprune(w: Work) -> Attack:
    w.out.mkdir()
    (w.out / "notes.txt").write_text("mine")
    (w.out / "keep.safetensors").write_bytes(b"mine")
    return Attack(
        magnitude(w.model, w.out, "--overwrite"),
        w.out,
        ("out", "is not a symprune output", "keep.safetensors", "choose a new or empty"),
    )


def finished_output_with_a_user_file(w: Work) -> Attack:
    finished(w, w.out)
    (w.out / "eval-notes.txt").write_text("mine")
    return Attack(
        magnitude(w.model, w.out, "--overwrite"),
        w.out,
        ("out", "holds eval-notes.txt, which symprune did not write", "move them"),
    )


def output_is_a_file(w: Work) -> Attack:
    w.out.write_text("mine")
    return Attack(magnitude(w.model, w.out), w.out, ("out", "is not a directory", "pass a new"))


def staging_planted_as_a_link(w: Work) -> Attack:
    finished(w, w.out)
    elsewhere = w.root / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("mine")
    (w.root / STAGING).symlink_to(elsewhere)

    def check():
        whole_and_loads(w.out, w.model)
        assert not (w.root / STAGING).exists()

    return Attack(
        magnitude(w.model, w.out, "--overwrite"),
        w.out,
        rc=0,
        may_change=(w.root / STAGING,),  # the planted link is removed, never followed
        after=check,
    )


def staging_is_a_foreign_directory(w: Work) -> Attack:
    finished(w, w.out)
    (w.root / STAGING).mkdir()
    (w.root / STAGING / "precious.txt").write_text("mine")
    return Attack(
        magnitude(w.model, w.out, "--overwrite"),
        w.out,
        (STAGING, "is not a symprune output", "precious.txt"),
    )


HOLD = """
import sys, time
from symprune.checkpoint import CheckpointWriter
writer = CheckpointWriter(sys.argv[1], sys.argv[2], overwrite=True)
print("ready", flush=True)
time.sleep(600)
"""


def concurrent_run(w: Work, overwrite: bool) -> Attack:
    if overwrite:
        finished(w, w.out)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(w.model), str(w.out)], stdout=subprocess.PIPE, text=True
    )
    w.cleanup.append(holder.kill)
    assert holder.stdout.readline() == "ready\n"
    flags = ["--overwrite"] if overwrite else []
    return Attack(
        magnitude(w.model, w.out, *flags),
        w.out,
        ("out", "another symprune run is writing this output directory", "wait for it"),
    )


def failing_overwrite(w: Work) -> Attack:
    """An overwrite that fails in its last shard, after writing the first two."""
    finished(w, w.out)
    bad = w.root / "bad"
    shutil.copytree(w.model, bad)
    tensors = load_file(bad / SHARDS[2])
    tensors["model.layers.2.mlp.up_proj.weight"][3, 5] = np.nan
    save_file(tensors, bad / SHARDS[2], metadata={"format": "pt"})

    def check():
        assert read_manifest(w.out)["sparsity"] == 0.25  # the old output, whole
        assert (w.root / STAGING / SHARDS[1]).is_file()  # resumable work, beside it

    return Attack(
        magnitude(bad, w.out, "--overwrite"),
        w.out,
        ("model.layers.2.mlp.up_proj.weight", "non-finite value NaN", "fix the checkpoint"),
        after=check,
    )


KILL = """
import os, signal, sys
from symprune.checkpoint import prune_checkpoint
seen = []
def kill(report):
    seen.append(report)
    if len(seen) == 12:
        os.kill(os.getpid(), signal.SIGKILL)
prune_checkpoint(sys.argv[1], sys.argv[2], method="magnitude", overwrite=True, progress=kill)
"""


def killed_overwrite(w: Work, capsys) -> Attack:
    finished(w, w.out)

    def check():
        assert read_manifest(w.out)["sparsity"] == 0.25  # the old output, whole
        rerun = run(capsys, Attack(magnitude(w.model, w.out, "--overwrite")), w.root)
        assert rerun.returncode == 0, rerun.stderr
        whole_and_loads(w.out, w.model)
        fresh = w.root / "fresh"
        prune_checkpoint(w.model, fresh, method="magnitude")
        assert tree(w.out) == tree(fresh)
        assert not (w.root / STAGING).exists()

    return Attack([w.model, w.out], w.out, rc=-signal.SIGKILL, script=KILL, after=check)


def index_names_own_file(w: Work, name: str) -> Attack:
    index_path = w.model / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    (w.model / SHARDS[2]).rename(w.model / name)
    index["weight_map"] = {k: name if v == SHARDS[2] else v for k, v in index["weight_map"].items()}
    index_path.write_text(json.dumps(index))
    return Attack(
        magnitude(w.model, w.out),
        fragments=("model.safetensors.index.json", name, "not a visible .safetensors file name"),
    )


def calibrate(w: Work, out: Path | str) -> list:
    return [
        "calibrate",
        w.calib_model,
        "--out",
        out,
        "--calib",
        w.calib_text,
        "--nsamples",
        "2",
        "--seqlen",
        "16",
        "--device",
        "cpu",
    ]


def calibrate_into_the_weights(w: Work) -> Attack:
    target = w.calib_model / "model.safetensors"
    return Attack(
        calibrate(w, target),
        fragments=("model.safetensors", "is the input file", "choose another file"),
    )


def calibrate_into_the_model(w: Work) -> Attack:
    target = w.calib_model / "stats.safetensors"
    return Attack(
        calibrate(w, target),
        fragments=("stats.safetensors", "is inside the input directory", "outside it"),
    )


def calibrate_onto_the_model_directory(w: Work) -> Attack:
    return Attack(
        calibrate(w, w.calib_model), fragments=("is a directory", "pass the name of the file")
    )


def calibrate_into_a_hard_link(w: Work) -> Attack:
    target = w.root / "weights.safetensors"
    os.link(w.calib_model / "model.safetensors", target)
    return Attack(calibrate(w, target), fragments=("weights.safetensors", "is the input file"))


def calibrate_through_a_link(w: Work) -> Attack:
    target = w.root / "stats2.safetensors"
    (w.root / "victim.safetensors").write_bytes(b"mine")
    target.symlink_to(w.root / "victim.safetensors")

    def check():
        assert not target.is_symlink()
        assert load_file(target)  # the statistics, in a file of their own

    return Attack(calibrate(w, target), target, rc=0, after=check)


def crafted_header(w: Work, command: list[str], empty: list[int], rc: int, *fragments) -> Attack:
    model = crafted(w, empty)
    argv = [command[0], model, *([w.out] if command[0] == "prune" else []), *command[1:]]
    return Attack(argv, w.out, fragments, rc=rc, isolated=True)


def huge_empty_dimension(w: Work, method: str, shape: list[int]) -> Attack:
    return crafted_header(
        w,
        ["prune", "--method", method],
        shape,
        1,
        "model.safetensors",
        f"tensor model.layers.0.mlp.down_proj.weight: shape {shape}",
        "re-download or re-export it",
    )


def empty_tensor_passes_through(w: Work, empty: list[int], *method: str) -> Attack:
    attack = crafted_header(w, ["prune", *method], empty, 0)
    down = "model.layers.0.mlp.down_proj.weight"

    def check():
        pruned = CheckpointReader(w.out)
        assert pruned.shape(down) == tuple(empty)
        assert list(read_manifest(w.out)["tensors"]) == ["model.layers.0.mlp.up_proj.weight"]

    attack.after = check
    return attack


def stats_for_crafted(w: Work) -> Path:
    path = w.root / "crafted-stats.safetensors"
    prefix = "model.layers.0.mlp.up_proj"
    ones = np.ones(8, np.float32)
    save_file({prefix + ".in_sq": ones, prefix + ".out_sq": ones[:4]}, path)
    return path


TRUNCATE = """
import sys
from pathlib import Path
from symprune.checkpoint import prune_checkpoint
from symprune.errors import CheckpointError
shard = Path(sys.argv[1]) / sys.argv[3]
def shrink(report):
    if shard.stat().st_size > 200:
        with open(shard, "r+b") as f:
            f.truncate(200)
try:
    prune_checkpoint(sys.argv[1], sys.argv[2], method="magnitude", progress=shrink)
except CheckpointError as e:
    sys.exit(f"symprune: error: {e}")
"""

TRUNCATE_READER = """
import sys
from pathlib import Path
from symprune.checkpoint import CheckpointReader
from symprune.errors import CheckpointError
reader = CheckpointReader(sys.argv[1])
with open(Path(sys.argv[1]) / sys.argv[3], "r+b") as f:
    f.truncate(200)
try:
    reader.torch("model.layers.2.mlp.up_proj.weight")
except CheckpointError as e:
    sys.exit(f"symprune: error: {e}")
"""


def shard_shrinks_under_the_map(w: Work, script: str) -> Attack:
    return Attack(
        [w.model, w.out, SHARDS[2]],
        w.out,
        (SHARDS[2], "shrank from", "restore it and run again"),
        script=script,
        may_change=(w.model / SHARDS[2],),
        out_may_change=True,
    )


def finalize_with_a_journal_naming_the_input(w: Work) -> Attack:
    """A part's journal inside the input: finalizing there would write into it."""
    out = w.model / "parts"
    out.mkdir()
    (out / ".symprune-output").write_text("")
    journal = {"input": "x", "run": "k", "input_dir": str(w.model), "part": {"rank": 0, "world": 2}}
    (out / ".symprune-journal.0-of-2.json").write_text(
        json.dumps({**journal, "manifest": {}, "done": {}})
    )
    return Attack(["finalize", out], fragments=("model/parts", "is the input directory"))


CASES: dict[str, Callable[..., Attack]] = {
    "hard-linked copy (cp -al)": lambda w: hard_linked_output(w, False, False),
    "hard-linked copy, --overwrite": lambda w: hard_linked_output(w, True, False),
    "hard-linked copy with a forged marker, --overwrite": lambda w: hard_linked_output(
        w, True, True
    ),
    "bind mount of the input, --overwrite": bind_mounted_output,
    "OUT_DIR is the input, --overwrite": output_is_the_input,
    "OUT_DIR inside the input": output_inside_the_input,
    "OUT_DIR a link to the input, --overwrite": output_links_to_the_input,
    "OUT_DIR the input's parent, --overwrite": output_is_an_ancestor,
    "OUT_DIR an empty string, --overwrite": output_is_an_empty_string,
    "OUT_DIR '.' holding the input, --overwrite": output_is_the_current_directory,
    "OUT_DIR holds the --stats file, --overwrite": output_holds_the_stats,
    "--stats hard-linked into OUT_DIR, --overwrite": stats_hard_linked_into_output,
    "--overwrite into a directory symprune did not write": output_not_written_by_symprune,
    "--overwrite of an output holding a user's file": finished_output_with_a_user_file,
    "OUT_DIR is a file": output_is_a_file,
    "config.json planted as a link to a victim": planted_config_link,
    "dangling links at every temporary name": planted_temp_links,
    "a finished-looking shard linked to the input's": shard_linked_to_the_input,
    "the marker a link to a victim": linked_marker,
    "the journal a link": linked_journal,
    "the journal a link, --overwrite": linked_journal_overwrite,
    "the staging directory planted as a link": staging_planted_as_a_link,
    "the staging directory someone else's": staging_is_a_foreign_directory,
    "a concurrent run": lambda w: concurrent_run(w, False),
    "a concurrent --overwrite": lambda w: concurrent_run(w, True),
    "an --overwrite failing midway": failing_overwrite,
    "an --overwrite killed midway, then rerun": killed_overwrite,
    "index names a shard sparsity.json": lambda w: index_names_own_file(w, "sparsity.json"),
    "index names a shard .symprune-journal.json": lambda w: index_names_own_file(
        w, ".symprune-journal.json"
    ),
    "index names a shard .symprune-output": lambda w: index_names_own_file(w, ".symprune-output"),
    "calibrate --out the model's weights": calibrate_into_the_weights,
    "calibrate --out inside the model": calibrate_into_the_model,
    "calibrate --out the model directory": calibrate_onto_the_model_directory,
    "calibrate --out a hard link to the weights": calibrate_into_a_hard_link,
    "calibrate --out a link to a victim": calibrate_through_a_link,
    "[2^64-1, 0] tensor, magnitude (hung)": lambda w: huge_empty_dimension(
        w, "magnitude", [U64_MAX, 0]
    ),
    "[0, 2^64-1] tensor, magnitude": lambda w: huge_empty_dimension(w, "magnitude", [0, U64_MAX]),
    "[0, 2^64-1] tensor, symmetric": lambda w: huge_empty_dimension(w, "symmetric", [0, U64_MAX]),
    "[0, 2^64-1] tensor, inspect 2:4": lambda w: crafted_header(
        w,
        ["inspect", "--pattern", "2:4"],
        [0, U64_MAX],
        1,
        "model.safetensors",
        "has dimensions beyond any file's size",
    ),
    "[0, 2^43] tensor, symmetric (aborted)": lambda w: empty_tensor_passes_through(
        w, [0, 2**43], "--method", "symmetric"
    ),
    "[0, 2^43] tensor, wanda --stats": lambda w: empty_tensor_passes_through(
        w, [0, 2**43], "--method", "wanda", "--stats", str(stats_for_crafted(w))
    ),
    "[0, 8] tensor, magnitude": lambda w: empty_tensor_passes_through(
        w, [0, 8], "--method", "magnitude"
    ),
    "[0, 2^62] tensor, inspect 2:4 (panicked)": lambda w: crafted_header(
        w, ["inspect", "--pattern", "2:4"], [0, 2**62], 1, "has dimensions beyond any file's size"
    ),
    # The dense up_proj beside the empty tensor is not 2:4: the check fails, in one line.
    "[8, 0] tensor, inspect 2:4": lambda w: crafted_header(
        w, ["inspect", "--pattern", "2:4"], [8, 0], 1, "2:4 does not hold"
    ),
    "a shard shrinks while pruned (SIGBUS)": lambda w: shard_shrinks_under_the_map(w, TRUNCATE),
    "a shard shrinks under a reader (SIGBUS)": lambda w: shard_shrinks_under_the_map(
        w, TRUNCATE_READER
    ),
    "finalize with a part's journal inside the input": finalize_with_a_journal_naming_the_input,
}


@pytest.mark.parametrize("case", CASES)
def test_nothing_outside_the_output_is_harmed(capsys, work, case):
    make = CASES[case]
    attack = make(work, capsys) if make is killed_overwrite else make(work)
    capsys.readouterr()
    out = attack.out or work.root / "(nothing may change)"
    before, out_before = files_outside(work.root, out), tree(out)
    done = run(capsys, attack, work.root)
    assert done.returncode == attack.rc, (done.returncode, done.stdout, done.stderr)
    for text in (done.stdout, done.stderr):
        assert "Traceback" not in text and "panicked" not in text, text
    if attack.rc != 0:
        if not attack.out_may_change:
            assert tree(out) == out_before
        if "sparsity.json" not in out_before:
            assert not (out / "sparsity.json").exists()
    if attack.rc == 1:
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("symprune: error: "), done.stderr
        for fragment in attack.fragments:
            assert fragment in lines[0], (fragment, lines[0])
    after = files_outside(work.root, out)
    may_change = {str(p.relative_to(work.root)) for p in attack.may_change}
    changed = {k for k in before if before[k] != after.get(k)} - may_change
    assert not changed, changed
    new = {k for k in after if k not in before and not k.startswith(STAGING)}
    assert not new - may_change, new
    if attack.after is not None:
        attack.after()


def test_the_writer_refuses_another_dtype(tiny, tmp_path):
    name = "model.layers.2.mlp.up_proj.weight"  # F32
    with CheckpointWriter(tiny, tmp_path / "out") as writer:
        with pytest.raises(
            InvalidInputError, match="a torch.int32 tensor cannot be written as F32"
        ):
            writer.write(name, torch.zeros(64, 32, dtype=torch.int32))
        with pytest.raises(InvalidInputError, match="a torch.int8 tensor cannot be written"):
            writer.write("model.layers.0.mlp.up_proj.weight", torch.zeros(64, 32, dtype=torch.int8))
        writer.write(name, torch.zeros(64, 32, dtype=torch.float64))  # floats are cast
        writer.write("model.layers.2.mlp.qweight", torch.zeros(8, 16, dtype=torch.int8))
    assert CheckpointReader(tmp_path / "out").torch(name).abs().sum() == 0


def test_empty_tensors_read_and_pass_through(tmp_path):
    model = single_file_model(
        tmp_path / "model",
        {"a": ("F32", [0, 8]), "b": ("BF16", [3, 0]), "c": ("F32", [2, 2])},
    )
    reader = CheckpointReader(model)
    assert reader.torch("a").shape == (0, 8) and reader.torch("a").dtype == torch.float32
    assert reader.torch("b").shape == (3, 0) and reader.torch("b").dtype == torch.bfloat16
    assert reader.numpy("a").shape == (0, 8)
    with CheckpointWriter(model, tmp_path / "out") as writer:
        writer.write("a", torch.zeros(0, 8))
    assert CheckpointReader(tmp_path / "out").numpy("a").shape == (0, 8)


def test_the_streamed_pipeline_restarts_an_interrupted_run(work, capsys, monkeypatch):
    """The layer-by-layer pipeline writes without a run key: an interrupted run
    (no shard finished yet) is started over by the same command."""
    argv = [
        "prune",
        work.calib_model,
        work.out,
        "--method",
        "wanda",
        "--calib",
        work.calib_text,
        "--nsamples",
        "2",
        "--seqlen",
        "16",
        "--device",
        "cpu",
    ]
    calls = []
    real_write = CheckpointWriter.write

    def write_then_stop(self, name, tensor):
        calls.append(name)
        if len(calls) == 9:  # in the second layer
            raise KeyboardInterrupt
        real_write(self, name, tensor)

    monkeypatch.setattr(CheckpointWriter, "write", write_then_stop)
    assert main([str(a) for a in argv]) == 130
    assert not (work.out / "sparsity.json").exists()
    monkeypatch.setattr(CheckpointWriter, "write", real_write)
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    assert read_manifest(work.out)["method"] == "wanda"
    assert len(read_manifest(work.out)["tensors"]) == 14


def test_a_journal_without_run_key_says_why_it_cannot_resume(tiny, tmp_path):
    """A finished shard recorded without a run key (as the pipeline writes) is never
    resumed; the message says so instead of suggesting a rerun."""
    out = tmp_path / "out"
    prune_checkpoint(tiny, out, method="magnitude")
    journal = {"input": "x", "run": "", "done": {SHARDS[0]: {}}}
    (out / "sparsity.json").unlink()
    (out / ".symprune-journal.json").write_text(json.dumps(journal))
    with pytest.raises(CheckpointError, match="written without a run key, which cannot be resumed"):
        CheckpointWriter(tiny, out)
