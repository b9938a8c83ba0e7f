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

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dsvae.errors import DsvaeError


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
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="model run folder or checkpoint")
    p.add_argument("--judge", required=True, help="judge .pt")
    p.add_argument("--data", required=True, help="data set .h5 (train split for the probes, test split to score)")
    p.add_argument("--out", help="write the results here as JSON (optional)")
    p.add_argument("--n-train", type=int, default=3000, help="train videos fitting the probes (default 3000)")
    p.add_argument("--n-test", type=int, default=900, help="first N test videos scored (default 900)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--amp", choices=["off", "bf16"], default="off", help="autocast of encode/decode/judge")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--weights", default="auto", choices=["auto", "ema", "raw"],
                   help="the run's weight average when it kept one (auto, default), the average (ema) or the "
                        "raw weights")
    p.add_argument("--seed", type=int, default=0, help="seed of the train-video draw, swap partners and prior dynamics")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    import dsvae
    from dsvae.evaluation.diagnostics import attribute_diagnostics
    from dsvae.evaluation.judge import load_judge
    from dsvae.io import atomic_write_text, check_output_path
    from dsvae.training.trainer import resolve_device

    try:
        if args.out:
            check_output_path(args.out, overwrite=True)
        device = resolve_device(args.device)
        model = dsvae.load(args.run, device=device, weights=args.weights)
        judge = load_judge(args.judge, device=device)
        raw = attribute_diagnostics(model, judge, args.data, n_train=args.n_train, n_test=args.n_test,
                                    batch_size=args.batch_size, amp=args.amp == "bf16", device=device,
                                    seed=args.seed, progress=not args.quiet)
    except DsvaeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = {"run": str(args.run), "judge": str(args.judge), "data": str(args.data),
              "n_train": raw.pop("n_train"), "n_test": raw.pop("n_test"), "amp": args.amp, "weights": args.weights,
              "seed": args.seed, "not_applicable": raw.pop("not_applicable"), "attributes": raw}
    print(table(result))
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(result, indent=2) + "\n")
        print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
