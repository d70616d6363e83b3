"""Evaluation: perplexity exactly as methods.md §8, and zero-shot accuracy through lm-eval.

Perplexity: tokenize the whole test text once, cut it into non-overlapping
windows of ``seqlen`` tokens (remainder dropped, optionally only the first K),
take the mean token cross-entropy of each window, and report ``exp`` of the
mean over windows. The model is never held whole: each decoder layer is
materialized from the checkpoint while all windows pass through it.

Zero-shot accuracy runs lm-evaluation-harness (the optional ``symprune[eval]``
extra) on the checkpoint through its ``hf`` model class, with the hub switched
off: task data must already be in the local datasets cache, or come from a
local task YAML (``include_path``).
"""

from __future__ import annotations

import importlib
import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from symprune import data
from symprune.errors import InvalidInputError, SymPruneError
from symprune.streaming import StreamedModel, default_device

# The zero-shot suite of the Wanda / RIA / symmetric-pruning papers.
PAPER_TASKS = ("boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")


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
) -> float:
    """Perplexity of a checkpoint directory on the built-in test split or a text file."""

    if seqlen < 2:
        raise InvalidInputError(f"seqlen: {seqlen} must be at least 2 (a token and its successor)")
    if max_windows is not None and max_windows < 1:
        raise InvalidInputError(f"max_windows: {max_windows} must be at least 1 (or None: all)")
    if batch_size < 1:
        raise InvalidInputError(f"batch_size: {batch_size} must be at least 1")
    model_dir = Path(model) if model is not None else data.builtin_model()
    streamed = StreamedModel(model_dir, device or default_device())
    if streamed.max_positions and seqlen > streamed.max_positions:
        raise InvalidInputError(
            f"seqlen {seqlen} exceeds the model's context of {streamed.max_positions} tokens"
        )
    body = data.builtin_corpus().test if text == "builtin" else data.read_text(text)
    windows = test_ids(model_dir, body, seqlen, max_windows)
    losses = window_losses(streamed, windows, batch_size)
    return math.exp(sum(losses) / len(losses))


def _import_lm_eval() -> Any:
    try:
        return importlib.import_module("lm_eval")
    except ImportError as e:
        raise SymPruneError(
            "zero-shot tasks need lm-evaluation-harness, which is not installed "
            f"({e}); install it with: pip install 'symprune[eval]' (lm-eval>=0.4)"
        ) from e


@contextmanager
def _hub_offline() -> Iterator[None]:
    """No hub access while lm-eval runs: task data and model must be local.

    datasets and huggingface_hub read ``HF_DATASETS_OFFLINE`` / ``HF_HUB_OFFLINE``
    once, at import; a process that imported them already (transformers does)
    needs their module flags set as well.
    """
    import datasets.config
    import huggingface_hub.constants

    flags = [
        (os.environ, "HF_HUB_OFFLINE", "1"),
        (os.environ, "HF_DATASETS_OFFLINE", "1"),
        (vars(huggingface_hub.constants), "HF_HUB_OFFLINE", True),
        (vars(datasets.config), "HF_HUB_OFFLINE", True),
        (vars(datasets.config), "HF_DATASETS_OFFLINE", True),
    ]
    saved = [(where, name, where.get(name)) for where, name, _ in flags]
    for where, name, value in flags:
        where[name] = value
    try:
        yield
    finally:
        for where, name, value in saved:
            if value is None:
                where.pop(name, None)
            else:
                where[name] = value


def _task_manager(tasks: Sequence[str], include_path: str | Path | None) -> Any:
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        if not Path(include_path).exists():
            raise InvalidInputError(f"include_path: {include_path} does not exist")
        # Indexing lm-eval's thousands of bundled task files takes seconds; skip
        # it when the local folder has every requested task.
        local = TaskManager(include_path=str(include_path), include_defaults=False)
        if all(t in local.all_tasks for t in tasks):
            return local
        return TaskManager(include_path=str(include_path))
    return TaskManager()


