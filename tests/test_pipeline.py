"""The layer-streamed pipeline against a plain whole-model implementation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from reference.sequential import sequential_masks
from symprune import data
from symprune.calibration.pipeline import calibration_ids, prune_streamed
from symprune.spec import Calibration, PruneSpec

TINY = dict(hidden=64, inter=128, layers=2, heads=4, kv=2)


def tiny_config(arch: str):
    import transformers as tf

    vocab = 49152  # SmolLM2's tokenizer is reused
    h, f, n, a, kv = TINY.values()
    common = dict(vocab_size=vocab, max_position_embeddings=512)
    if arch == "llama":
        return tf.LlamaConfig(
            hidden_size=h,
            intermediate_size=f,
            num_hidden_layers=n,
            num_attention_heads=a,
            num_key_value_heads=kv,
            **common,
        )
    if arch == "mistral":
        return tf.MistralConfig(
            hidden_size=h,
            intermediate_size=f,
            num_hidden_layers=n,
            num_attention_heads=a,
            num_key_value_heads=kv,
            sliding_window=32,
            **common,
        )
    if arch == "qwen2":
        return tf.Qwen2Config(
            hidden_size=h,
            intermediate_size=f,
            num_hidden_layers=n,
            num_attention_heads=a,
            num_key_value_heads=kv,
            **common,
        )
    if arch == "gemma3":
        return tf.Gemma3TextConfig(
            hidden_size=h,
            intermediate_size=f,
            num_hidden_layers=n,
            num_attention_heads=a,
            num_key_value_heads=kv,
            head_dim=16,
            sliding_window=16,
            layer_types=["sliding_attention", "full_attention"],
            **common,
        )
    if arch == "opt":
        return tf.OPTConfig(
            hidden_size=h,
            ffn_dim=f,
            num_hidden_layers=n,
            num_attention_heads=a,
            word_embed_proj_dim=h,
            vocab_size=vocab,
            max_position_embeddings=512,
        )
    if arch == "gpt2":
        return tf.GPT2Config(n_embd=h, n_layer=n, n_head=a, n_positions=512, vocab_size=vocab)
    raise AssertionError(arch)


ARCHS = ["llama", "mistral", "qwen2", "gemma3", "opt", "gpt2"]


@pytest.fixture(scope="session")
def tokenizer_files(smollm2_dir) -> list[Path]:
    return [p for p in smollm2_dir.iterdir() if p.name.startswith("tokenizer")]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, tokenizer_files) -> dict[str, Path]:
    from transformers import AutoModelForCausalLM

    out = {}
    for arch in ARCHS:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(tiny_config(arch))
        folder = tmp_path_factory.mktemp(arch)
        model.save_pretrained(folder)
        for f in tokenizer_files:
            (folder / f.name).write_bytes(f.read_bytes())
        out[arch] = folder
    return out


@pytest.fixture(scope="session")
def calib_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text(data.builtin_corpus().calibration[:60_000], encoding="utf-8")
    return path


def run_both(model_dir, calib_file, score, *, pattern=None, nsamples=4, seqlen=64, batch=2):
    calib = Calibration(source=str(calib_file), nsamples=nsamples, seqlen=seqlen, batch_size=batch)
    report = prune_streamed(
        model_dir,
        None,
        PruneSpec(method=score, sparsity=0.5, pattern=pattern),
        calib,
        device="cpu",
        keep_masks=True,
        progress=False,
    )
    windows = calibration_ids(Path(model_dir), calib)
    expected = sequential_masks(
        model_dir, windows, score, sparsity=0.5, pattern=pattern, batch_size=batch
    )
    return report, expected


def assert_same_masks(report, expected):
    assert set(report.masks) == set(expected)
    for name, mask in expected.items():
        np.testing.assert_array_equal(report.masks[name], mask, err_msg=name)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("score, pattern", [("wanda", None), ("ria", "2:4")])
def test_streamed_masks_equal_whole_model_reference_tiny(
    tiny_models, calib_file, arch, score, pattern
):
    report, expected = run_both(tiny_models[arch], calib_file, score, pattern=pattern)
    assert_same_masks(report, expected)
    assert len(report.layers) == 2
    assert all(abs(t.sparsity - 0.5) < 0.02 for t in report.tensors)  # 0.5 up to exact zeros


@pytest.mark.real
@pytest.mark.parametrize(
    "score, pattern", [("wanda", None), ("ria", None), ("wanda", "2:4"), ("ria", "2:4")]
)
def test_streamed_masks_equal_whole_model_reference_smollm2(
    smollm2_dir, calib_file, score, pattern
):
    report, expected = run_both(
        smollm2_dir, calib_file, score, pattern=pattern, nsamples=4, seqlen=64, batch=4
    )
    assert_same_masks(report, expected)
    assert len(report.tensors) == 30 * 7
