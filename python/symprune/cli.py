"""The ``symprune`` command line: argument parsing only, the work is the Python API's.

Each subcommand is an ``add_<name>(subparsers)`` function that declares its
arguments and sets ``run`` to a function of the parsed arguments returning the
exit status; add one to :data:`COMMANDS` to extend the CLI. Every
:class:`~symprune.errors.SymPruneError` ends the command with one line on
stderr and exit status 1, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from symprune import __version__, checkpoint
from symprune.errors import InvalidInputError, SymPruneError


def _calibration_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("calibration (data-aware methods)")
    g.add_argument(
        "--calib",
        default="builtin",
        metavar="builtin|FILE",
        help="calibration text: builtin (Wikipedia), a .txt or a .jsonl file",
    )
    g.add_argument("--nsamples", type=int, help="calibration windows (default 128 GPU, 16 CPU)")
    g.add_argument("--seqlen", type=int, help="tokens per window (default 2048 GPU, 512 CPU)")
    g.add_argument("--seed", type=int, default=0, help="window draw (and stochria) seed")
    g.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    g.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    g.add_argument(
        "--offload-activations",
        action="store_true",
        help="keep calibration activations on the CPU while layers run on the GPU",
    )


def add_prune(sub: Any) -> None:
    p = sub.add_parser(
        "prune",
        help="prune a checkpoint into a new directory (default: the built-in SmolLM2)",
        description="Prune MODEL_DIR (a Hugging Face safetensors checkpoint) into OUT_DIR. "
        "Without arguments, prunes the built-in SmolLM2-135M with CPU-sized defaults and "
        "prints dense vs pruned perplexity. Data-free methods (magnitude, symmetric) and "
        "--stats run shard by shard in Rust; data-aware methods calibrate and prune layer by "
        "layer, streaming from the shards. An interrupted run resumes when started again "
        "with the same arguments.",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", nargs="?", help="default: built-in")
    p.add_argument(
        "out_dir",
        metavar="OUT_DIR",
        nargs="?",
        help="required with MODEL_DIR; default pruned/<model>-<method>-<target>",
    )
    p.add_argument(
        "--method",
        default="wanda",
        help="magnitude, wanda, ria, lp-ria, stochria, "
        "symmetric, symwanda, owanda, sparsegpt (default: wanda)",
    )
    p.add_argument("--sparsity", type=float, default=0.5, help="fraction pruned (default 0.5)")
    p.add_argument("--pattern", metavar="N:M", help="semi-structured N:M instead of --sparsity")
    p.add_argument(
        "--group",
        default="per-row",
        choices=("per-row", "per-matrix", "adaptive"),
        help="comparison group of unstructured sparsity (default: per-row)",
    )
    p.add_argument(
        "--stats",
        metavar="FILE",
        help="activation statistics from `symprune calibrate` (no model load)",
    )
    p.add_argument("--refine", choices=("dsnot", "r2dsnot"), help="mask refinement")
    p.add_argument("--targets", metavar="RE", help="prune only tensors matching RE")
    p.add_argument("--ignore", metavar="RE", help="never prune tensors matching RE")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument(
        "--eval",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="dense vs pruned perplexity (default: on for the built-in model)",
    )
    p.add_argument("--eval-seqlen", type=int, help="perplexity window (default min(seqlen, 512))")
    p.add_argument("--eval-windows", type=int, help="first K test windows (default 32 on CPU)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=sys.stderr.isatty(),
        help="progress bars on stderr (default: when stderr is a terminal)",
    )
    _calibration_args(p)
    params = p.add_argument_group("method parameters")
    params.add_argument("--a", type=float, help="RIA activation exponent (default 0.5)")
    params.add_argument("--p", type=float, help="lp-ria norm (default 1)")
    params.add_argument("--beta", type=float, help="stochria subset fraction (default 0.1)")
    params.add_argument("--lam", type=float, help="symwanda output-side weight (default 1)")
    params.add_argument(
        "--no-activation",
        dest="activation",
        action="store_false",
        default=None,
        help="stochria without the activation factor",
    )
    params.add_argument("--blocksize", type=int, help="sparsegpt block (default 128)")
    params.add_argument("--percdamp", type=float, help="sparsegpt damping (default 0.01)")
    refine = p.add_argument_group("refinement parameters (--refine)")
    refine.add_argument("--max-cycles", type=int, help="default 50")
    refine.add_argument("--threshold", type=float, help="default 0.1 (units of seqlen x mean)")
    refine.add_argument("--var-power", type=float, help="default 1")
    refine.add_argument(
        "--same-sign",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="DSnoT: off unstructured / on N:M; R2-DSnoT: on",
    )
    refine.add_argument("--ri-phase", choices=("prune", "grow", "none"), help="R2-DSnoT")
    refine.add_argument("--alpha", type=float, help="R2-DSnoT prune-score exponent")
    refine.add_argument("--gamma", type=float, help="R2-DSnoT regularization weight")
    refine.add_argument("--refine-p", type=float, help="R2-DSnoT penalty norm p")
    refine.add_argument("--on-reject", choices=("stop", "skip"), help="R2-DSnoT")
    scale = p.add_argument_group(
        "shard-parallel pruning without torch.distributed (data-free methods, --stats); "
        "under torchrun the ranks come from its environment and rank 0 finishes the output"
    )
    scale.add_argument(
        "--world-size",
        type=int,
        metavar="N",
        help="split the shards among N processes; then run `symprune finalize OUT_DIR`",
    )
    scale.add_argument(
        "--rank", type=int, metavar="R", help="this process prunes the shards k with k %% N == R"
    )
    p.set_defaults(run=run_prune)


_METHOD_PARAMS = ("a", "p", "beta", "lam", "activation", "blocksize", "percdamp")
_REFINE_PARAMS = {
    "max_cycles": "max_cycles",
    "threshold": "threshold",
    "var_power": "var_power",
    "same_sign": "same_sign",
    "ri_phase": "ri_phase",
    "alpha": "alpha",
    "gamma": "gamma",
    "refine_p": "p",
    "on_reject": "on_reject",
}


def prune_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`symprune.prune`."""
    from symprune import methods

    params = {k: getattr(args, k) for k in _METHOD_PARAMS if getattr(args, k) is not None}
    if args.method == "stochria" or "seed" in params:
        params["seed"] = args.seed
    if args.method not in methods.METHODS:
        methods.get(args.method)  # raises with the list of methods
    return {
        "method": args.method,
        "sparsity": args.sparsity,
        "pattern": args.pattern,
        "group": args.group,
        "refine": args.refine,
        "refine_params": {
            v: getattr(args, k) for k, v in _REFINE_PARAMS.items() if getattr(args, k) is not None
        },
        "calibration": args.calib,
        "nsamples": args.nsamples,
        "seqlen": args.seqlen,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "stats": args.stats,
        "device": args.device,
        "offload_activations": args.offload_activations,
        "targets": args.targets,
        "ignore": args.ignore,
        "overwrite": args.overwrite,
        "evaluate": args.eval
        if args.eval is not None
        else args.model_dir is None and args.world_size is None,
        "eval_seqlen": args.eval_seqlen,
        "eval_windows": args.eval_windows,
        "progress": args.progress,
        "rank": args.rank,
        "world_size": args.world_size,
        **params,
    }


