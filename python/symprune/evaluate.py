"""Perplexity exactly as methods.md §8, streaming the model layer by layer.

Tokenize the whole test text once, cut it into non-overlapping windows of
``seqlen`` tokens (remainder dropped, optionally only the first K), take the
mean token cross-entropy of each window, and report ``exp`` of the mean over
windows. The model is never held whole: each decoder layer is materialized from
the checkpoint while all windows pass through it.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from symprune import data
from symprune.streaming import StreamedModel


def test_ids(model_dir: Path, text: str, seqlen: int, max_windows: int | None) -> torch.Tensor:
    ids = data.token_ids(model_dir, text)
    return torch.tensor(data.test_windows(ids, seqlen, max_windows))


@torch.no_grad()
def window_losses(model: StreamedModel, windows: torch.Tensor, batch_size: int = 8) -> list[float]:
    """Mean token cross-entropy of every window, streaming the layers once."""
    chunks = [windows[i : i + batch_size] for i in range(0, len(windows), batch_size)]
    captured = [model.capture(c) for c in chunks]
    acts = [c.hidden for c in captured]
    for i in range(model.num_layers):
        model.load_layer(i)
        acts = [model.run_layer(i, h, c) for h, c in zip(acts, captured, strict=True)]
        model.free_layer(i)
    losses: list[float] = []
    for chunk, hidden in zip(chunks, acts, strict=True):
        logits = model.logits(chunk, hidden).float()
        target = chunk.to(logits.device)[:, 1:]
        ce = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none"
        )
        losses += ce.view(len(chunk), -1).mean(dim=1).tolist()
    return losses


def perplexity(
    model: str | Path | None = None,
    *,
    text: str = "builtin",
    seqlen: int = 512,
    max_windows: int | None = None,
    device: str | None = None,
    batch_size: int = 8,
) -> float:
    """Perplexity of a checkpoint directory on the built-in test split or a text file."""
    from symprune.pipeline import default_device

    model_dir = Path(model) if model is not None else data.builtin_model()
    streamed = StreamedModel(model_dir, device or default_device())
    body = data.builtin_corpus().test if text == "builtin" else data.read_text(text)
    windows = test_ids(model_dir, body, seqlen, max_windows)
    losses = window_losses(streamed, windows, batch_size)
    return math.exp(sum(losses) / len(losses))
