"""``dsvae demo``: data, judge, training, GIFs, loss curve, judged results and an HTML report in one command."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
The main job in one command, offline: build the data set if it is not there (procedural sprites by
default: data/procedural.h5), train a small judge (or reuse a matching one), train the DSVAE with the
`demo` preset (about five minutes on 2 CPU cores, faster on a GPU; half of the training sequences
change motion midway, so the facing direction is learned as dynamics), then write swap, sample and
interpolation GIFs, a loss curve, RESULTS.json (the judged swap, static and dynamic tests on the
test split) and index.html, which shows them all.

--data lpc --sheets DIR does the same on the real Sprites (data/sprites.h5, built from the raw LPC
layers in DIR when absent). An existing out folder is refused unless --overwrite (replace it) or
--resume (continue a demo with the same settings: reuses its judge and training checkpoint).
"""


def register(sub: argparse._SubParsersAction) -> None:
    from dsvae.demo import DEMO_CONFIGS

    p = sub.add_parser("demo", help="one command: data, judge, training, GIFs, results and an HTML report",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo", help="demo folder (default demo)")
    p.add_argument("--data", choices=["procedural", "lpc"], default="procedural",
                   help="procedural sprites (default, built offline) or the real Sprites (lpc)")
    p.add_argument("--sheets", help="--data lpc: folder of raw LPC layers to build the data set from when absent")
    p.add_argument("--data-file", help="data set file (default data/procedural.h5, or data/sprites.h5 for lpc)")
    p.add_argument("--minutes", type=float, help="cap the training time at M minutes (default: the preset's steps)")
    p.add_argument("--device", default="auto", help="auto (GPU when there is one), cpu or cuda")
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "off"],
                   help="training precision: auto = bf16 on a GPU or a CPU with native bf16, else fp32")
    p.add_argument("--judge", help="judge file to score with instead of the demo's own (dsvae judge train)")
    p.add_argument("--config", default="demo", choices=sorted(DEMO_CONFIGS),
                   help="demo = the full demo (default); tiny = seconds, a smoke test of the pipeline")
    p.add_argument("--threads", type=int,
                   help="CPU threads (default: one per core; on a busy shared machine 1 can be much faster)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing demo folder")
    p.add_argument("--resume", action="store_true", help="continue an existing demo folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars or stage messages")
    p.set_defaults(func=_demo)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _demo(args: argparse.Namespace) -> int:
    from dsvae.demo import TARGET, run_demo

    def say(msg: str) -> None:
        print(f"dsvae demo: {msg}", file=sys.stderr, flush=True)

    res = run_demo(out=args.out, data=args.data, sheets=args.sheets, data_file=args.data_file, minutes=args.minutes,
                   device=args.device, config=args.config, judge=args.judge, amp=args.amp, seed=args.seed,
                   overwrite=args.overwrite, resume=args.resume, progress=not args.quiet,
                   threads=args.threads, log=None if args.quiet else say)
    s, demo = res.summary, res.results["demo"]
    verdict = {True: "reached", False: "NOT reached", None: "not measured"}[res.passed]
    print(f"swap accuracy on the {res.results['data']['split']} split ({res.results['n_videos']} videos): "
          f"attributes {_pct(s['swap_attribute_accuracy'])}, action {_pct(s['swap_action_accuracy'])} "
          f"(target >= {100 * TARGET:.0f}% both: {verdict})")
    print(f"static test attributes {_pct(s['static_attribute_accuracy'])}, dynamic test action "
          f"{_pct(s['dynamic_action_accuracy'])}; {demo['training']['steps']} training steps in "
          f"{res.seconds['training']:.0f} s, {res.seconds['total']:.0f} s in all")
    for note in res.notes:
        print(f"note: {note}")
    print(f"wrote {len(res.files)} files to {res.out}/: {', '.join(res.files)}")
    print(f"open {res.files['index.html']}")
    return 0
