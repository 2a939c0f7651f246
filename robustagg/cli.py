"""The ``robustagg`` command (also ``python -m robustagg``).

Subcommands:

* ``bench``: time the ops (coordinate-wise rules, distance rules,
  pre-aggregators) against one read of the input, the plain-PyTorch way and
  byzfl (when installed); print a table, write JSON and optionally a markdown
  table.
* ``train <line>``: a line of work on the built-in digits data (``byzantine``,
  ``federated``, ``personalized``, ``masked``: one run or the whole grid with
  ``--grid``; ``ddp``: robust DistributedDataParallel training),
  :mod:`robustagg.sim.commands`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .bench.command import add_parser as add_bench_parser

    parser = argparse.ArgumentParser(
        prog="robustagg",
        description="robustagg: fast, exact robust aggregation for PyTorch (CPU and CUDA kernels).",
        epilog="Run `robustagg <command> --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"robustagg {__version__} (torch {torch.__version__})")
    sub = parser.add_subparsers(dest="command", metavar="<command>")

    add_bench_parser(sub)

    from .sim.commands import add_train_parser

    add_train_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
