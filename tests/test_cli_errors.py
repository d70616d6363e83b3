"""Every bad argument or file is one line on stderr naming it, never a traceback;
reports say what really happened; the main job and built-in names work everywhere."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from reference.checkpoints import tiny_lm
from symprune import data
from symprune.cli import main
from symprune.results import Report

ERROR = "symprune: error: "


def run(capsys, *args: str | Path) -> subprocess.CompletedProcess:
    """The CLI in this process: an exception escaping ``main`` fails the test."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def one_line(done: subprocess.CompletedProcess, *fragments: str, code: int = 1) -> str:
    assert done.returncode == code, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def model(tmp_path_factory, smollm2_dir) -> Path:
    return tiny_lm(tmp_path_factory.mktemp("tiny") / "model", smollm2_dir)


@pytest.fixture(scope="module")
def files(tmp_path_factory, model) -> dict[str, Path]:
    """Calibration files, each wrong in its own way, and models that are not decoder LMs."""
    from transformers import BertConfig, BertForMaskedLM, T5Config, T5ForConditionalGeneration

    root = tmp_path_factory.mktemp("bad")
    out = {
        "binary": root / "binary.txt",
        "latin1": root / "latin1.txt",
        "missing": root / "missing.txt",
        "empty": root / "empty.txt",
        "bad json": root / "bad.jsonl",
        "not an object": root / "list.jsonl",
        "text not a string": root / "number.jsonl",
    }
    out["binary"].write_bytes(bytes(range(256)) * 4)
    out["latin1"].write_bytes("Größe und Café\n".encode("latin-1"))
    out["empty"].write_text("  \n")
    out["bad json"].write_text('{"text": "fine"}\n{"text": oops}\n')
    out["not an object"].write_text('["a list"]\n')
    out["text not a string"].write_text('{"text": 42}\n')

    no_tokenizer = root / "no-tokenizer"
    no_tokenizer.mkdir()
    for f in model.iterdir():
        if not f.name.startswith(("tokenizer", "special_tokens")):
            (no_tokenizer / f.name).write_bytes(f.read_bytes())
    out["no tokenizer"] = no_tokenizer

    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=64)
    bert = BertForMaskedLM(BertConfig(intermediate_size=64, **small))
    bert.save_pretrained(root / "bert")
    t5 = T5ForConditionalGeneration(
        T5Config(d_model=32, d_ff=64, num_layers=2, num_heads=4, d_kv=8, vocab_size=64)
    )
    t5.save_pretrained(root / "t5")
    out["bert"], out["t5"] = root / "bert", root / "t5"

    mismatch = root / "mismatch"
    mismatch.mkdir()
    for f in model.iterdir():
        (mismatch / f.name).write_bytes(f.read_bytes())
    config = json.loads((model / "config.json").read_text())
    config["intermediate_size"] = 48
    (mismatch / "config.json").write_text(json.dumps(config))
    out["mismatch"] = mismatch

    nan = root / "nan"
    nan.mkdir()
    for f in model.iterdir():
        (nan / f.name).write_bytes(f.read_bytes())
    from safetensors.torch import load_file
    from safetensors.torch import save_file as save_torch

    tensors = load_file(nan / "model.safetensors")
    tensors["model.layers.0.self_attn.q_proj.weight"][3, 5] = float("nan")
    save_torch(tensors, nan / "model.safetensors", metadata={"format": "pt"})
    out["nan"] = nan
    return out


CALIBRATED = ["--nsamples", "2", "--seqlen", "16", "--no-eval", "--no-progress"]