def run_prune(args: argparse.Namespace) -> int:
    from symprune import api

    if args.model_dir is not None and args.out_dir is None:
        raise InvalidInputError("OUT_DIR is required with MODEL_DIR (an output directory)")
    from symprune.distributed import launched_rank

    report = api.prune(args.model_dir, args.out_dir, **prune_options(args))
    if args.world_size is None and launched_rank() != 0:
        return 0  # under torchrun, rank 0 reports the finished checkpoint
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
    if args.world_size is not None:
        print(
            f"part {args.rank} of {args.world_size} done; once every rank is: "
            f"symprune finalize {report.output}",
            file=sys.stderr,
        )
    return 0


def add_calibrate(sub: Any) -> None:
    p = sub.add_parser(
        "calibrate",
        help="store a model's activation statistics for pruning later with --stats",
        description="Run the calibration windows through MODEL_DIR layer by layer (dense) and "
        "store the statistics of every linear (in_sq, sum, var, out_sq) in a safetensors file.",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", nargs="?", help="default: built-in")
    p.add_argument("--out", default="stats.safetensors", help="output file")
    p.add_argument("--targets", metavar="RE", help="only linears matching RE")
    p.add_argument("--ignore", metavar="RE", help="not linears matching RE")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty())
    _calibration_args(p)
    p.set_defaults(run=run_calibrate)


