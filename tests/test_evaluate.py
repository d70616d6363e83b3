"""`symprune eval`: perplexity against a plain transformers loop, and the lm-eval integration."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from symprune import cli, data
from symprune.errors import InvalidInputError, SymPruneError
from symprune.evaluation import EvalResult
from symprune.evaluation.perplexity import perplexity
from symprune.evaluation.zero_shot import zero_shot

SEQLEN, WINDOWS = 256, 3


def plain_perplexity(model_dir: Path, seqlen: int, windows: int) -> float:
    """The textbook loop: whole model, non-overlapping windows, mean CE per window, exp of mean."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = AutoTokenizer.from_pretrained(model_dir)(data.builtin_corpus().test)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    losses = []
    with torch.no_grad():
        for k in range(windows):
            window = torch.tensor([ids[k * seqlen : (k + 1) * seqlen]])
            logits = model(input_ids=window).logits[0]
            losses.append(float(F.cross_entropy(logits[:-1], window[0, 1:])))
    return math.exp(sum(losses) / len(losses))


@pytest.mark.real
def test_perplexity_equals_plain_transformers_loop(smollm2_dir, capsys):
    expected = plain_perplexity(smollm2_dir, SEQLEN, WINDOWS)
    streamed = perplexity(smollm2_dir, seqlen=SEQLEN, max_windows=WINDOWS, device="cpu")
    assert abs(streamed - expected) / expected <= 1e-4, (streamed, expected)
    # The CLI, with windows split over two batches.
    args = ["eval", str(smollm2_dir), "--seqlen", str(SEQLEN), "--max-windows", str(WINDOWS)]
    assert cli.main([*args, "--batch-size", "2", "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tasks"] == {} and result["max_windows"] == WINDOWS
    assert abs(result["perplexity"] - expected) / expected <= 1e-4, (result, expected)


@pytest.mark.real
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_windows": 0}, "max_windows: 0"),
        ({"seqlen": 1}, "seqlen: 1"),
        ({"seqlen": 10**6}, "exceeds the model's context"),
    ],
)
def test_perplexity_refuses_bad_settings(smollm2_dir, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        perplexity(smollm2_dir, device="cpu", **kwargs)


def test_eval_without_anything_to_do_is_one_line(capsys):
    assert cli.main(["eval", "--no-perplexity"]) == 1
    assert "nothing to evaluate" in capsys.readouterr().err


def test_zero_shot_without_lm_eval_says_what_to_install(monkeypatch, smollm2_dir):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval now raises ImportError
    with pytest.raises(SymPruneError, match=r"pip install 'symprune\[eval\]'"):
        zero_shot(smollm2_dir, ["boolq"])


# A small multiple-choice task over a local jsonl (no hub), as lm-eval task YAML. The
# last five labels point at nonsense, so a model that knows the answers scores ~50%
# and the accuracy says which choice won in every item.
ITEMS = [
    ("The capital of France is", ["Paris", "a banana"], 0),
    ("Two plus two equals", ["seven", "four"], 1),
    ("The sun rises in the", ["violin", "east"], 1),
    ("Water freezes at zero degrees", ["Celsius", "happiness"], 0),
    ("A week has seven", ["rivers", "days"], 1),
    ("The opposite of hot is", ["purple", "cold"], 0),
    ("Birds can", ["fly", "calculate taxes"], 1),
    ("The largest planet in the solar system is", ["Jupiter", "a spoon"], 1),
    ("Ice is frozen", ["bread", "water"], 0),
    ("The first letter of the alphabet is", ["A", "grass"], 1),
]
TASK_YAML = """\
task: symprune_toy
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{context}}}}"
doc_to_target: label
doc_to_choice: "{{{{choices}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def write_task(folder: Path, yaml: str = TASK_YAML) -> Path:
    folder.mkdir()
    rows = [{"context": c, "choices": ch, "label": label} for c, ch, label in ITEMS]
    (folder / "toy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "toy.yaml").write_text(yaml.format(data=folder / "toy.jsonl"))
    return folder


def plain_accuracy(model_dir: Path) -> float:
    """Multiple choice by hand: argmax of the summed log-likelihood of " choice" after it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    correct = 0
    for context, choices, label in ITEMS:
        scores = []
        for choice in choices:
            ctx = tok(context)["input_ids"]
            whole = tok(context + " " + choice)["input_ids"]  # lm-eval splits the whole encoding
            with torch.no_grad():
                logp = model(input_ids=torch.tensor([whole])).logits[0].log_softmax(-1)
            scores.append(sum(float(logp[i - 1, whole[i]]) for i in range(len(ctx), len(whole))))
        correct += max(range(len(choices)), key=scores.__getitem__) == label
    return correct / len(ITEMS)


@pytest.mark.real
def test_lm_eval_local_task_on_pruned_smollm2(smollm2_dir, tmp_path, capsys):
    pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'symprune[eval]')")
    import symprune

    pruned = tmp_path / "pruned"
    symprune.prune(smollm2_dir, pruned, method="magnitude", sparsity=0.5, progress=False)
    tasks = write_task(tmp_path / "tasks")
    args = ["eval", str(pruned), "--no-perplexity", "--tasks", "symprune_toy"]
    assert cli.main([*args, "--include-path", str(tasks), "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["perplexity"] is None and list(result["tasks"]) == ["symprune_toy"]
    metrics = result["tasks"]["symprune_toy"]
    assert metrics["acc"] == pytest.approx(plain_accuracy(pruned))
    assert 0.0 < metrics["acc"] < 1.0 and metrics["acc_stderr"] > 0


def test_lm_eval_task_without_local_data_says_so(smollm2_dir, tmp_path):
    pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'symprune[eval]')")
    # A hub dataset that is not in the local cache: the hub is off, so it cannot load.
    yaml = TASK_YAML.replace("dataset_path: json", "dataset_path: symprune-tests/not-cached")
    tasks = write_task(tmp_path / "tasks", yaml)
    with pytest.raises(SymPruneError, match="'symprune_toy': data not available locally"):
        zero_shot(smollm2_dir, ["symprune_toy"], include_path=tasks, device="cpu")


def test_eval_summary_shows_perplexity_and_task_metrics():
    result = EvalResult(
        "m", "cpu", "builtin", 256, 3, 15.1, {"boolq": {"acc": 0.5, "acc_stderr": 0.01}}
    )
    text = result.summary()
    assert "15.1000 (builtin, first 3 windows of 256)" in text
    assert "acc 0.5000 ± 0.0100" in text and "acc_stderr" not in text