# (arguments after `prune MODEL OUT`, or a whole command line; fragments the line must hold)
CASES = {
    "nsamples negative": (["--nsamples", "-3"], ["nsamples", "-3", ">= 1"]),
    "nsamples zero": (["--nsamples", "0"], ["nsamples", "0", ">= 1"]),
    "seqlen negative": (["--seqlen", "-5"], ["seqlen", "-5"]),
    "seqlen zero": (["--seqlen", "0"], ["seqlen", "0"]),
    "batch size zero": (["--batch-size", "0"], ["batch_size", "0"]),
    "batch size negative": (["--batch-size", "-1"], ["batch_size", "-1"]),
    "blocksize zero": (["--method", "sparsegpt", "--param", "blocksize=0"], ["blocksize", "0"]),
    "percdamp negative": (["--method", "sparsegpt", "--param", "percdamp=-1"], ["percdamp"]),
    "unknown parameter": (["--param", "alpha=1"], ["wanda", "alpha"]),
    "rank negative": (
        ["--method", "magnitude", "--world-size", "2", "--rank", "-1"],
        ["rank", "-1"],
    ),
    "rank too large": (
        ["--method", "magnitude", "--world-size", "2", "--rank", "2"],
        ["rank 2 of world size 2"],
    ),
    "world size zero": (
        ["--method", "magnitude", "--world-size", "0", "--rank", "0"],
        ["world_size", "0"],
    ),
    "pattern number too large": (
        ["--pattern", "99999999999999999999:99999999999999999999999"],
        ["pattern"],
    ),
    "pattern wider than the rows": (["--pattern", "1000:2000"], ["2000"]),
    "pattern not N<M": (["--pattern", "4:2"], ["pattern", "4:2"]),
    "device unknown": (["--device", "bogus"], ["device", "bogus"]),
    "device not supported": (["--device", "mps"], ["device", "mps"]),
    "targets not a regex": (["--targets", "q_proj("], ["targets", "q_proj("]),
    "ignore not a regex": (["--ignore", "[abc"], ["ignore", "[abc"]),
    "eval windows zero": (["--eval", "--eval-windows", "0"], ["eval_windows", "0"]),
    "eval seqlen one": (["--eval", "--eval-seqlen", "1"], ["eval_seqlen", "1"]),
    "sparsity out of range": (["--sparsity", "1.5"], ["sparsity", "1.5"]),
    "nsamples not a number": (["--nsamples", "many"], ["--nsamples", "many"]),
}
if not torch.cuda.is_available():
    CASES["device cuda without a GPU"] = (["--device", "cuda"], ["device", "cuda", "no GPU"])


@pytest.mark.parametrize("case", CASES)
def test_bad_arguments_give_one_line(capsys, tmp_path, model, case):
    args, fragments = CASES[case]
    out = tmp_path / "out"
    done = run(capsys, "prune", model, out, *CALIBRATED, *args)
    # argparse's own usage errors exit 2, ours 1; both are one line.
    one_line(done, *fragments, code=2 if case == "nsamples not a number" else 1)
    assert not (out / "sparsity.json").exists()


FILE_CASES = {
    "binary": ["not UTF-8"],
    "latin1": ["latin1.txt:1", "not UTF-8", "iconv"],
    "missing": ["missing.txt", "no such file"],
    "empty": ["empty.txt", "empty"],
    "bad json": ["bad.jsonl:2", "not valid JSON"],
    "not an object": ["list.jsonl:1", '"text" string'],
    "text not a string": ["number.jsonl:1", '"text" string'],
}


@pytest.mark.parametrize("case", FILE_CASES)
def test_bad_calibration_files_give_one_line(capsys, tmp_path, model, files, case):
    out = tmp_path / "out"
    done = run(capsys, "prune", model, out, *CALIBRATED, "--calib", files[case])
    one_line(done, *FILE_CASES[case])
    assert not (out / "sparsity.json").exists()


MODEL_CASES = {
    "no tokenizer": ["no tokenizer in", "no-tokenizer"],
    "bert": ["not a decoder LM", "BertForMaskedLM"],
    "t5": ["not a decoder LM"],
    "mismatch": ["does not match the weights", "mlp"],
}


@pytest.mark.parametrize("case", MODEL_CASES)
def test_unusable_models_give_one_line(capsys, tmp_path, files, case):
    out = tmp_path / "out"
    done = run(capsys, "prune", files[case], out, *CALIBRATED)
    one_line(done, *MODEL_CASES[case])
    assert not (out / "sparsity.json").exists()


def test_eval_and_calibrate_refuse_bad_numbers_too(capsys, tmp_path, model):
    one_line(run(capsys, "eval", model, "--seqlen", "1"), "seqlen", "1")
    one_line(run(capsys, "eval", model, "--max-windows", "0"), "max_windows", "0")
    one_line(run(capsys, "eval", model, "--device", "bogus"), "device", "bogus")
    one_line(run(capsys, "eval", model, "--max-windows", "x"), "--max-windows", code=2)
    out = tmp_path / "stats.safetensors"
    one_line(run(capsys, "calibrate", model, "--out", out, "--nsamples", "0"), "nsamples")
    assert not out.exists()
    one_line(run(capsys, "eval", "no-such-model"), "no-such-model", "not a built-in model")


