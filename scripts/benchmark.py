"""Training-step benchmark of the DSVAE: the same as ``dsvae bench`` (see ``dsvae bench --help``).

    python scripts/benchmark.py                                   # paper preset, batch 32, all variants
    python scripts/benchmark.py --batch-size 8 32 128 --variants reference,all-compile \\
        --out bench.json --markdown bench.md
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from dsvae.cli import main as cli_main

    return cli_main(["bench", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
