"""Train the image-level baselines and the DSVAE with equal time budgets, then judge them.

Every model trains for ``--minutes`` with the ``--preset`` sizes on ``--data``; then ``dsvae eval``
runs with ``--judge`` (baselines get the swap test through their naive sequence view: static code =
mean of the frame codes, dynamic code = each frame's residual; the dynamic and static tests need a
sequence prior and say "not applicable"), and the baseline figures are written with
``baseline_outputs`` (reconstruction MSE; classification error of the label for cvae / aae-sup /
aae-semi). The table is printed and written to OUT/TABLE.md, the numbers to OUT/results.json.

    python scripts/baselines_table.py --data data/procedural.h5 --judge runs/judge_procedural.pt \\
        --out runs/baselines --minutes 4 --eval-limit 900
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from dsvae.errors import DsvaeError
from dsvae.evaluation.protocol import evaluate
from dsvae.io import atomic_write_text
from dsvae.training.trainer import train
from dsvae.viz.baselines import baseline_outputs

MODELS = ("dsvae", "ae", "vae", "cvae", "aae", "aae-sup", "aae-semi")


def pct(entry: dict, key: str) -> str:
    if entry.get("status") != "ok":
        return "n/a"
    return f"{100 * entry[key]['mean']:.1f}%"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--judge", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--minutes", type=float, default=4.0, help="training budget per model (default 4)")
    p.add_argument("--label", default="top", help="label factor of cvae / aae-sup / aae-semi (default top)")
    p.add_argument("--amp", default="bf16", choices=["off", "bf16", "auto"])
    p.add_argument("--eval-limit", type=int, help="evaluate the first N test videos only (quicker)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, results = [], {}
    for name in args.models:
        run_dir = out / name
        model_config = {"label": args.label} if name in ("cvae", "aae-sup", "aae-semi") else {}
        t0 = time.time()
        res = train(data=args.data, out=str(run_dir), model=name, preset=args.preset, model_config=model_config,
                    max_minutes=args.minutes, epochs=1000, amp=args.amp, device=args.device, sample_every=0,
                    overwrite=True)
        seconds = time.time() - t0
        report = evaluate(run_dir, args.judge, args.data, repeats=args.repeats, limit=args.eval_limit,
                          device=args.device, out=run_dir / "RESULTS.json", overwrite=True, name=name,
                          amp="off" if args.amp == "auto" else args.amp)
        entry = {"train_seconds": seconds, "steps": res.step, "eval": {k: report[k] for k in
                                                                        ("dynamic", "static", "swap", "n_videos")}}
        extra = ""
        if name != "dsvae":
            paths = baseline_outputs(run_dir, args.data, run_dir / "figures", limit=args.eval_limit,
                                     overwrite=True, device=args.device)
            summary = json.loads(paths["summary.json"].read_text())
            entry["frames"] = summary
            extra = f"{summary['recon_mse']:.4f}"
            if "classification_error" in summary:
                extra += f" / {100 * summary['classification_error']:.1f}% ({summary['label']})"
        results[name] = entry
        dyn, sta, swp = report["dynamic"], report["static"], report["swap"]
        rows.append(f"| {name} | {res.step} | {seconds / 60:.1f} | {pct(dyn, 'action_accuracy')} | "
                    f"{pct(sta, 'attribute_accuracy')} | {pct(swp, 'attribute_accuracy')} | "
                    f"{pct(swp, 'action_accuracy')} | {extra or '-'} |")
        print(rows[-1], flush=True)

    cpu = platform.processor() or platform.machine()
    header = ("| model | steps | train min | dynamic acc | static attr acc | swap attr acc | swap action acc | "
              "frame MSE / label error |\n|---|---:|---:|---:|---:|---:|---:|---|")
    n_videos = next(iter(results.values()))["eval"]["n_videos"]
    table = (f"{header}\n" + "\n".join(rows) + "\n\n"
             f"Data {args.data}, preset {args.preset}, {args.minutes} min per model (amp {args.amp}, also for the judged eval), judge "
             f"{args.judge}, {n_videos} test videos x {args.repeats} repeat(s); torch {torch.__version__}, "
             f"{cpu}, {torch.get_num_threads()} threads. Command: python {' '.join(sys.argv)}\n")
    print("\n" + table)
    atomic_write_text(out / "TABLE.md", table)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DsvaeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
