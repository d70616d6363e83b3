"""The streaming checkpoint engine on the real SmolLM2-135M checkpoint."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from reference.checkpoints import LINEAR, tree_digest
from symprune import ops
from symprune.checkpoint import prune_checkpoint, read_manifest

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def pruned(smollm2_dir, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    digest = tree_digest(smollm2_dir)
    out = tmp_path_factory.mktemp("real") / "pruned"
    report = prune_checkpoint(smollm2_dir, out, method="symmetric", sparsity=0.5)
    assert len(report.tensors) == 30 * 7
    return out, digest


def test_masks_match_ops_and_the_rest_is_untouched(smollm2_dir, pruned):
    out, digest = pruned
    before = load_file(smollm2_dir / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    selected = 0
    for name, w in before.items():
        if not LINEAR.fullmatch(name):
            assert after[name].tobytes() == w.tobytes(), name
            continue
        selected += 1
        prune = ops.mask(ops.symmetric(w), 0.5, tensor=name)
        want = w.copy()
        want[prune] = 0
        assert after[name].tobytes() == want.tobytes(), name
        assert (prune.sum(axis=1) == w.shape[1] // 2).all()
    assert selected == 210
    assert read_manifest(out)["tensors"]["model.layers.29.mlp.down_proj.weight"]["sparsity"] == 0.5
    assert tree_digest(smollm2_dir) == digest


def test_pruned_model_runs_in_transformers(pruned):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(pruned[0], dtype=torch.float32)
    weight = model.model.layers[3].mlp.up_proj.weight
    assert (weight == 0).float().mean().item() == 0.5
    logits = model(torch.tensor([[1, 520, 3000, 17, 88]])).logits
    assert torch.isfinite(logits).all()


def test_killed_run_resumes_byte_identical(smollm2_dir, pruned, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "symprune.cli", "prune", smollm2_dir, out, "--method", "symmetric"]
    proc = subprocess.Popen(list(map(str, cmd)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    temp = out / ".model.safetensors.tmp"
    deadline = time.monotonic() + 60
    while not (temp.exists() and temp.stat().st_blocks > 0) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.kill()
    assert proc.wait() == -9, "the run finished before it could be killed"
    assert not (out / "sparsity.json").exists() and not (out / "model.safetensors").exists()
    done = subprocess.run(list(map(str, cmd)), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in out.glob(".*")] == [".symprune-output"]  # no journal, no temp
    assert tree_digest(out) == tree_digest(pruned[0])
    np.testing.assert_equal(read_manifest(out), read_manifest(pruned[0]))


@pytest.mark.real
def test_copied_tensors_leave_no_mapped_pages_behind(smollm2_dir):
    """The streamed pipeline reads every weight once through `CheckpointReader.torch`;
    the copies are what it keeps, so the shard's mapped pages must not stay resident
    (they made the peak grow with depth: issue 12)."""
    from symprune.checkpoint import CheckpointReader
    from symprune.util import resident_mb

    reader = CheckpointReader(smollm2_dir)
    names = reader.names()
    before = resident_mb()
    kept = [reader.torch(n) for n in names]
    grown = resident_mb()
    held = sum(t.numel() * t.element_size() for t in kept) / 2**20
    assert held > 500  # SmolLM2 in f32: the copies themselves
    assert grown["file"] - before["file"] < 32, (before, grown)
    assert grown["anon"] - before["anon"] > 0.9 * held
    # The zero-copy view maps them again on demand: same bytes.
    name = names[-1]
    assert bytes(reader.numpy(name).tobytes()) == kept[-1].numpy().tobytes()
