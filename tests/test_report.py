"""`symprune report`: the grid on a tiny random Llama — table, plots, cache, cleanup."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from symprune import cli, report
from symprune.errors import InvalidInputError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SMALL = {"nsamples": 4, "seqlen": 64, "eval_seqlen": 64, "eval_windows": 2, "device": "cpu"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smollm2_dir) -> Path:
    """A random 2-layer Llama (hidden 64) with SmolLM2's tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=49152,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("report") / "tiny"
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    for f in smollm2_dir.glob("tokenizer*"):
        (folder / f.name).write_bytes(f.read_bytes())
    return folder


def test_parse_target():
    assert report.parse_target("50%") == report.Target("50%", 0.5)
    assert report.parse_target("0.6") == report.Target("60%", 0.6)
    assert report.parse_target("2:4") == report.Target("2:4", 0.5, "2:4")
    assert report.parse_target("4:8").slug == "4of8"
    for bad in ("half", "150%", "0", "3:3"):
        with pytest.raises(InvalidInputError):
            report.parse_target(bad)


def test_a_cell_names_its_refinement_parameters():
    target = report.parse_target("60%")
    spec = report.cell_spec("wanda", target, "r2dsnot:decision=exact;max_cycles=3")
    assert spec.refine == "r2dsnot"
    assert spec.effective_refine_params["decision"] == "exact"
    assert spec.effective_refine_params["max_cycles"] == 3
    plain = report.cell_spec("wanda", target, "r2dsnot")
    assert plain.effective_refine_params["decision"] == "mean"
    settings = report.GridSettings.resolve(device="cpu", seed=0, batch_size=8)
    refines = ("r2dsnot", "r2dsnot:decision=exact")
    keys = [report.cell_key("m", "wanda", target, r, settings) for r in refines]
    assert keys[0]["run"] != keys[1]["run"]
    paths = {report.cell_path(Path("out"), k) for k in keys}
    assert len(paths) == 2 and all(p.name.isascii() and ":" not in p.name for p in paths)
    with pytest.raises(InvalidInputError, match="decision"):
        report.cell_spec("wanda", target, "r2dsnot:decision=exactly")


def test_the_summary_gives_the_refiners_loss_and_says_when_there_was_nothing_to_refine():
    from symprune.results import Report, TensorRecord

    settings = {"pattern": "per-row", "sparsity": 0.6}
    run = Report(
        model="m", output="o", method="wanda", refine="swaps", settings=settings, device="cpu"
    )
    run.tensors = [
        TensorRecord("a", (2, 2), 0.5, 3.0, 1.0),
        TensorRecord("b", (2, 2), 0.5, 1.0, 1.0),
    ]
    assert run.refinement() == "4 -> 2 (-50.0%)" and "layer-wise loss" in run.summary()
    run.tensors = [TensorRecord("a", (2, 2), 0.5, 0.0, 0.0)]  # SparseGPT's updated weights
    assert "nothing to refine" in run.summary()
    run.tensors = [TensorRecord("a", (2, 2), 0.5)]  # a refiner that reports no loss
    assert "layer-wise loss" not in run.summary() and run.refinement() is None


def test_layer_profile_sums_tensors_per_layer_without_layer_records():
    tensors = [
        {"name": "model.layers.0.a.weight", "shape": [2, 2], "sparsity": 0.5},
        {"name": "model.layers.0.b.weight", "shape": [2, 6], "sparsity": 0.25},
        {"name": "model.layers.1.a.weight", "shape": [4, 4], "sparsity": 0.75},
    ]
    assert report.layer_profile({"layers": [], "tensors": tensors}) == [
        {"index": 0, "sparsity": 0.3125, "recon_error": None},
        {"index": 1, "sparsity": 0.75, "recon_error": None},
    ]


def read_png(path: Path):
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    return matplotlib.image.imread(path)


def test_report_writes_table_and_plots_then_reuses_the_cache(tiny, tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (symprune[report])")
    out = tmp_path / "out"
    args = ["report", "--out", str(out), "--models", str(tiny), "--methods", "magnitude,wanda"]
    args += ["--patterns", "50%,2:4", "--refine", "none", "--nsamples", "4", "--seqlen", "64"]
    args += ["--eval-seqlen", "64", "--eval-windows", "2", "--device", "cpu", "--json"]
    assert cli.main(args) == 0
    captured = capsys.readouterr()
    files = json.loads(captured.out)
    assert "[5/5] tiny wanda 2:4 none: perplexity" in captured.err

    table = (out / "results.md").read_text()
    assert files["table"] == str(out / "results.md") and files["cells"] == 5
    assert "| method | refine | 50% | 2:4 |" in table
    assert "| magnitude | — |" in table and "| wanda | — |" in table and "## tiny (dense " in table
    cells = list((out / "cells").glob("*.json"))
    assert len(cells) == 5
    wanda = json.loads(next(p for p in cells if "wanda-50pct" in p.name).read_text())
    assert wanda["sparsity"] == pytest.approx(0.5)
    profile = report.layer_profile(wanda["report"])
    assert [x["index"] for x in profile] == [0, 1]
    assert all(x["sparsity"] == pytest.approx(0.5) and x["recon_error"] > 0 for x in profile)
    assert [Path(p).name for p in files["plots"]] == [
        "perplexity-tiny.png",
        "layers-tiny-50pct.png",
        "layers-tiny-2of4.png",
    ]
    for plot in files["plots"]:
        image = read_png(Path(plot))
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    # The pruned checkpoints were temporary.
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["cells", "results.md", *(Path(p).name for p in files["plots"])]
    )

    # Again: every cell comes from the cache; nothing is pruned or evaluated.
    def fail(*args, **kwargs):
        raise AssertionError("a cached cell was recomputed")

    monkeypatch.setattr("symprune.api.prune", fail)
    monkeypatch.setattr("symprune.evaluation.perplexity.perplexity", fail)
    messages: list[str] = []
    again = report.run_report(
        out,
        models=[str(tiny)],
        methods=["magnitude", "wanda"],
        targets=["50%", "2:4"],
        refines=["none"],
        log=messages.append,
        **SMALL,
    )
    assert len(messages) == 5 and all(m.endswith("(cached)") for m in messages), messages
    assert again.table.read_text() == table
    # Any changed setting is a different cell.
    with pytest.raises(AssertionError, match="recomputed"):
        report.run_report(
            out,
            models=[str(tiny)],
            methods=["wanda"],
            targets=["50%"],
            refines=["none"],
            log=messages.append,
            **(SMALL | {"nsamples": 5}),
        )


def test_report_keep_keeps_the_pruned_checkpoints(tiny, tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (symprune[report])")
    out = tmp_path / "out"
    files = report.run_report(
        out,
        models=[str(tiny)],
        methods=["magnitude"],
        targets=["60%"],
        refines=["none"],
        keep=True,
        log=lambda _: None,
        **SMALL,
    )
    kept = list((out / "checkpoints").iterdir())
    assert len(kept) == 1 and (kept[0] / "config.json").is_file()
    assert (kept[0] / "sparsity.json").is_file() and files.cells == 2


def test_report_refuses_unknown_names_before_any_work(tiny, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (symprune[report])")
    args = ["report", "--out", str(tmp_path / "out"), "--models", str(tiny)]
    assert cli.main([*args, "--methods", "wandaa"]) == 1
    assert 'method: "wandaa" is not one of' in capsys.readouterr().err
    assert cli.main([*args, "--methods", "wanda", "--refine", "dsnott"]) == 1
    assert 'refine: "dsnott" is not one of' in capsys.readouterr().err
    assert not (tmp_path / "out" / "cells").exists()
