"""Test checkpoints written with the safetensors library alone (never with symprune).

A tiny random Llama split over three shards, its layers in BF16, F16 and F32
plus an I8 tensor, and builders of malformed safetensors files.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from pathlib import Path

# The weights symprune prunes by default in a Llama: the block linears.
LINEAR = re.compile(r"model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj\.weight")
SHARDS = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]


def tiny_lm(folder: Path, tokenizer_from: Path, **config: object) -> Path:
    """A 2-layer Llama with the real SmolLM2 tokenizer (so calibration can run)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    settings = dict(
        vocab_size=49152,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**{**settings, **config}))
    model.save_pretrained(folder)
    for f in tokenizer_from.iterdir():
        if f.name.startswith("tokenizer") or f.name == "special_tokens_map.json":
            (folder / f.name).write_bytes(f.read_bytes())
    return folder


def tiny_llama(path: Path, seed: int = 0) -> Path:
    """A 3-layer Llama: layer 0 in BF16, layer 1 in F16, layer 2 in F32 with an extra
    I8 matrix; shard 1 = embeddings + layer 0, shard 2 = layer 1, shard 3 = the rest
    (the largest)."""
    import torch
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config)
    tensors = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    for name in tensors:
        if ".layers.0." in name:
            tensors[name] = tensors[name].to(torch.bfloat16)
        elif ".layers.1." in name:
            tensors[name] = tensors[name].to(torch.float16)
    generator = torch.Generator().manual_seed(seed)
    tensors["model.layers.2.mlp.qweight"] = torch.randint(
        -128, 127, (8, 16), dtype=torch.int8, generator=generator
    )

    def shard_of(name: str) -> int:
        if name.startswith("model.embed_tokens") or ".layers.0." in name:
            return 0
        return 1 if ".layers.1." in name else 2

    path.mkdir(parents=True, exist_ok=True)
    write_sharded(path, tensors, SHARDS, shard_of)
    config.save_pretrained(path)
    (path / "tokenizer_config.json").write_text('{"model_max_length": 64}\n')
    (path / "chat_template.jinja").write_text("{{ messages }}\n")
    return path


def safetensors_bytes(header: dict | str, data: bytes, length: int | None = None) -> bytes:
    """A safetensors file from a header (dict or raw JSON text) and its data section;
    ``length`` overrides the 8-byte header length."""
    text = header if isinstance(header, str) else json.dumps(header)
    raw = text.encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def entry(dtype: str, shape: list[int], start: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}


def tree_digest(path: Path) -> dict[str, str]:
    """sha256 of every file under ``path`` (relative names)."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def reshard(src: Path, dst: Path, shards: int) -> Path:
    """A copy of the one-file checkpoint ``src`` in ``shards`` files (decoder layers split
    evenly, the rest in the first), with its index and other files (not symprune's
    manifest, which names the one file), as transformers' sharded saves lay it out."""
    from safetensors import safe_open

    with safe_open(src / "model.safetensors", framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    layers = 1 + max(int(k.split(".")[2]) for k in tensors if k.startswith("model.layers."))

    def shard_of(name: str) -> int:
        if not name.startswith("model.layers."):
            return 0
        return int(name.split(".")[2]) * shards // layers

    dst.mkdir(parents=True)
    files = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    write_sharded(dst, tensors, files, shard_of)
    for other in src.iterdir():
        copied = other.suffix != ".safetensors" and other.name != "sparsity.json"
        if other.is_file() and copied and not other.name.startswith("."):
            (dst / other.name).write_bytes(other.read_bytes())
    return dst


def write_sharded(path: Path, tensors: dict, files: list[str], shard_of) -> None:
    """``tensors`` saved into ``files`` (tensor ``k`` into ``files[shard_of(k)]``) with
    the index, as transformers' sharded saves write them."""
    from safetensors.torch import save_file

    weight_map = {}
    for i, file in enumerate(files):
        part = {k: v for k, v in tensors.items() if shard_of(k) == i}
        save_file(part, path / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
