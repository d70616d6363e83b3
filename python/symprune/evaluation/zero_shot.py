"""Zero-shot accuracy through lm-evaluation-harness (the optional ``symprune[eval]``
extra), on the checkpoint through its ``hf`` model class, with the hub switched
off: task data must already be in the local datasets cache, or come from a
local task YAML (``include_path``).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from symprune import data
from symprune.calibration.streaming import default_device
from symprune.errors import InvalidInputError, SymPruneError

# The zero-shot suite of the Wanda / RIA / symmetric-pruning papers.
PAPER_TASKS = ("boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")


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
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise InvalidInputError(
            f"zero-shot tasks {', '.join(map(repr, unknown))}: unknown to lm-eval; name its "
            "tasks (e.g. " + ", ".join(PAPER_TASKS) + ") or tasks of --include-path"
        )
    missing: dict[str, str] = {}
    for task in tasks:
        try:
            manager.load([task])
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
    model_dir = data.resolve_model(model)
    with _hub_offline():
        manager = _task_manager(tasks, include_path)
        _check_tasks(tasks, manager)
        out = lm_eval.simple_evaluate(
            model="hf",
            model_args={"pretrained": str(model_dir), "dtype": "auto"},
            tasks=list(tasks),
            num_fewshot=0,
            batch_size=batch_size,
            device=default_device(device),
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
