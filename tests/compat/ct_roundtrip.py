"""Checks symprune's compressed checkpoints against the ``compressed-tensors`` package.

Run with an interpreter that has ``compressed-tensors`` (0.14.0.1, the last release
with the sparse compressors; it needs transformers<5) and torch:

    python tests/compat/ct_roundtrip.py DENSE_DIR COMPRESSED_DIR [--logits]

1. The package's own decompressor (``ModelCompressor`` from the compressed
   config.json, then its sparsity compressor's ``decompress``) on COMPRESSED_DIR
   gives DENSE_DIR's tensors bit for bit.
2. The package's compressor on DENSE_DIR's shards (``compress`` with the config's
   targets) gives COMPRESSED_DIR's tensors bit for bit (names, dtypes, shapes, bytes).
3. With ``--logits``: ``AutoModelForCausalLM.from_pretrained`` on COMPRESSED_DIR
   gives the same logits as on DENSE_DIR.

Prints one JSON object (``ok`` plus the details) and exits 0 when all hold.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from compressed_tensors.compressors import ModelCompressor
from safetensors.torch import load_file


def shards(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / f for f in files]
    return [path / "model.safetensors"]


def load(path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for file in shards(path):
        out.update(load_file(file))
    return out


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bytes (so -0.0 differs from 0.0, NaN equals itself)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return a.contiguous().view(torch.uint8).equal(b.contiguous().view(torch.uint8))


def describe(t: torch.Tensor) -> str:
    return f"{t.dtype} {list(t.shape)}"


def compare(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> list[str]:
    problems = [f"{n}: only in symprune's" for n in sorted(ours.keys() - theirs.keys())]
    problems += [f"{n}: only in the package's" for n in sorted(theirs.keys() - ours.keys())]
    for name in sorted(ours.keys() & theirs.keys()):
        if not same(ours[name], theirs[name]):
            problems.append(f"{name}: {describe(ours[name])} vs {describe(theirs[name])}")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dense", type=Path)
    ap.add_argument("compressed", type=Path)
    ap.add_argument("--logits", action="store_true")
    args = ap.parse_args()
    config = json.loads((args.compressed / "config.json").read_text())
    compressor = ModelCompressor.from_compression_config(config["quantization_config"])
    sparsity = compressor.sparsity_compressor
    result: dict[str, object] = {"format": compressor.sparsity_config.format}

    clock = time.perf_counter()
    decompressed = dict(sparsity.decompress(str(args.compressed)))
    result["decompress_seconds"] = time.perf_counter() - clock
    dense = load(args.dense)
    result["decompress_problems"] = compare(decompressed, dense)[:20]

    targets = set(compressor.sparsity_config.targets or [])
    problems: list[str] = []
    clock = time.perf_counter()
    for file in shards(args.dense):
        theirs = sparsity.compress(load_file(file), compression_targets=targets)
        ours = load_file(args.compressed / file.name)
        problems += compare(ours, theirs)
    result["compress_seconds"] = time.perf_counter() - clock
    result["compress_problems"] = problems[:20]

    if args.logits:
        from transformers import AutoModelForCausalLM

        tokens = torch.arange(1, 17).reshape(1, 16) % 100
        logits = []
        for path in (args.dense, args.compressed):
            model = AutoModelForCausalLM.from_pretrained(path, torch_dtype="auto")
            with torch.no_grad():
                logits.append(model(tokens).logits)
        result["logits_equal"] = bool(torch.equal(logits[0], logits[1]))
    ok = not result["decompress_problems"] and not result["compress_problems"]
    result["ok"] = ok and result.get("logits_equal", True)
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
