"""Perplexity exactly as docs/methods.md §8.

Tokenize the whole test text once, cut it into non-overlapping windows of
``seqlen`` tokens (remainder dropped, optionally only the first K), take the
mean token cross-entropy of each window, and report ``exp`` of the mean over
windows. The model is never held whole: each decoder layer is materialized
from the checkpoint while all windows pass through it.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from symprune import data
from symprune.calibration.streaming import StreamedModel, default_device
from symprune.errors import InvalidInputError
from symprune.spec import check_count


def test_ids(model_dir: Path, text: str, seqlen: int, max_windows: int | None) -> torch.Tensor:
    ids = data.token_ids(model_dir, text)
    return torch.tensor(data.test_windows(ids, seqlen, max_windows))


@torch.no_grad()
def window_losses(
    model: StreamedModel, windows: torch.Tensor, batch_size: int = 8, progress: bool = False
) -> list[float]:
    """Mean token cross-entropy of every window, streaming the layers once
    (``progress``: a bar over the layers on stderr)."""
    chunks = [windows[i : i + batch_size] for i in range(0, len(windows), batch_size)]
    captured = [model.capture(c) for c in chunks]
    acts = [c.hidden for c in captured]
    label = f"perplexity, {len(windows)} windows of {windows.shape[1]}"
    for i in tqdm(range(model.num_layers), desc=label, unit="layer", disable=not progress):
        model.load_layer(i)
        acts = [model.run_layer(i, h, c) for h, c in zip(acts, captured, strict=True)]
        model.free_layer(i)
    losses: list[float] = []
    for chunk, hidden in zip(chunks, acts, strict=True):
        # The head runs one window at a time: a batch of logits is batch × seqlen ×
        # vocab floats (4 GiB for 8 × 512 with Gemma's 262k vocabulary).
        for k in range(len(chunk)):
            logits = model.logits(chunk[k : k + 1], hidden[k : k + 1])[0].float()
            target = chunk[k, 1:].to(logits.device)
            losses.append(float(F.cross_entropy(logits[:-1], target)))
    return losses


def perplexity(
    model: str | Path | None = None,
    *,
    text: str = "builtin",
    seqlen: int = 512,
    max_windows: int | None = None,
    device: str | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> float:
    """Perplexity of a checkpoint directory (or built-in model name) on the built-in
    test split or a text file: the first ``max_windows`` windows of ``seqlen`` tokens
    (``None``: all)."""

    # A window needs a token and its successor.
    check_count("seqlen", seqlen, minimum=2)
    check_count("max_windows", max_windows, optional=True)
    check_count("batch_size", batch_size)
    model_dir = data.resolve_model(model)
    streamed = StreamedModel(model_dir, default_device(device))
    if streamed.max_positions and seqlen > streamed.max_positions:
        raise InvalidInputError(
            f"seqlen {seqlen} exceeds the model's context of {streamed.max_positions} tokens"
        )
    body = data.builtin_corpus().test if text == "builtin" else data.read_text(text)
    windows = test_ids(model_dir, body, seqlen, max_windows)
    losses = window_losses(streamed, windows, batch_size, progress)
    return math.exp(sum(losses) / len(losses))
