"""What the diagnostic scripts share (``scripts/attribute_diagnostics.py``, ``scripts/action_certainty.py``): their
common options, loading the model and the judge, one-line errors, the printed table and the JSON file."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from dsvae.errors import DsvaeError


def diagnostic_parser(description: str, data_help: str, seed_help: str) -> argparse.ArgumentParser:
    """A parser with the options every diagnostic script takes; the script adds its own."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="model run folder or checkpoint")
    p.add_argument("--judge", required=True, help="judge .pt")
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--out", help="write the results here as JSON (optional)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--amp", choices=["off", "bf16"], default="off", help="autocast of encode/decode/judge")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--weights", default="auto", choices=["auto", "ema", "raw"],
                   help="the run's weight average when it kept one (auto, default), the average (ema) or the "
                        "raw weights")
    p.add_argument("--seed", type=int, default=0, help=seed_help)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run_diagnostic(args: argparse.Namespace, diagnose: Callable[..., dict[str, Any]],
                   report: Callable[[dict[str, Any]], dict[str, Any]], table: Callable[[dict[str, Any]], str]) -> int:
    """Load ``args.run`` and ``args.judge``, call ``diagnose(model, judge, device)``, turn its output into the
    result with ``report`` (after the run, judge, data, amp, weights and seed), print ``table(result)`` and write
    the result to ``args.out`` as JSON (atomically). A user mistake is one line on stderr and exit code 2."""
    import dsvae
    from dsvae.evaluation.judge import load_judge
    from dsvae.io import atomic_write_text, check_output_path
    from dsvae.training.trainer import resolve_device

    try:
        if args.out:
            check_output_path(args.out, overwrite=True)
        device = resolve_device(args.device)
        model = dsvae.load(args.run, device=device, weights=args.weights)
        judge = load_judge(args.judge, device=device)
        raw = diagnose(model, judge, device)
    except DsvaeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = {"run": str(args.run), "judge": str(args.judge), "data": str(args.data), "amp": args.amp,
              "weights": args.weights, "seed": args.seed, **report(raw)}
    print(table(result))
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(result, indent=2) + "\n")
        print(f"results written to {args.out}")
    return 0
