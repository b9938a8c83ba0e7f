"""Locate a model's attribute errors: does the static code f hold each attribute, and does the decoder draw it?

For each attribute (body = skin, bottom, top, hair): the test accuracy of a linear probe on f (fitted on
train-split codes, no model change) and the judge's accuracy on each test video's f decoded with its own z
(the plain reconstruction), with another test video's z (the swap test's situation) and with z rolled out
from the model's prior (the static test's), with the most frequent confusions (true value -> judged value)
of the weakest of the three. Calls ``dsvae.evaluation.diagnostics``.

    python scripts/attribute_diagnostics.py --run runs/cdsvae --judge runs/judge_lpc.pt \\
        --data data/sprites.h5 --out runs/cdsvae/diagnostics.json --amp bf16
"""

from __future__ import annotations

import sys
from typing import Any

from dsvae.cli.diagnostics import diagnostic_parser, run_diagnostic


def confusions(matrix: list[list[int]], top: int = 3) -> str:
    """The ``top`` largest off-diagonal cells as 'true->judged (count/row total)'."""
    cells = [(count, t, j) for t, row in enumerate(matrix) for j, count in enumerate(row) if t != j and count]
    cells.sort(reverse=True)
    return ", ".join(f"{t}->{j} ({c}/{sum(matrix[t])})" for c, t, j in cells[:top]) or "none"


def table(result: dict[str, Any]) -> str:
    """Markdown: per attribute, the probe on f and the judged accuracy of f decoded under each dynamics source."""
    from dsvae.evaluation.diagnostics import Z_SOURCES

    skipped = result.get("not_applicable", {})
    lines = [f"{result['n_test']} test videos, probes fitted on {result['n_train']} train videos", "",
             "| attribute | linear probe on f | f + own z (reconstruction) | f + another video's z | "
             "f + prior z | main confusions (worst of the three) |",
             "|---|---:|---:|---:|---:|---|"]
    for name, r in result["attributes"].items():
        cells = [f"{100 * r[source]['accuracy']:.2f}%" if source in r else "n/a" for source in Z_SOURCES]
        worst = min((s for s in Z_SOURCES if s in r), key=lambda s: r[s]["accuracy"])
        lines.append(f"| {name} | {100 * r['probe']['accuracy']:.2f}% | {' | '.join(cells)} | "
                     f"{worst}: {confusions(r[worst]['confusion'])} |")
    lines += [f"\n{source}: not applicable ({why})" for source, why in skipped.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = diagnostic_parser(__doc__, "data set .h5 (train split for the probes, test split to score)",
                          "seed of the train-video draw, swap partners and prior dynamics")
    p.add_argument("--n-train", type=int, default=3000, help="train videos fitting the probes (default 3000)")
    p.add_argument("--n-test", type=int, default=900, help="first N test videos scored (default 900)")
    args = p.parse_args(argv)
    from dsvae.evaluation.diagnostics import attribute_diagnostics

    def diagnose(model, judge, device):
        return attribute_diagnostics(model, judge, args.data, n_train=args.n_train, n_test=args.n_test,
                                     batch_size=args.batch_size, amp=args.amp == "bf16", device=device,
                                     seed=args.seed, progress=not args.quiet)

    def report(raw: dict[str, Any]) -> dict[str, Any]:
        return {"n_train": raw.pop("n_train"), "n_test": raw.pop("n_test"),
                "not_applicable": raw.pop("not_applicable"), "attributes": raw}

    return run_diagnostic(args, diagnose, report, table)


if __name__ == "__main__":
    sys.exit(main())
