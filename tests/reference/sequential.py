"""A plain, whole-model implementation of the sequential protocol (methods.md §8).

Loads the entire model with transformers, records each decoder layer's call
(Wanda's "catcher", with forward pre-hooks), then for each layer in turn runs
the calibration activations through it with hooks on its linears, computes the
numpy reference scores and masks, zeroes the pruned weights in place, and
re-runs the pruned layer to get the next layer's inputs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from reference import scores as ref


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    for path in (
        "model.layers",
        "model.decoder.layers",
        "transformer.h",
        "model.language_model.layers",
    ):
        try:
            return model.get_submodule(path)
        except AttributeError:
            continue
    raise AssertionError(f"unknown layout: {type(model).__name__}")


def is_linear(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"


def weight_out_in(m: nn.Module) -> torch.Tensor:
    return m.weight.data.t() if type(m).__name__ == "Conv1D" else m.weight.data


class _Stop(Exception):
    pass


@torch.no_grad()
def layer_calls(model, layers, chunk):
    """(layer-0 hidden states, [(args, kwargs) per layer]) of one full forward, via pre-hooks."""
    calls = []

    def pre(mod, args, kwargs, last):
        calls.append((args, kwargs))
        if last:
            raise _Stop  # the head is not needed

    last_index = len(layers) - 1
    handles = [
        layer.register_forward_pre_hook(
            lambda m, a, k, last=(i == last_index): pre(m, a, k, last), with_kwargs=True
        )
        for i, layer in enumerate(layers)
    ]
    try:
        model(input_ids=chunk, use_cache=False)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return calls[0][0][0], [(a[1:], k) for a, k in calls]


@torch.no_grad()
def sequential_masks(
    model_dir, windows: torch.Tensor, score: str, *, sparsity=0.5, pattern=None, batch_size=8
) -> dict[str, np.ndarray]:
    """Wanda-style: capture each layer's call once, then prune layer after layer."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.eval()
    layers = decoder_layers(model)
    prefix = next(n for n, m in model.named_modules() if m is layers)
    chunks = [windows[c : c + batch_size] for c in range(0, len(windows), batch_size)]
    captured = [layer_calls(model, layers, c) for c in chunks]
    hidden = [h for h, _ in captured]
    masks = {}
    for i, layer in enumerate(layers):
        linears = {n: m for n, m in layer.named_modules() if is_linear(m)}
        sums = {n: [0.0, 0] for n in linears}

        def hook(args, acc, seqlen=windows.shape[1]):
            x = args[0].reshape(-1, seqlen, args[0].shape[-1])  # OPT flattens tokens
            for s in range(x.shape[0]):
                xs = x[s].double()
                acc[0] = acc[0] + (xs * xs).sum(0)
                acc[1] += 1

        handles = [
            m.register_forward_hook(lambda mod, a, o, acc=sums[n]: hook(a, acc))
            for n, m in linears.items()
        ]

        def run(h, calls, layer=layer, i=i):
            args, kwargs = calls[i]
            out = layer(h, *args, **kwargs)
            return out[0] if isinstance(out, tuple) else out

        for h, (_, calls) in zip(hidden, captured, strict=True):
            run(h, calls)
        for h in handles:
            h.remove()
        for name, m in linears.items():
            w = weight_out_in(m)
            sq = (sums[name][0] / sums[name][1]).float().numpy()
            wn = w.float().numpy()
            s = ref.wanda(wn, sq) if score == "wanda" else ref.ria(wn, sq)
            mask = (
                ref.mask_nm(s, *map(int, pattern.split(":")))
                if pattern
                else ref.mask_per_row(s, sparsity)
            )
            w[torch.from_numpy(mask)] = 0
            masks[f"{prefix}.{i}.{name}.weight"] = mask
        hidden = [run(h, calls) for h, (_, calls) in zip(hidden, captured, strict=True)]
    return masks
