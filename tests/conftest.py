"""Shared fixtures: the real SmolLM2 checkpoint and its linear weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The converted SmolLM2-135M-Instruct checkpoint (cached after the first run)."""
    from symprune import data

    return data.builtin_model("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_linears(smollm2_dir: Path) -> dict[str, np.ndarray]:
    """A few real linear weights of SmolLM2 (float32, dequantized Q4_1: many ties)."""
    from safetensors.numpy import load_file

    names = [
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.weight",
        "model.layers.7.mlp.down_proj.weight",
        "model.layers.29.mlp.up_proj.weight",
    ]
    index = smollm2_dir / "model.safetensors.index.json"
    assert not index.exists() or json.loads(index.read_text())
    tensors = load_file(smollm2_dir / "model.safetensors")
    return {n: tensors[n] for n in names}
