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
from symprune.errors import SymPruneError


def add_prune(sub: Any) -> None:
    p = sub.add_parser(
        "prune",
        help="prune a safetensors checkpoint into a new directory",
        description="Prune MODEL_DIR (a Hugging Face safetensors checkpoint) into OUT_DIR, "
        "shard by shard in bounded memory. Data-aware methods read activation statistics "
        "from --stats. An interrupted run resumes when started again with the same arguments.",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--method", default="magnitude", help="score (default: magnitude)")
    p.add_argument("--sparsity", type=float, default=0.5, help="fraction pruned (default 0.5)")
    p.add_argument("--pattern", metavar="N:M", help="semi-structured N:M instead of --sparsity")
    p.add_argument(
        "--group",
        default="per-row",
        choices=("per-row", "per-matrix", "adaptive"),
        help="comparison group of unstructured sparsity (default: per-row)",
    )
    p.add_argument("--stats", metavar="FILE", help="activation statistics (safetensors)")
    p.add_argument(
        "--targets", metavar="RE", action="append", help="prune tensors matching RE (repeatable)"
    )
    p.add_argument("--ignore", metavar="RE", action="append", help="never prune these")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=sys.stderr.isatty(),
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    params = p.add_argument_group("method parameters")
    params.add_argument("--a", type=float, default=0.5, help="RIA activation exponent")
    params.add_argument("--p", type=float, default=1.0, help="lp-ria norm")
    params.add_argument("--beta", type=float, default=0.1, help="stochria subset fraction")
    params.add_argument("--seed", type=int, default=0, help="stochria seed")
    params.add_argument("--lam", type=float, default=1.0, help="symwanda output-side weight")
    params.add_argument(
        "--no-activation",
        dest="activation",
        action="store_false",
        help="stochria without the activation factor",
    )
    p.set_defaults(run=run_prune)


def prune_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`symprune.checkpoint.prune_checkpoint`."""
    return {
        "method": args.method,
        "sparsity": args.sparsity,
        "pattern": args.pattern,
        "group": args.group,
        "stats": args.stats,
        "targets": args.targets,
        "ignore": args.ignore,
        "overwrite": args.overwrite,
        "progress": args.progress,
        "a": args.a,
        "p": args.p,
        "beta": args.beta,
        "seed": args.seed,
        "activation": args.activation,
        "lam": args.lam,
    }


def run_prune(args: argparse.Namespace) -> int:
    report = checkpoint.prune_checkpoint(args.model_dir, args.out_dir, **prune_options(args))
    print(report.summary())
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


COMMANDS: list[Callable[[Any], None]] = [add_prune, add_inspect]


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