def run_calibrate(args: argparse.Namespace) -> int:
    from symprune import api

    out = api.calibrate(
        args.model_dir,
        args.out,
        calibration=args.calib,
        nsamples=args.nsamples,
        seqlen=args.seqlen,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
        targets=args.targets,
        ignore=args.ignore,
        progress=args.progress,
    )
    from symprune.distributed import launched_rank

    if launched_rank() == 0:
        print(f"statistics written to {out}")
    return 0


def add_inspect(sub: Any) -> None:
    p = sub.add_parser(
        "inspect",
        help="per-tensor sparsity of a checkpoint",
        description="Per-tensor sparsity (fraction of exact zeros) of a safetensors checkpoint; "
        "tensors pruned by default are marked with *.",
    )
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--pattern", metavar="N:M", help="also check an N:M pattern")
    p.add_argument("--targets", metavar="RE", action="append", help="what counts as selected")
    p.add_argument("--ignore", metavar="RE", action="append", help="what does not")
    p.set_defaults(run=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    result = checkpoint.inspect(
        args.dir, pattern=args.pattern, targets=args.targets, ignore=args.ignore
    )
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.table())
    return 0


def add_finalize(sub: Any) -> None:
    p = sub.add_parser(
        "finalize",
        help="finish the output of a shard-parallel prune (--world-size/--rank)",
        description="Once every rank of `symprune prune MODEL_DIR OUT_DIR --world-size N "
        "--rank R` is done, copy the non-weight files into OUT_DIR and write the index and "
        "sparsity.json; otherwise name the shards still missing and their ranks. The ranks "
        "must have written to the same OUT_DIR (a shared filesystem) from the same MODEL_DIR. "
        "Under torchrun, rank 0 does this itself.",
    )
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run_finalize)


def run_finalize(args: argparse.Namespace) -> int:
    done = checkpoint.finalize(args.out_dir)
    print(json.dumps(done.to_dict(), indent=2) if args.json else done.summary())
    return 0


def _names(text: str) -> list[str]:
    """A comma-separated list, e.g. ``wanda,ria``."""
    return [t.strip() for t in text.split(",") if t.strip()]


