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
from typing import Any, NoReturn

from symprune import __version__, checkpoint, data, spec
from symprune.errors import InvalidInputError, SymPruneError
from symprune.spec import PruneSpec
from symprune.util import launched_rank


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors as one line on stderr, like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


MODEL_HELP = "a checkpoint folder or a built-in model (" + ", ".join(data.MODELS) + "); default: "
MODEL_HELP += data.DEFAULT_MODEL


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
    g.add_argument(
        "--seed", type=int, default=0, help="window draw seed (also stochria's, unless --param)"
    )
    g.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    g.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    g.add_argument(
        "--offload-activations",
        action="store_true",
        help="keep calibration activations on the CPU while layers run on the GPU",
    )


def _progress_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=sys.stderr.isatty(),
        help="progress bars on stderr (default: when stderr is a terminal)",
    )


def _selection_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--targets", metavar="RE", help=f"{what} only tensors matching RE")
    p.add_argument("--ignore", metavar="RE", help=f"never {what} tensors matching RE")


def _param(text: str) -> tuple[str, Any]:
    try:
        return spec.parse_param(text)
    except InvalidInputError as bad:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE") from bad


def _schema_help(owners: dict[str, Any]) -> str:
    """One line per method (or refiner) with its parameters and defaults, from the core."""
    lines = []
    for name, info in owners.items():
        params = ", ".join(
            f"{p['name']}={'(auto)' if p['default'] is None else p['default']}"
            + (f" [{'|'.join(p['choices'])}]" if p["choices"] else "")
            for p in info["parameters"]
        )
        lines.append(f"{name}: {params or 'no parameters'}")
    return "; ".join(lines).replace("%", "%%")


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
    p.add_argument("model_dir", metavar="MODEL_DIR", nargs="?", help=MODEL_HELP)
    p.add_argument(
        "out_dir",
        metavar="OUT_DIR",
        nargs="?",
        help="required with a folder; for a built-in model the default is "
        "pruned/<model>-<method>-<target>[-<save format>], replaced when run again",
    )
    p.add_argument(
        "--method",
        choices=spec.METHODS,
        default=spec.VOCABULARY["default_method"],
        help="default: %(default)s",
    )
    p.add_argument(
        "--sparsity",
        type=float,
        help=f"fraction pruned (default {spec.VOCABULARY['default_sparsity']})",
    )
    p.add_argument(
        "--pattern",
        metavar="|".join(spec.PATTERNS),
        help=f"comparison group, or N:M such as 2:4 (default {spec.VOCABULARY['default_pattern']})",
    )
    p.add_argument(
        "--stats",
        metavar="FILE",
        help="activation statistics from `symprune calibrate` (no model load; "
        "--refine swaps and decision=exact need `calibrate --gram`)",
    )
    p.add_argument("--refine", choices=spec.REFINERS, help="mask refinement")
    _selection_args(p, "prune")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument(
        "--save-format",
        choices=spec.SAVE_FORMATS,
        default=spec.DEFAULT_SAVE_FORMAT,
        help="dense, or a compressed-tensors sparse format that transformers and vLLM load "
        "(sparse-24-bitmask for 2:4); default %(default)s",
    )
    p.add_argument(
        "--eval",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="dense vs pruned perplexity (default: on for the built-in model)",
    )
    p.add_argument("--eval-seqlen", type=int, help="perplexity window (default min(seqlen, 512))")
    p.add_argument("--eval-windows", type=int, help="first K test windows (default 32 on CPU)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _progress_arg(p)
    _calibration_args(p)
    params = p.add_argument_group("method and refinement parameters")
    for flag, owners, what in (
        ("--param", "methods", "a method"),
        ("--refine-param", "refiners", "a refinement"),
    ):
        params.add_argument(
            flag,
            type=_param,
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help=f"{what} parameter (repeatable); " + _schema_help(spec.VOCABULARY[owners]),
        )
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


def prune_spec(args: argparse.Namespace) -> PruneSpec:
    """The request of ``symprune prune``: the method, its target, refinement and selection.

    ``--seed`` also seeds a method that takes a ``seed`` parameter (stochria) unless
    ``--param seed=...`` says otherwise.
    """
    params = dict(args.param)
    takes_seed = any(p["name"] == "seed" for p in spec.method_info(args.method)["parameters"])
    if takes_seed:
        params.setdefault("seed", args.seed)
    return PruneSpec(
        method=args.method,
        params=params,
        sparsity=args.sparsity,
        pattern=args.pattern,
        refine=args.refine,
        refine_params=dict(args.refine_param),
        targets=args.targets,
        ignore=args.ignore,
    )


def run_prune(args: argparse.Namespace) -> int:
    from symprune import api

    request = prune_spec(args)
    builtin = data.builtin_name(args.model_dir)
    if args.out_dir is None:
        if builtin is None:
            raise InvalidInputError(
                f"OUT_DIR is required with the folder {args.model_dir} (an output directory)"
            )
        default = api.default_output(request, builtin, args.save_format)
        if default.exists() and launched_rank() == 0:
            print(f"symprune: replacing the earlier default output {default}", file=sys.stderr)
    evaluate = args.eval if args.eval is not None else builtin is not None
    report = api.prune(
        args.model_dir,
        args.out_dir,
        spec=request,
        calibration=args.calib,
        nsamples=args.nsamples,
        seqlen=args.seqlen,
        seed=args.seed,
        batch_size=args.batch_size,
        stats=args.stats,
        device=args.device,
        offload_activations=args.offload_activations,
        overwrite=args.overwrite,
        save_format=args.save_format,
        evaluate=evaluate and args.world_size is None,
        eval_seqlen=args.eval_seqlen,
        eval_windows=args.eval_windows,
        progress=args.progress,
        rank=args.rank,
        world_size=args.world_size,
    )
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
    p.add_argument("model_dir", metavar="MODEL_DIR", nargs="?", help=MODEL_HELP)
    p.add_argument("--out", default="stats.safetensors", help="output file")
    p.add_argument(
        "--gram",
        action="store_true",
        help="also store each linear's Gram matrix X^T X (in x in float32), which "
        "`prune --stats` needs to refine with swaps or r2dsnot decision=exact",
    )
    _selection_args(p, "calibrate")
    _progress_arg(p)
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
        gram=args.gram,
        progress=args.progress,
    )
    if launched_rank() == 0:
        print(f"statistics written to {out}")
    return 0