def _check_tasks(tasks: Sequence[str], manager: Any) -> None:
    """Loads every task's data once, so that missing data fails before the model loads.

    Every task is tried, so one message names all that are missing.
    """
    from lm_eval.tasks import get_task_dict

    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise InvalidInputError(
            f"zero-shot tasks {', '.join(map(repr, unknown))}: unknown to lm-eval; name its "
            "tasks (e.g. " + ", ".join(PAPER_TASKS) + ") or tasks of --include-path"
        )
    missing: dict[str, str] = {}
    for task in tasks:
        try:
            get_task_dict([task], manager)
        except (OSError, ValueError) as e:
            missing[task] = " ".join(str(e).split())[:200]
    if missing:
        said = "; ".join(f"{t}: {why}" for t, why in missing.items())
        raise SymPruneError(
            f"zero-shot tasks {', '.join(map(repr, missing))}: data not available locally "
            f"(lm-eval said: {said}); there is no hub access (HF_DATASETS_OFFLINE), so put "
            "the datasets into the datasets cache (HF_DATASETS_CACHE) on a machine with hub "
            "access first, or describe a local copy with a task YAML (dataset_path: json) "
            "in --include-path"
        )


def zero_shot(
    model: str | Path | None,
    tasks: Sequence[str],
    *,
    include_path: str | Path | None = None,
    limit: int | None = None,
    device: str | None = None,
    batch_size: int = 8,
) -> dict[str, dict[str, float]]:
    """Zero-shot metrics per task (``{"boolq": {"acc": ..., "acc_stderr": ...}}``).

    ``model`` is any HF causal LM folder (None = the built-in SmolLM2), loaded
    whole by lm-eval's ``hf`` model class; ``include_path`` adds local task
    YAMLs; ``limit`` evaluates only the first items of each task (quick checks).
    """

    lm_eval = _import_lm_eval()
    model_dir = Path(model) if model is not None else data.builtin_model()
    with _hub_offline():
        manager = _task_manager(tasks, include_path)
        _check_tasks(tasks, manager)
        out = lm_eval.simple_evaluate(
            model="hf",
            model_args={"pretrained": str(model_dir), "dtype": "auto"},
            tasks=list(tasks),
            num_fewshot=0,
            batch_size=batch_size,
            device=device or default_device(),
            limit=limit,
            task_manager=manager,
            log_samples=False,
        )
    results: dict[str, dict[str, float]] = {}
    for task, metrics in out["results"].items():
        # lm-eval names metrics "acc,none" (metric, filter); keep the numbers.
        results[task] = {
            key.replace(",none", "").replace(",", "/"): float(value)
            for key, value in metrics.items()
            if isinstance(value, int | float) and key != "sample_len"
        }
    return results


@dataclass
class EvalResult:
    """What ``symprune eval`` measured on one checkpoint."""

    model: str
    device: str
    text: str
    seqlen: int
    max_windows: int | None
    perplexity: float | None = None
    tasks: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        rows = [("model", self.model)]
        if self.perplexity is not None:
            windows = "all" if self.max_windows is None else f"first {self.max_windows}"
            rows.append(
                (
                    "perplexity",
                    f"{self.perplexity:.4f} ({self.text}, {windows} windows of {self.seqlen})",
                )
            )
        for task, metrics in self.tasks.items():
            shown = [
                f"{name} {value:.4f}"
                + (f" ± {metrics[name + '_stderr']:.4f}" if name + "_stderr" in metrics else "")
                for name, value in metrics.items()
                if not name.endswith("_stderr")
            ]
            rows.append((task, ", ".join(shown)))
        rows.append(("seconds", f"{self.seconds:.1f} on {self.device}"))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def evaluate_model(
    model: str | Path | None = None,
    *,
    text: str = "builtin",
    seqlen: int = 512,
    max_windows: int | None = None,
    tasks: Sequence[str] = (),
    include_path: str | Path | None = None,
    limit: int | None = None,
    with_perplexity: bool = True,
    device: str | None = None,
    batch_size: int = 8,
) -> EvalResult:
    """Perplexity (streamed) and, when ``tasks`` are given, zero-shot accuracy of a checkpoint."""

    t0 = time.perf_counter()
    model_dir = Path(model) if model is not None else data.builtin_model()
    device = device or default_device()
    result = EvalResult(str(model_dir), device, text, seqlen, max_windows)
    # Tasks first: a task whose data is missing fails before the perplexity pass.
    if tasks:
        result.tasks = zero_shot(
            model_dir,
            tasks,
            include_path=include_path,
            limit=limit,
            device=device,
            batch_size=batch_size,
        )
    if with_perplexity:
        result.perplexity = perplexity(
            model_dir,
            text=text,
            seqlen=seqlen,
            max_windows=max_windows,
            device=device,
            batch_size=batch_size,
        )
    result.seconds = time.perf_counter() - t0
    return result