@pytest.mark.parametrize("what", ["weight", "Hessian"])
def test_sparsegpt_refuses_non_finite_inputs_by_name(capsys, tmp_path, files, model, what):
    if what == "weight":
        folder, calib = files["nan"], []
    else:  # the calibration text runs into a NaN weight of an earlier layer: NaN activations
        folder, calib = files["nan"], ["--targets", "layers.1"]
    out = tmp_path / "out"
    done = run(capsys, "prune", folder, out, *CALIBRATED, "--method", "sparsegpt", *calib)
    line = one_line(done, "NaN")
    assert "model.layers." in line


def test_rust_engine_reports_the_bytes_it_wrote(capsys, tmp_path, model):
    out = tmp_path / "out"
    done = run(capsys, "prune", model, out, "--method", "magnitude", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    shards = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    assert report["bytes_written"] >= shards > 0
    done = run(capsys, "prune", model, tmp_path / "again", "--method", "magnitude")
    assert "bytes written  0 " not in done.stdout and f"{report['bytes_written']:,}" in done.stdout


def test_inspect_fails_when_the_pattern_does_not_hold(capsys, tmp_path, model):
    unstructured, nm = tmp_path / "unstructured", tmp_path / "nm"
    assert run(capsys, "prune", model, unstructured, "--method", "magnitude").returncode == 0
    two_four = run(capsys, "prune", model, nm, "--method", "magnitude", "--pattern", "2:4")
    assert two_four.returncode == 0
    failed = run(capsys, "inspect", unstructured, "--pattern", "2:4")
    assert failed.returncode == 1 and "does NOT hold" in failed.stdout
    assert failed.stderr.startswith("symprune: error: 2:4 does not hold")
    held = run(capsys, "inspect", nm, "--pattern", "2:4")
    assert held.returncode == 0 and "2:4 holds" in held.stdout


def test_inspect_lists_layers_in_numeric_order(capsys, tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    names = [f"model.layers.{i}.mlp.up_proj.weight" for i in (10, 2, 1, 0, 11)]
    save_file({n: np.ones((2, 4), np.float32) for n in names}, folder / "model.safetensors")
    done = run(capsys, "inspect", folder, "--json")
    assert done.returncode == 0, done.stderr
    listed = [t["name"] for t in json.loads(done.stdout)["tensors"]]
    assert listed == [f"model.layers.{i}.mlp.up_proj.weight" for i in (0, 1, 2, 10, 11)]


def test_perplexity_lines_name_their_windows():
    report = Report("m", "o", "wanda", None, {"pattern": "per-row", "sparsity": 0.5}, "cpu")
    report.perplexity = {"dense": 14.0, "pruned": 35.0}
    report.perplexity_windows = {"seqlen": 512, "windows": 32}
    lines = [line for line in report.summary().splitlines() if line.startswith("perplexity")]
    assert len(lines) == 2
    assert all("first 32 test windows of 512 tokens" in line for line in lines)
    report.perplexity_windows = {"seqlen": 256, "windows": None}
    assert "all test windows of 256 tokens" in report.summary()


@pytest.mark.real
def test_main_job_reruns_and_builtin_names_work_everywhere(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["prune", "smollm2-135m", "--method", "magnitude", "--no-eval"]
    first = run(capsys, *args)
    assert first.returncode == 0, first.stderr
    default = Path("pruned/smollm2-135m-magnitude-50pct")
    assert (default / "sparsity.json").is_file()
    second = run(capsys, *args)
    assert second.returncode == 0, second.stderr
    assert f"replacing the earlier default output {default}" in second.stderr
    assert (default / "sparsity.json").is_file()

    shown = run(capsys, "inspect", "smollm2-135m", "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["path"] == str(data.builtin_model())
    evaluated = run(capsys, "eval", "smollm2-135m", "--seqlen", "32", "--max-windows", "1")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "first 1 windows of 32" in evaluated.stdout
    stats = tmp_path / "stats.safetensors"
    calibrated = run(
        capsys, "calibrate", "smollm2-135m", "--out", stats, "--nsamples", "1", "--seqlen", "16"
    )
    assert calibrated.returncode == 0, calibrated.stderr
    assert stats.is_file()
