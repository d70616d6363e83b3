"""Streaming checkpoint pruning vs ``cp -r`` vs transformers load → prune → save_pretrained.

Writes synthetic LLaMA-7B-shaped checkpoints (random BF16 weights, ~1 GB shards)
of two sizes to a scratch folder, then, for each size and each in its own
subprocess (wall time and that process's peak RSS from ``wait4``):

- ``symprune prune IN OUT --method magnitude --sparsity 0.5``, and the same
  through the Python API alone (``symprune.checkpoint.prune_checkpoint``; the
  CLI may import more), also with ``symmetric``, whose scores span the whole
  matrix, so it holds one tensor's scores and mask;
- ``cp -r IN OUT`` and ``cp -r IN OUT && sync`` (symprune fsyncs what it writes);
- transformers: ``from_pretrained`` → the same magnitude masks through
  ``symprune.ops`` → ``save_pretrained``.

The page cache is warmed before the runs, outputs are deleted after each run
and the checkpoints at the end. Appends the table and the command to
``benches/RESULTS.md`` unless ``--no-record``.

    python benches/bench_checkpoint.py --layers 7 14
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

HIDDEN, INTERMEDIATE, VOCAB, HEADS = 4096, 11008, 32000, 32
RESULTS = Path(__file__).with_name("RESULTS.md")


def layout(layers: int) -> list[tuple[str, tuple[int, ...]]]:
    """Tensor names and shapes of a LLaMA-7B with ``layers`` decoder layers, in HF order."""
    out = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(layers):
        p = f"model.layers.{i}"
        out += [
            (f"{p}.input_layernorm.weight", (HIDDEN,)),
            (f"{p}.self_attn.q_proj.weight", (HIDDEN, HIDDEN)),
            (f"{p}.self_attn.k_proj.weight", (HIDDEN, HIDDEN)),
            (f"{p}.self_attn.v_proj.weight", (HIDDEN, HIDDEN)),
            (f"{p}.self_attn.o_proj.weight", (HIDDEN, HIDDEN)),
            (f"{p}.post_attention_layernorm.weight", (HIDDEN,)),
            (f"{p}.mlp.gate_proj.weight", (INTERMEDIATE, HIDDEN)),
            (f"{p}.mlp.up_proj.weight", (INTERMEDIATE, HIDDEN)),
            (f"{p}.mlp.down_proj.weight", (HIDDEN, INTERMEDIATE)),
        ]
    return out + [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]


def nbytes(shape: tuple[int, ...]) -> int:
    return 2 * math.prod(shape)


def bf16_bits(shape: tuple[int, ...], rng):
    import numpy as np

    if len(shape) == 1:
        return np.full(shape, 0x3F80, np.uint16)  # norms: 1.0
    w = rng.standard_normal(math.prod(shape), dtype=np.float32) * np.float32(0.02)
    return (w.view(np.uint32) >> 16).astype(np.uint16)


def make_checkpoint(path: Path, layers: int, shard_bytes: int, seed: int = 0) -> dict:
    """Writes the checkpoint tensor by tensor (memory: one tensor); returns its sizes."""
    import numpy as np
    from transformers import LlamaConfig

    tensors = layout(layers)
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in tensors:
        n = nbytes(shape)
        if shards[-1] and size + n > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += n
    path.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    weight_map = {}
    for k, part in enumerate(shards):
        file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        header: dict = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, shape in part:
            n = nbytes(shape)
            header[name] = {
                "dtype": "BF16",
                "shape": list(shape),
                "data_offsets": [offset, offset + n],
            }
            offset += n
            weight_map[name] = file
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)  # as safetensors does: data 8-byte aligned
        with open(path / file, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            for _, shape in part:
                bf16_bits(shape, rng).tofile(f)
    total = sum(nbytes(s) for _, s in tensors)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        dtype="bfloat16",
    ).save_pretrained(path)
    return {
        "bytes": total,
        "shards": len(shards),
        "largest": max(nbytes(s) for _, s in tensors),
    }


def measure(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one command, in its own process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err}")
    return wall, usage.ru_maxrss / 1024


def transformers_child(src: str, dst: str) -> None:
    """The baseline: the whole model in memory, pruned with the same kernels, saved."""
    import torch
    from transformers import AutoModelForCausalLM

    from symprune import ops

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    with torch.no_grad():
        for layer in model.model.layers:
            for module in layer.modules():
                if isinstance(module, torch.nn.Linear):
                    w = module.weight.data
                    ops.apply_mask(w, ops.mask(ops.magnitude(w), 0.5))
    model.save_pretrained(dst)


def warm(path: Path) -> None:
    for f in sorted(path.iterdir()):
        with open(f, "rb") as src:
            while src.read(1 << 24):
                pass


def run_size(root: Path, layers: int, shard_gb: float, repeat: int) -> list[dict]:
    src = root / f"llama7b-{layers}l"
    t0 = time.perf_counter()
    # A child writes it, so this process stays small: a child's peak RSS
    # starts from its parent's at fork.
    made = subprocess.run(
        [sys.executable, __file__, "--child", "make", str(src), str(layers), str(shard_gb)],
        capture_output=True,
        text=True,
        check=True,
    )
    info = json.loads(made.stdout)
    print(
        f"{src.name}: {info['bytes'] / 1e9:.2f} GB in {info['shards']} shards "
        f"(written in {time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    out = root / "out"
    cli = [sys.executable, "-m", "symprune.cli", "prune", str(src), str(out)]

    def api(method: str) -> list[str]:
        call = f"prune_checkpoint({str(src)!r}, {str(out)!r}, method={method!r}, sparsity=0.5)"
        return [sys.executable, "-c", f"from symprune.checkpoint import prune_checkpoint; {call}"]

    runs = {
        "symprune prune (CLI) magnitude": cli + ["--method", "magnitude", "--sparsity", "0.5"],
        "prune_checkpoint (API) magnitude": api("magnitude"),
        "prune_checkpoint (API) symmetric": api("symmetric"),
        "cp -r": ["cp", "-r", str(src), str(out)],
        "cp -r && sync": ["sh", "-c", f"cp -r '{src}' '{out}' && sync"],
        "transformers": [sys.executable, __file__, "--child", "transformers", str(src), str(out)],
    }
    rows = []
    for label, cmd in runs.items():
        walls, rsss = [], []
        for _ in range(repeat):
            warm(src)
            subprocess.run(["sync"], check=True)
            wall, rss = measure(cmd)
            walls.append(wall)
            rsss.append(rss)
            shutil.rmtree(out)
        # The fastest repeat is the least disturbed by other work on the machine.
        wall, rss = min(walls), max(rsss)
        rows.append(
            {
                "size": f"{info['bytes'] / 1e9:.2f} GB / {info['shards']} shards",
                "run": label,
                "wall": wall,
                "rss": rss,
                **info,
            }
        )
        print(f"  {label:<34} {wall:7.1f} s  {rss:7.0f} MiB", flush=True)
    shutil.rmtree(src)
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| checkpoint | run | wall s | ÷ cp -r | ÷ (cp -r && sync) | peak RSS MiB | RSS goal MiB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        same = [x for x in rows if x["size"] == r["size"]]
        cp = next(x["wall"] for x in same if x["run"] == "cp -r")
        cp_sync = next(x["wall"] for x in same if x["run"] == "cp -r && sync")
        goal = 1.5 * r["largest"] / 2**20 + 200
        lines.append(
            f"| {r['size']} | {r['run']} | {r['wall']:.1f} | {r['wall'] / cp:.2f} | "
            f"{r['wall'] / cp_sync:.2f} | {r['rss']:.0f} | {goal:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:3] == ["--child", "transformers"]:
        transformers_child(sys.argv[3], sys.argv[4])
        return
    if sys.argv[1:3] == ["--child", "make"]:
        made = make_checkpoint(Path(sys.argv[3]), int(sys.argv[4]), int(float(sys.argv[5]) * 1e9))
        print(json.dumps(made))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--shard-gb", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each; the fastest counts")
    parser.add_argument("--tmp", type=Path, default=Path("/tmp"))
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    root = args.tmp / "symprune-bench-checkpoint"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    # The largest checkpoint, one output of it, and some room.
    need = 2.5 * sum(nbytes(s) for _, s in layout(max(args.layers)))
    free = shutil.disk_usage(root).free
    if free < need:
        raise SystemExit(f"{root}: {free / 1e9:.1f} GB free, need {need / 1e9:.1f} GB")
    load = os.getloadavg()[0]
    rows = []
    try:
        for layers in args.layers:
            rows += run_size(root, layers, args.shard_gb, args.repeat)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    text = table(rows)
    print(text)
    if not args.no_record:
        command = "python benches/bench_checkpoint.py " + " ".join(sys.argv[1:])
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        with RESULTS.open("a", encoding="utf-8") as f:
            f.write(
                f"\n## Streaming checkpoint prune vs cp -r vs transformers "
                f"({time.strftime('%Y-%m-%d')})\n\n"
                f"Command: `{command.strip()}`\n\n"
                f"Machine: {os.cpu_count()} cores, {mem:.0f} GiB RAM, "
                f"{platform.platform()}; load average {load:.1f} at the start. "
                "Synthetic LLaMA-7B-shaped BF16 checkpoints (random weights), page cache "
                f"warm, each run a fresh process (peak RSS of that process from wait4), "
                f"the fastest of {args.repeat} runs. "
                "RSS goal = 1.5 × largest tensor + 200 MiB.\n\n"
                f"{text}\n"
            )


if __name__ == "__main__":
    main()
