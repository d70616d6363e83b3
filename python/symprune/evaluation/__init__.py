"""Evaluation of a checkpoint: streamed perplexity (:mod:`.perplexity`) and
zero-shot accuracy through lm-eval (:mod:`.zero_shot`), combined by
:func:`evaluate_model` for ``symprune eval``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from symprune import data
from symprune.calibration.streaming import default_device
from symprune.evaluation.perplexity import perplexity as streamed_perplexity
from symprune.evaluation.zero_shot import zero_shot as zero_shot_accuracy
from symprune.spec import check_count


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
    progress: bool = False,
) -> EvalResult:
    """Perplexity (streamed) and, when ``tasks`` are given, zero-shot accuracy of a checkpoint."""

    t0 = time.perf_counter()
    model_dir = data.resolve_model(model)
    device = default_device(device)
    check_count("limit", limit, optional=True)
    result = EvalResult(str(model_dir), device, text, seqlen, max_windows)
    # Tasks first: a task whose data is missing fails before the perplexity pass.
    if tasks:
        result.tasks = zero_shot_accuracy(
            model_dir,
            tasks,
            include_path=include_path,
            limit=limit,
            device=device,
            batch_size=batch_size,
        )
    if with_perplexity:
        result.perplexity = streamed_perplexity(
            model_dir,
            text=text,
            seqlen=seqlen,
            max_windows=max_windows,
            device=device,
            batch_size=batch_size,
            progress=progress,
        )
    result.seconds = time.perf_counter() - t0
    return result