def add_inspect(sub: Any) -> None:
    p = sub.add_parser(
        "inspect",
        help="per-tensor sparsity of a checkpoint",
        description="Per-tensor sparsity (fraction of exact zeros) of a safetensors checkpoint, "
        "dense or compressed-tensors sparse (its weights under their dense names, read from "
        "the bitmasks); tensors pruned by default are marked with *.",
    )
    p.add_argument("dir", metavar="DIR", help=MODEL_HELP.split("; ")[0])
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--pattern", metavar="N:M", help="also check an N:M pattern")
    p.add_argument("--targets", metavar="RE", action="append", help="what counts as selected")
    p.add_argument("--ignore", metavar="RE", action="append", help="what does not")
    p.set_defaults(run=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    result = checkpoint.inspect(
        data.resolve_model(args.dir), pattern=args.pattern, targets=args.targets, ignore=args.ignore
    )
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.table())
    if result.nm_ok is False:
        print(
            f"symprune: error: {args.pattern} does not hold on every selected tensor "
            "(the table names the tensors that break it)",
            file=sys.stderr,
        )
        return 1
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


def _windows(text: str) -> int | str:
    """``K`` or ``all`` (``None``, the option's absence, is "the default")."""
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number or all") from None


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
    p.add_argument("model_dir", metavar="MODEL_DIR", nargs="?", help=MODEL_HELP)
    p.add_argument(
        "--text",
        default="builtin",
        metavar="builtin|FILE",
        help="test text: builtin (the Wikipedia test split), a .txt or a .jsonl file",
    )
    p.add_argument("--seqlen", type=int, help="tokens per window (default 512)")
    p.add_argument(
        "--max-windows",
        type=_windows,
        metavar="K|all",
        help="only the first K windows (default: as symprune prune, all on a GPU, 32 on the CPU)",
    )
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
    _progress_arg(p)
    p.set_defaults(run=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from symprune.calibration.streaming import default_device
    from symprune.evaluation import evaluate_model

    if not args.perplexity and not args.tasks:
        raise InvalidInputError("nothing to evaluate: --no-perplexity needs --tasks")
    device = default_device(args.device)
    every = args.max_windows == "all"
    spec.check_count("seqlen", args.seqlen, minimum=2, optional=True)
    spec.check_count("max_windows", None if every else args.max_windows, optional=True)
    seqlen, windows = spec.evaluation_windows(
        device, None, args.seqlen, None if every else args.max_windows
    )
    result = evaluate_model(
        args.model_dir,
        text=args.text,
        seqlen=seqlen,
        max_windows=None if every else windows,
        tasks=args.tasks,
        include_path=args.include_path,
        limit=args.limit,
        with_perplexity=args.perplexity,
        device=device,
        batch_size=args.batch_size,
        progress=args.progress,
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
        help="none or a refinement, with its parameters as NAME:P=V;P=V (e.g. "
        "r2dsnot:decision=exact); default: " + ",".join(report.REFINES),
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


def add_compress(sub: Any) -> None:
    p = sub.add_parser(
        "compress",
        help="store a pruned checkpoint in a compressed-tensors sparse format",
        description="Write the pruned checkpoint IN into OUT in a compressed-tensors sparse "
        "format, shard by shard without loading the model. The tensors compressed are those "
        "pruning selects (--targets/--ignore as for prune); one the format cannot hold is "
        "written dense, listed in the config's ignore and in the summary. A run stopped "
        "midway resumes when run again with the same arguments.",
    )
    p.add_argument("input", metavar="IN")
    p.add_argument("output", metavar="OUT")
    p.add_argument(
        "--format",
        choices=checkpoint.COMPRESSED_FORMATS,
        default=checkpoint.DEFAULT_COMPRESSED_FORMAT,
        help="sparse-bitmask (any sparsity) or sparse-24-bitmask (2:4); default %(default)s",
    )
    p.add_argument("--targets", metavar="RE", action="append", help="compress only these")
    p.add_argument("--ignore", metavar="RE", action="append", help="never compress these")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run_compress)


def run_compress(args: argparse.Namespace) -> int:
    done = checkpoint.compress(
        args.input,
        args.output,
        args.format,
        targets=args.targets,
        ignore=args.ignore,
        progress=sys.stderr.isatty(),
    )
    print(json.dumps(done.to_dict(), indent=2) if args.json else done.summary())
    return 0


def add_decompress(sub: Any) -> None:
    p = sub.add_parser(
        "decompress",
        help="turn a compressed-tensors sparse checkpoint back into a dense one",
        description="Write the sparse-bitmask or sparse-24-bitmask checkpoint IN into OUT as "
        "a dense checkpoint, shard by shard; what `symprune compress` wrote comes back byte "
        "for byte. A run stopped midway resumes when run again.",
    )
    p.add_argument("input", metavar="IN")
    p.add_argument("output", metavar="OUT")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run_decompress)


def run_decompress(args: argparse.Namespace) -> int:
    done = checkpoint.decompress(args.input, args.output)
    print(json.dumps(done.to_dict(), indent=2) if args.json else done.summary())
    return 0


COMMANDS: list[Callable[[Any], None]] = [
    add_prune,
    add_calibrate,
    add_inspect,
    add_finalize,
    add_eval,
    add_report,
    add_compress,
    add_decompress,
]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
