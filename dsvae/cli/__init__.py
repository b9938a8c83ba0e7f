"""Command line: ``dsvae <command> ...``.

Thin by design: every command parses its options and calls one library
function. Each command group lives in its own module with a ``register``
function that adds its sub-parsers; ``main`` turns user errors
(:class:`dsvae.errors.DsvaeError`) into one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from dsvae.errors import DsvaeError

#: Modules (under dsvae.cli) whose ``register(subparsers)`` adds commands, in help order.
COMMAND_MODULES = ("data", "train", "polish", "prior", "judge", "eval", "swap", "demo", "bench", "baselines")


def build_parser() -> argparse.ArgumentParser:
    from importlib import import_module

    from dsvae import __version__

    parser = argparse.ArgumentParser(
        prog="dsvae",
        description="Sequential disentanglement of video sprites: data, training, evaluation, swaps.",
    )
    parser.add_argument("--version", action="version", version=f"dsvae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = import_module(f"dsvae.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"dsvae.cli.{name}":
                continue  # command group not part of this build
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except DsvaeError as exc:
        print(f"dsvae: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dsvae: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
