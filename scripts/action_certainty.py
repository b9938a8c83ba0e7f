"""Where do the dynamic test's IS and H(y|x) come from: the motion code, or the appearance drawn for it?

Each test video's motion code z (posterior means) is decoded with static codes f from several sources and
the judge's certainty of the action is scored as the dynamic test scores it (IS, H(y|x), H(y) on the
class-balanced subset; accuracy on all): f drawn from the static prior (what ``dsvae eval``'s dynamic test
does; seed 0 repeats its first repeat's draw), the same draws scaled by each ``--scales`` value (toward the
prior's mean), f of another test video, the video's own f; and, for reference, the real videos themselves.
Also: quantiles of the per-video entropy, the share of H(y|x) due to the most uncertain 1% of videos, and
the mean norm of the decoded f. Calls ``dsvae.evaluation.diagnostics.action_certainty``.

    python scripts/action_certainty.py --run runs/cdsvae --judge runs/judge_lpc.pt \\
        --data data/sprites.h5 --out runs/cdsvae/action_certainty.json --amp bf16
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dsvae.errors import DsvaeError


def table(result: dict[str, Any]) -> str:
    """Markdown: one row per source of f, the real videos first."""
    lines = [f"{result['n_test']} test videos ({result['balanced_videos']} in the balanced subset)", "",
             "| f decoded with each video's z | action acc | IS | H(y\\|x) | H(y) | entropy median / p90 / p99 | "
             "H(y\\|x) share of the worst 1% | mean norm of f |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in result["sources"].items():
        q = r["entropy_quantiles"]
        label = "real test videos (no decoding)" if name == "real" else name
        norm = f"{r['f_norm']:.2f}" if "f_norm" in r else "-"
        lines.append(f"| {label} | {100 * r['action_accuracy']:.2f}% | {r['inception_score']:.3f} | {r['h_yx']:.4f} | "
                     f"{r['h_y']:.4f} | {q['50']:.4f} / {q['90']:.4f} / {q['99']:.4f} | "
                     f"{100 * r['worst_1pct_share']:.0f}% | {norm} |")
    lines += [f"\n{source}: not applicable ({why})" for source, why in result.get("not_applicable", {}).items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="model run folder or checkpoint")
    p.add_argument("--judge", required=True, help="judge .pt")
    p.add_argument("--data", required=True, help="data set .h5 (its test split is scored)")
    p.add_argument("--out", help="write the results here as JSON (optional)")
    p.add_argument("--n-test", type=int, default=None, help="first N test videos (default: all)")
    p.add_argument("--scales", type=float, nargs="*", default=[0.8],
                   help="also decode the prior's draws scaled by each of these, in (0, 1] (default 0.8)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--amp", choices=["off", "bf16"], default="off", help="autocast of encode/decode/judge")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--weights", default="auto", choices=["auto", "ema", "raw"],
                   help="the run's weight average when it kept one (auto, default), the average (ema) or the "
                        "raw weights")
    p.add_argument("--seed", type=int, default=0, help="seed of the prior's draw and the swap partners")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    import dsvae
    from dsvae.evaluation.diagnostics import action_certainty
    from dsvae.evaluation.judge import load_judge
    from dsvae.io import atomic_write_text, check_output_path
    from dsvae.training.trainer import resolve_device

    try:
        if args.out:
            check_output_path(args.out, overwrite=True)
        device = resolve_device(args.device)
        model = dsvae.load(args.run, device=device, weights=args.weights)
        judge = load_judge(args.judge, device=device)
        raw = action_certainty(model, judge, args.data, n_test=args.n_test, scales=tuple(args.scales),
                               batch_size=args.batch_size, amp=args.amp == "bf16", device=device, seed=args.seed,
                               progress=not args.quiet)
    except DsvaeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = {"run": str(args.run), "judge": str(args.judge), "data": str(args.data), "amp": args.amp,
              "weights": args.weights, "seed": args.seed, **raw}
    print(table(result))
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(result, indent=2) + "\n")
        print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
