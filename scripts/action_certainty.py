"""Where do the dynamic test's IS and H(y|x) come from: the motion code, or the appearance drawn for it?

Each test video's motion code z (posterior means) is decoded with static codes f from several sources and
the judge's certainty of the action is scored as the dynamic test scores it (IS, H(y|x), H(y) on the
class-balanced subset; accuracy on all): f drawn from the static prior (what ``dsvae eval``'s dynamic test
does; seed 0 repeats its first repeat's draw), the same draws scaled by each ``--scales`` value (toward the
prior's mean), f of another test video, the video's own f; and, for reference, the real videos themselves.
Also: quantiles of the per-video entropy, the share of H(y|x) due to the most uncertain 1% of videos, the
judge's doubt about the look (the mean entropy of its four attribute heads) and the mean norm of the decoded f. Calls ``dsvae.evaluation.diagnostics.action_certainty``.

``--draws K`` also asks whether the doubt belongs to the video or to the look drawn for it
(``dsvae.evaluation.diagnostics.action_doubt_sources``): K independent prior draws per video, the correlation
of the per-video entropies between draws (~1: the video; ~0: the draw) and with the real video's, H(y|x) with
each video's median draw, and the mean entropy per value of each attribute as the judge reads the decode.

    python scripts/action_certainty.py --run runs/cdsvae --judge runs/judge_lpc.pt \\
        --data data/sprites.h5 --out runs/cdsvae/action_certainty.json --amp bf16 --draws 4
"""

from __future__ import annotations

import sys
from typing import Any

from dsvae.cli.diagnostics import diagnostic_parser, run_diagnostic


def table(result: dict[str, Any]) -> str:
    """Markdown: one row per source of f, the real videos first."""
    lines = [f"{result['n_test']} test videos ({result['balanced_videos']} in the balanced subset)", "",
             "| f decoded with each video's z | action acc | IS | H(y\\|x) | H(y) | entropy median / p90 / p99 | "
             "H(y\\|x) share of the worst 1% | attribute entropy (mean of 4 heads) | mean norm of f |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in result["sources"].items():
        q = r["entropy_quantiles"]
        label = "real test videos (no decoding)" if name == "real" else name
        norm = f"{r['f_norm']:.2f}" if "f_norm" in r else "-"
        lines.append(f"| {label} | {100 * r['action_accuracy']:.2f}% | {r['inception_score']:.3f} | {r['h_yx']:.4f} | "
                     f"{r['h_y']:.4f} | {q['50']:.4f} / {q['90']:.4f} / {q['99']:.4f} | "
                     f"{100 * r['worst_1pct_share']:.0f}% | {r['attribute_entropy']['mean']:.4f} | {norm} |")
    lines += [f"\n{source}: not applicable ({why})" for source, why in result.get("not_applicable", {}).items()]
    doubt = result.get("doubt")
    if doubt:
        per_draw = ", ".join(f"{h:.4f}" for h in doubt["h_yx_per_draw"])
        lines += ["", f"Video or look ({doubt['draws']} prior draws per video): H(y|x) per draw {per_draw}; with each "
                  f"video's median draw {doubt['h_yx_median_draw']:.4f}; correlation of the per-video log-entropy "
                  f"between draws {doubt['draw_correlation']:.3f}, with the real video's {doubt['real_correlation']:.3f}; "
                  f"share of the worst 2% {100 * doubt['worst_2pct_share']:.0f}%", "",
                  "| attribute | mean action entropy of the decodes judged as value 0-5 | share of the decodes "
                  "judged as each value | real videos of value 0-5 |", "|---|---|---|---|"]
        for name, values in doubt["by_judged_look"].items():
            cells = [" / ".join("-" if v is None else f"{v:.4f}" for v in vs)
                     for vs in (values, doubt["real_by_look"][name])]
            shares = " / ".join(f"{100 * v:.1f}%" for v in doubt["judged_look_share"][name])
            lines.append(f"| {name} | {cells[0]} | {shares} | {cells[1]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = diagnostic_parser(__doc__, "data set .h5 (its test split is scored)",
                          "seed of the prior's draw and the swap partners")
    p.add_argument("--n-test", type=int, default=None, help="first N test videos (default: all)")
    p.add_argument("--scales", type=float, nargs="*", default=[0.8],
                   help="also decode the prior's draws scaled by each of these, in (0, 1] (default 0.8)")
    p.add_argument("--draws", type=int, default=0, metavar="K",
                   help="also split the doubt between video and look with K >= 2 prior draws per video "
                        "(default 0: off)")
    args = p.parse_args(argv)
    from dsvae.evaluation.diagnostics import action_certainty, action_doubt_sources

    def diagnose(model, judge, device):
        common = dict(n_test=args.n_test, batch_size=args.batch_size, amp=args.amp == "bf16", device=device,
                      seed=args.seed, progress=not args.quiet)
        result = action_certainty(model, judge, args.data, scales=tuple(args.scales), **common)
        if args.draws:
            result["doubt"] = action_doubt_sources(model, judge, args.data, draws=args.draws, **common)
        return result

    return run_diagnostic(args, diagnose, dict, table)


if __name__ == "__main__":
    sys.exit(main())
