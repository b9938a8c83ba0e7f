"""``dsvae eval``: the field's disentanglement protocol (dynamic, static and swap tests) scored by a judge."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Score a trained model with a judge (dsvae judge train) on the test split.

Evaluated videos: all test videos in file order (2,664 on the real Sprites); --legacy keeps the
literature's batch-128 drop_last subset: the first floor(N/128)*128 videos (2,560). Each video is
encoded once (posterior means). Every repeat (seeded, fresh draws) runs:
  dynamic: z = posterior mean, f ~ prior (one draw per video) -> action accuracy, and IS, H(y|x),
           H(y) on a class-balanced subset (the first n videos of each action, n = the smallest
           action count); attribute accuracy should be chance (16.7%);
  static:  f = posterior mean, z = the prior's per-step means rolled out -> attribute accuracy
           (ideal 100%), action accuracy (ideal chance, 11.1%);
  swap:    f of A with z of B (a random derangement) -> A's attributes, B's action.
Mean and std over repeats. Models without a sequence prior get "not applicable" for dynamic and
static. Decoded frames of another size are resized to the judge's (area down, nearest up).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="disentanglement scores of a model (dynamic/static/swap tests, judged)",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run folder or checkpoint file of the model")
    p.add_argument("--judge", required=True, help="judge file (dsvae judge train)")
    p.add_argument("--data", required=True, help="data set .h5 file")
    p.add_argument("--out", help="RESULTS.json to write (atomically)")
    p.add_argument("--repeats", type=int, default=5, help="repeats with fresh random draws (default 5)")
    p.add_argument("--legacy", action="store_true",
                   help="evaluate the literature's subset: the first floor(N/128)*128 test videos (batch 128, "
                        "drop_last), instead of all of them")
    p.add_argument("--split", default="test", help="split to evaluate (default test)")
    p.add_argument("--limit", type=int, help="evaluate only the first N videos (quick checks; not comparable)")
    p.add_argument("--batch-size", type=int, default=128, help="videos decoded and judged at once (default 128)")
    p.add_argument("--device", default="auto", help="auto (GPU when there is one), cpu or cuda")
    p.add_argument("--amp", default="off", choices=["off", "bf16"],
                   help="bf16 autocast for encode/decode/judge (faster; default off = fp32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random draws (default 0)")
    p.add_argument("--weights", default="auto", choices=["auto", "ema", "raw"],
                   help="weights to judge: the run's weight average when it kept one (auto, default), "
                        "the average (ema) or the trained weights (raw)")
    p.add_argument("--name", help="model label of the markdown row (default: model type and run name)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing RESULTS.json")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_eval)


def _fmt(entry: dict, key: str, pct: bool) -> str:
    v = entry[key]
    return f"{100 * v['mean']:.2f}% ± {100 * v['std']:.2f}" if pct else f"{v['mean']:.3f} ± {v['std']:.3f}"


def format_details(results: dict) -> str:
    """Human-readable lines: every number with its std."""
    lines = [f"{results['name']}: {results['n_videos']} videos of split '{results['data']['split']}', "
             f"{results['repeats']} repeats, {results['seconds']:.1f} s"]
    # the three tests, then the judge on the real videos themselves (one pass: std 0)
    for test, label in (("dynamic", "dynamic"), ("static", "static"), ("swap", "swap"),
                        ("real", "real videos (the judge's ceiling)")):
        entry = results[test]
        if entry["status"] != "ok":
            lines.append(f"  {label}: not applicable ({entry['reason']})")
            continue
        parts = [f"action acc {_fmt(entry, 'action_accuracy', True)}"]
        if "inception_score" in entry:
            parts += [f"IS {_fmt(entry, 'inception_score', False)}", f"H(y|x) {_fmt(entry, 'h_yx', False)}",
                      f"H(y) {_fmt(entry, 'h_y', False)}"]
        parts.append(f"attr acc {_fmt(entry, 'attribute_accuracy', True)} ("
                     + ", ".join(f"{k} {100 * v['mean']:.1f}%" for k, v in entry["attributes"].items()) + ")")
        lines.append(f"  {label}: " + "; ".join(parts))
    return "\n".join(lines)


def _eval(args: argparse.Namespace) -> int:
    from dsvae.evaluation.protocol import evaluate

    results = evaluate(
        args.run, args.judge, args.data, out=args.out, repeats=args.repeats, legacy=args.legacy,
        batch_size=args.batch_size, device=args.device, seed=args.seed, progress=not args.quiet,
        split=args.split, limit=args.limit, amp=args.amp, overwrite=args.overwrite, name=args.name,
        weights=args.weights,
    )
    for warning in results["warnings"]:
        print(f"warning: {warning}")
    print(format_details(results))
    print()
    print(results["markdown_header"])
    print(results["markdown_row"])
    print(results["markdown_real_row"])
    if args.out:
        print(f"\nresults written to {args.out}")
    return 0
