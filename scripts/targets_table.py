"""Which targets of issue 7 each evaluated run meets: a markdown table from stored results.

Reads ``dsvae eval`` RESULTS.json files (or a ``scripts/sota_pipeline.py`` RESULTS.json, one column per
variant) and checks each against ``dsvae.evaluation.targets.ISSUE7``: a row per target, a column per
run, each cell the number reached (the mean over the eval's repeats) and "met" or "NOT met"; the last row
counts the targets met. Nothing is rounded before the check: a skin accuracy of 99.887% shows as 99.89%
and is not >= 99.9%. With ``--summary`` the files are runs of one recipe (e.g. its seeds) and the table
has a row per target: how many runs meet it and the lowest, median and highest value reached.

    python scripts/targets_table.py docs/results/cdsvae_best105_polish10_field.json \\
        docs/results/cdsvae_best50_b16_noflip_sg_polish10_lr1e3_field.json --labels "105 + 10" "50 + 10"
    python scripts/targets_table.py docs/results/hour_recipe_seed*/RESULTS.json --summary
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dsvae.errors import DsvaeError
from dsvae.evaluation.targets import targets_summary, targets_table
from dsvae.io import atomic_write_text, check_output_path


def named_results(paths: list[str], labels: list[str] | None) -> list[tuple[str, dict[str, Any]]]:
    """(column label, results) of each file; a pipeline RESULTS.json gives one per variant."""
    out: list[tuple[str, dict[str, Any]]] = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        if isinstance(data, dict) and isinstance(data.get("variants"), list):  # sota_pipeline's RESULTS.json
            out += [(str(v.get("name", "?")), v) for v in data["variants"]]
        elif isinstance(data, dict) and data.get("format") == "dsvae-eval":
            out.append((str(data.get("name") or Path(path).stem), data))
        else:
            raise ValueError(f"{path}: neither a dsvae eval RESULTS.json nor a sota_pipeline RESULTS.json")
    if labels:
        if len(labels) != len(out):
            raise ValueError(f"--labels gives {len(labels)} labels for {len(out)} results")
        out = [(label, results) for label, (_, results) in zip(labels, out)]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="RESULTS.json files (dsvae eval or sota_pipeline)")
    p.add_argument("--labels", nargs="+", help="column labels, one per result (default: the results' names)")
    p.add_argument("--summary", action="store_true",
                   help="one row per target over all the runs (runs meeting it; lowest, median, highest value)")
    p.add_argument("--out", help="also write the table to this markdown file (atomically)")
    args = p.parse_args(argv)
    try:
        if args.out:
            check_output_path(args.out, overwrite=True, what="table")
        named = named_results(args.results, args.labels)
    except (OSError, ValueError, DsvaeError) as exc:  # json.JSONDecodeError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    table = targets_summary(named) if args.summary else targets_table(named)
    print(table)
    if args.out:
        atomic_write_text(args.out, table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