def add_eval(sub: Any) -> None:
    p = sub.add_parser(
        "eval",
        help="perplexity (and zero-shot accuracy) of a checkpoint, pruned or not",
        description="Perplexity of MODEL_DIR (any Hugging Face causal LM folder; default: the "
        "built-in SmolLM2) exactly as methods.md §8: non-overlapping windows of the test text, "
        "mean token cross-entropy per window, exp of the mean; the model streams layer by "
        "layer. --tasks adds zero-shot accuracy through lm-evaluation-harness (pip install "
        "'symprune[eval]'), without hub access: task data must be in the local datasets "
        "cache or described by a local task YAML (--include-path).",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", nargs="?", help="default: built-in")
    p.add_argument(
        "--text",
        default="builtin",
        metavar="builtin|FILE",
        help="test text: builtin (the Wikipedia test split), a .txt or a .jsonl file",
    )
    p.add_argument("--seqlen", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument("--max-windows", type=int, metavar="K", help="only the first K windows")
    p.add_argument(
        "--perplexity",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compute perplexity (default: on)",
    )
    p.add_argument(
        "--tasks",
        type=_names,
        default=[],
        metavar="T1,T2",
        help="lm-eval tasks, e.g. boolq,rte,hellaswag,winogrande,arc_easy,arc_challenge,openbookqa",
    )
    p.add_argument("--include-path", metavar="DIR", help="folder of extra lm-eval task YAMLs")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N items of each task")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=8, help="windows (or requests) per pass")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from symprune.evaluate import evaluate_model

    if not args.perplexity and not args.tasks:
        raise InvalidInputError("nothing to evaluate: --no-perplexity needs --tasks")
    result = evaluate_model(
        args.model_dir,
        text=args.text,
        seqlen=args.seqlen,
        max_windows=args.max_windows,
        tasks=args.tasks,
        include_path=args.include_path,
        limit=args.limit,
        with_perplexity=args.perplexity,
        device=args.device,
        batch_size=args.batch_size,
    )
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.summary())
    return 0


def add_report(sub: Any) -> None:
    from symprune import report

    p = sub.add_parser(
        "report",
        help="run the reproduction grid and write a Markdown table and plots",
        description="Prune and evaluate every cell of models × methods × patterns × refine "
        "(default: the full grid on SmolLM2-135M and Gemma-3-270M), caching each result "
        "under --out/cells so that an interrupted run continues; then write --out/results.md "
        "and PNG plots. Pruned checkpoints go to a temporary folder and are deleted after "
        "evaluation unless --keep. Needs matplotlib (pip install 'symprune[report]').",
    )
    p.add_argument("--out", default="report", help="output folder (default: report)")
    p.add_argument(
        "--models",
        type=_names,
        default=list(report.MODELS),
        metavar="M1,M2",
        help="built-in names or checkpoint folders (default: " + ",".join(report.MODELS) + ")",
    )
    p.add_argument(
        "--methods",
        type=_names,
        default=list(report.METHODS),
        metavar="M1,M2",
        help="default: " + ",".join(report.METHODS),
    )
    p.add_argument(
        "--patterns",
        type=_names,
        default=list(report.TARGETS),
        metavar="P1,P2",
        help="unstructured sparsities (50%%) and N:M patterns (2:4); default: "
        + ",".join(report.TARGETS).replace("%", "%%"),
    )
    p.add_argument(
        "--refine",
        type=_names,
        default=list(report.REFINES),
        metavar="R1,R2",
        help="none, dsnot, r2dsnot (default: all three)",
    )
    p.add_argument("--nsamples", type=int, help="calibration windows (default 128 GPU, 16 CPU)")
    p.add_argument("--seqlen", type=int, help="calibration tokens (default 2048 GPU, 512 CPU)")
    p.add_argument("--seed", type=int, default=0, help="calibration draw seed")
    p.add_argument("--eval-seqlen", type=int, help="perplexity window (default min(seqlen, 512))")
    p.add_argument("--eval-windows", type=int, help="first K test windows (default 32 on CPU)")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    p.add_argument("--keep", action="store_true", help="keep the pruned checkpoints")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="per-layer progress bars on stderr (default: off; one line per cell)",
    )
    p.add_argument("--json", action="store_true", help="print the written paths as JSON")
    p.set_defaults(run=run_report)


def run_report(args: argparse.Namespace) -> int:
    from symprune import report

    files = report.run_report(
        args.out,
        models=args.models,
        methods=args.methods,
        targets=args.patterns,
        refines=args.refine,
        nsamples=args.nsamples,
        seqlen=args.seqlen,
        eval_seqlen=args.eval_seqlen,
        eval_windows=args.eval_windows,
        seed=args.seed,
        device=args.device,
        batch_size=args.batch_size,
        keep=args.keep,
        progress=args.progress,
    )
    if args.json:
        print(json.dumps(files.to_dict(), indent=2))
    else:
        print(f"{files.cells} cells; table: {files.table}")
        print("plots: " + ", ".join(str(p) for p in files.plots))
    return 0


COMMANDS: list[Callable[[Any], None]] = [
    add_prune,
    add_calibrate,
    add_inspect,
    add_finalize,
    add_eval,
    add_report,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="symprune", description="Fast, memory-lean post-training pruning of LLMs."
    )
    parser.add_argument("--version", action="version", version=f"symprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except SymPruneError as e:
        print("symprune: error: " + " ".join(str(e).split()), file=sys.stderr)
        return 1
    except BrokenPipeError:
        # Whoever read stdout (e.g. `head`) stopped early: not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("symprune: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
