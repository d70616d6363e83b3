"""Layer-streamed pruning vs loading the whole model; calibration overhead vs a plain forward.

Each run is a fresh subprocess, so its peak RSS is its own. Runs:

- ``streamed``: ``symprune.prune`` (Wanda, layer by layer from the shards, writes the output);
- ``whole``: the usual way — ``from_pretrained`` the whole model, catch layer 0's
  inputs, prune layer by layer in memory with the same kernels, ``save_pretrained``;
- both on SmolLM2-135M and on a synthetic Llama of the same width and twice the depth;
- ``calib``: ``symprune.calibrate`` (statistics only) vs ``forward``: one plain
  whole-model forward over the same tokens, in the same process.

    python benches/bench_pipeline.py [--nsamples 16] [--seqlen 512] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import torch
args = json.loads(sys.argv[1])
t0 = time.perf_counter()
if args["mode"] == "streamed":
    import symprune
    symprune.prune(args["model"], args["out"], method="wanda", sparsity=0.5,
                   nsamples=args["nsamples"], seqlen=args["seqlen"], device=args["device"],
                   calibration=args["calib"], progress=False)
elif args["mode"] == "whole":
    from transformers import AutoModelForCausalLM
    from symprune import data, ops
    from symprune.calibration.pipeline import calibration_ids
    from symprune.spec import Calibration
    model = AutoModelForCausalLM.from_pretrained(args["model"]).to(args["device"]).eval()
    ids = calibration_ids(args["model"], Calibration(source=args["calib"],
                          nsamples=args["nsamples"], seqlen=args["seqlen"]))
    layers = model.model.layers
    calls = []
    def pre(m, a, k):
        calls.append((a, k))
        raise StopIteration
    h = layers[0].register_forward_pre_hook(pre, with_kwargs=True)
    with torch.no_grad():
        try:
            model(ids.to(args["device"]))
        except StopIteration:
            pass
    h.remove()
    (hidden,), kwargs = calls[0][0], calls[0][1]
    with torch.no_grad():
        for layer in layers:
            lins = {n: m for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
            sq = {}
            hooks = [m.register_forward_hook(
                lambda m, a, o, n=n: sq.__setitem__(n, (a[0].double() ** 2).sum((0, 1))))
                for n, m in lins.items()]
            layer(hidden, **kwargs)
            for hk in hooks:
                hk.remove()
            for n, m in lins.items():
                w = m.weight.data
                s = ops.wanda(w.cpu(), (sq[n] / len(ids)).float())
                w[torch.from_numpy(ops.mask(s, 0.5)).to(w.device)] = 0
            hidden = layer(hidden, **kwargs)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    model.save_pretrained(args["out"])
elif args["mode"] == "calib":
    import symprune
    symprune.calibrate(args["model"], args["out"] + "/stats.safetensors",
                       nsamples=args["nsamples"], seqlen=args["seqlen"], device=args["device"],
                       calibration=args["calib"], progress=False)
elif args["mode"] == "forward":
    from transformers import AutoModelForCausalLM
    from symprune.calibration.pipeline import calibration_ids
    from symprune.spec import Calibration
    model = AutoModelForCausalLM.from_pretrained(args["model"]).to(args["device"]).eval()
    ids = calibration_ids(args["model"], Calibration(source=args["calib"],
                          nsamples=args["nsamples"], seqlen=args["seqlen"]))
    with torch.no_grad():
        for c in range(0, len(ids), 8):
            model(ids[c:c + 8].to(args["device"]))
print(json.dumps({"seconds": time.perf_counter() - t0,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(mode: str, **kw) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps({"mode": mode, **kw})],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def deep_copy_of(model_dir: Path, folder: Path, factor: int) -> Path:
    """A random Llama with SmolLM2's width and ``factor`` × its depth (plus its tokenizer)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    config.num_hidden_layers *= factor
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    for f in model_dir.iterdir():
        if f.name.startswith("tokenizer"):
            shutil.copy(f, folder / f.name)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    from symprune import data

    base = data.builtin_model()
    common = dict(nsamples=args.nsamples, seqlen=args.seqlen, device=args.device, calib="builtin")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        deep = deep_copy_of(base, tmp / "deep", 2)
        print("| model | layers | way | wall s | peak RSS MiB | streamed / whole RSS |")
        print("|---|---|---|---|---|---|")
        for name, model, layers in (("SmolLM2-135M", base, 30), ("synthetic 2x depth", deep, 60)):
            res = {}
            for mode in ("streamed", "whole"):
                out = tmp / f"{mode}-{layers}"
                res[mode] = run(mode, model=str(model), out=str(out), **common)
                shutil.rmtree(out, ignore_errors=True)
            ratio = res["streamed"]["peak_rss_mb"] / res["whole"]["peak_rss_mb"]
            for mode in ("streamed", "whole"):
                r = res[mode]
                print(
                    f"| {name} | {layers} | {mode} | {r['seconds']:.1f} "
                    f"| {r['peak_rss_mb']:.0f} | {ratio:.2f} |"
                )
        (tmp / "c").mkdir()
        calib = run("calib", model=str(base), out=str(tmp / "c"), **common)
        fwd = run("forward", model=str(base), out=str(tmp / "c"), **common)
        print(
            f"\ncalibration (statistics of all 210 linears, streamed): {calib['seconds']:.1f} s;"
            f" plain whole-model forward of the same tokens: {fwd['seconds']:.1f} s;"
            f" overhead {calib['seconds'] / fwd['seconds']:.2f}x"
        )


if __name__ == "__main__":
    main()
