"""Compressed-tensors sparse formats: size on disk, and wall time / peak RSS of
``symprune.checkpoint.compress`` / ``decompress`` vs ``cp -r`` and vs the
``compressed-tensors`` package's own compressor and decompressor.

Checkpoints: the real SmolLM2-135M (F32) pruned by magnitude at 50% (unstructured,
compressed as ``sparse-bitmask``) and at 2:4 (``sparse-24-bitmask``), a BF16 copy of
each, and optionally a synthetic LLaMA-7B-shaped BF16 checkpoint
(``--synthetic-layers``, from benches/bench_checkpoint.py) pruned the same ways.

Each run is its own process (wall time and that process's peak RSS from
``wait4``), page cache warm, the fastest of ``--repeat`` runs. symprune fsyncs
every shard it writes, so the copies are also timed with ``&& sync`` and the
package's runs end with ``os.sync()``. The package (0.14.0.1, which needs
transformers<5) runs under ``--ct-python``: it loads each shard, compresses it with
its sparsity compressor (the config's targets) and saves it with safetensors, as
llm-compressor's save does minus the model; decompression is its
``BaseSparseCompressor.decompress`` generator, saved shard by shard.

    python benches/bench_compress.py --synthetic-layers 7
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_checkpoint import make_checkpoint, measure, warm  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS.md")
PATTERNS = {"sparse-bitmask": {"sparsity": 0.5}, "sparse-24-bitmask": {"pattern": "2:4"}}


def tensor_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def data_section(file: Path) -> str:
    """The digest of a safetensors file's tensor bytes, read in chunks (this process
    stays small). The header's spacing may differ: one not written as the safetensors
    crate writes it is re-rendered."""
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        f.seek(8 + int.from_bytes(f.read(8), "little"))
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def child_prune(src: str, dst: str, fmt: str) -> None:
    from symprune.checkpoint import prune_checkpoint

    prune_checkpoint(src, dst, method="magnitude", **PATTERNS[fmt])


def child_bf16(src: str, dst: str) -> None:
    """A BF16 copy (floats rounded; zeros stay zeros), same shards and files."""
    import torch
    from safetensors.torch import load_file, save_file

    s, d = Path(src), Path(dst)
    d.mkdir(parents=True)
    for f in sorted(s.iterdir()):
        if f.suffix == ".safetensors":
            t = load_file(f)
            t = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in t.items()}
            save_file(t, d / f.name, metadata={"format": "pt"})
        elif f.is_file() and not f.name.startswith("."):
            shutil.copy(f, d / f.name)
    config = json.loads((d / "config.json").read_text())
    config["torch_dtype"] = "bfloat16"
    (d / "config.json").write_text(json.dumps(config, indent=2))


def child_compress(src: str, dst: str, fmt: str, report: str) -> None:
    from symprune.checkpoint import compress

    done = compress(src, dst, fmt)
    Path(report).write_text(json.dumps(done.to_dict()))


def child_decompress(src: str, dst: str) -> None:
    from symprune.checkpoint import decompress

    decompress(src, dst)


def shard_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        return [path / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    return [path / "model.safetensors"]


def child_ct_compress(src: str, dst: str, like: str) -> None:
    """The package compresses ``src`` as symprune's output ``like`` says (format, targets)."""
    from compressed_tensors.compressors import ModelCompressor
    from safetensors.torch import load_file, save_file

    s, d = Path(src), Path(dst)
    qc = json.loads((Path(like) / "config.json").read_text())["quantization_config"]
    compressor = ModelCompressor.from_compression_config(qc)
    targets = set(compressor.sparsity_config.targets)
    d.mkdir(parents=True)
    weight_map = {}
    for file in shard_files(s):
        out = compressor.sparsity_compressor.compress(load_file(file), compression_targets=targets)
        save_file(out, d / file.name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(out, file.name))
    if (s / "model.safetensors.index.json").exists():
        index = {"metadata": {}, "weight_map": weight_map}
        (d / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config = json.loads((s / "config.json").read_text())
    config["quantization_config"] = qc
    (d / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    os.sync()


def child_ct_decompress(src: str, dst: str) -> None:
    """The package's decompressor, its output saved shard by shard."""
    from compressed_tensors.compressors import ModelCompressor
    from safetensors.torch import save_file

    s, d = Path(src), Path(dst)
    qc = json.loads((s / "config.json").read_text())["quantization_config"]
    sparsity = ModelCompressor.from_compression_config(qc).sparsity_compressor
    index = s / "model.safetensors.index.json"
    shard_of = json.loads(index.read_text())["weight_map"] if index.exists() else {}
    d.mkdir(parents=True)
    parts: dict[str, dict] = {}
    for name, tensor in sparsity.decompress(str(s)):
        key = name.removesuffix(".weight") + ".bitmask"
        file = shard_of.get(name, shard_of.get(key, "model.safetensors"))
        parts.setdefault(file, {})[name] = tensor
    for file, tensors in parts.items():
        save_file(tensors, d / file, metadata={"format": "pt"})
    os.sync()


def best(cmd: list[str], out: Path, repeat: int) -> tuple[float, float]:
    runs = []
    for _ in range(repeat):
        shutil.rmtree(out, ignore_errors=True)
        runs.append(measure(cmd))
    return min(r[0] for r in runs), max(r[1] for r in runs)


def bench(name: str, dense: Path, fmt: str, root: Path, args) -> list[dict]:
    me = [sys.executable, __file__, "--child"]
    packed, back, cp = root / "packed", root / "back", root / "cp"
    report = root / "report.json"
    warm(dense)
    rows = []

    def row(run: str, cmd: list[str], out: Path, repeat: int = args.repeat) -> None:
        wall, rss = best(cmd, out, repeat)
        rows.append({"checkpoint": name, "format": fmt, "run": run, "wall": wall, "rss": rss})

    row("cp -r", ["cp", "-r", str(dense), str(cp)], cp)
    row("cp -r && sync", ["sh", "-c", f"cp -r '{dense}' '{cp}' && sync"], cp)
    shutil.rmtree(cp, ignore_errors=True)
    row("symprune compress", me + ["compress", str(dense), str(packed), fmt, str(report)], packed)
    warm(packed)
    row("symprune decompress", me + ["decompress", str(packed), str(back)], back)
    for f in shard_files(dense):
        assert data_section(back / f.name) == data_section(f), f"{name}: {f.name} differs"
    shutil.rmtree(back)
    if Path(args.ct_python).exists():
        ct = root / "ct"
        cmd = [args.ct_python, __file__, "--child", "ct-compress", str(dense), str(ct), str(packed)]
        row("compressed-tensors compress", cmd, ct, args.ct_repeat)
        shutil.rmtree(ct, ignore_errors=True)
        cmd = [args.ct_python, __file__, "--child", "ct-decompress", str(packed), str(back)]
        row("compressed-tensors decompress", cmd, back, args.ct_repeat)
        shutil.rmtree(back, ignore_errors=True)
    done = json.loads(report.read_text())
    linear_dense = sum(t["dense_bytes"] for t in done["tensors"])
    linear_packed = sum(t["compressed_bytes"] for t in done["tensors"])
    for r in rows:
        r |= {
            "dense_bytes": tensor_bytes(dense),
            "packed_bytes": tensor_bytes(packed),
            "linear_ratio": linear_packed / linear_dense,
            "left_dense": len(done["left_dense"]),
            "sparsity": done["global_sparsity"],
        }
    shutil.rmtree(packed)
    return rows


def table(rows: list[dict]) -> str:
    out = [
        "| checkpoint | format | size dense → compressed | linears ratio | run | wall s "
        "| ÷ (cp -r && sync) | peak RSS MiB |",
        "|---|---|---|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        base = next(
            x["wall"]
            for x in rows
            if x["checkpoint"] == r["checkpoint"]
            and x["format"] == r["format"]
            and x["run"] == "cp -r && sync"
        )
        size = (
            f"{r['dense_bytes'] / 1e6:,.0f} → {r['packed_bytes'] / 1e6:,.0f} MB "
            f"({r['packed_bytes'] / r['dense_bytes']:.3f}×)"
        )
        out.append(
            f"| {r['checkpoint']} | {r['format']} | {size} | {r['linear_ratio']:.4f} | {r['run']} "
            f"| {r['wall']:.2f} | {r['wall'] / base:.2f} | {r['rss']:.0f} |"
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/symprune-bench-compress"))
    ap.add_argument("--synthetic-layers", type=int, default=0, help="0: SmolLM2 only")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--ct-repeat", type=int, default=1)
    ap.add_argument("--ct-python", default="/work/venvs/ct/bin/python")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        {
            "prune": child_prune,
            "bf16": child_bf16,
            "compress": child_compress,
            "decompress": child_decompress,
            "ct-compress": child_ct_compress,
            "ct-decompress": child_ct_decompress,
            "make": lambda p, n: make_checkpoint(Path(p), int(n), 1 << 30),
        }[kind](*rest)
        return

    root = args.scratch
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    me = [sys.executable, __file__, "--child"]
    load = os.getloadavg()[0]
    # Found by a child: a child's peak RSS starts from its parent's at fork.
    smollm2 = subprocess.run(
        [
            sys.executable,
            "-c",
            "from symprune import data; print(data.builtin_model('smollm2-135m'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    sources = {"SmolLM2 F32": Path(smollm2)}
    if args.synthetic_layers:
        synth = root / "synthetic"
        subprocess.run(me + ["make", str(synth), str(args.synthetic_layers)], check=True)
        sources[f"LLaMA-7B-shaped {args.synthetic_layers} layers BF16"] = synth
    rows = []
    for label, src in sources.items():
        for fmt in PATTERNS:
            pruned = root / "pruned"
            subprocess.run(me + ["prune", str(src), str(pruned), fmt], check=True)
            rows += bench(label, pruned, fmt, root, args)
            if label.startswith("SmolLM2"):
                half = root / "bf16"
                subprocess.run(me + ["bf16", str(pruned), str(half)], check=True)
                rows += bench("SmolLM2 BF16", half, fmt, root, args)
                shutil.rmtree(half)
            shutil.rmtree(pruned)
        print(table(rows), flush=True)
    shutil.rmtree(root)
    text = table(rows)
    print(text)
    if not args.no_record:
        cmd = " ".join(["python", "benches/bench_compress.py", *sys.argv[1:]])
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        section = (
            f"\n## Compressed-tensors sparse formats: size, compress / decompress vs cp -r and "
            f"vs the package (issue 13, {time.strftime('%Y-%m-%d')})\n\n"
            f"Command: `{cmd}` (commit {commit})\n\n"
            f"Machine: {os.cpu_count()} cores, {platform.platform()}; load average {load:.1f} "
            "at the start. Magnitude-pruned checkpoints (50% → sparse-bitmask, 2:4 → "
            "sparse-24-bitmask); each run its own process (peak RSS from wait4), page cache "
            f"warm, fastest of {args.repeat} (the package: of {args.ct_repeat}). Size: all "
            "shards; linears ratio: compressed / dense bytes of the compressed tensors. "
            "symprune decompress was checked against the pruned shards (data sections byte for "
            "byte).\n\n"
            f"{text}\n"
        )
        with RESULTS.open("a") as f:
            f.write(section)


if __name__ == "__main__":
    main()
