"""Reproducible Sprites pipeline: build data -> train a judge -> train models -> evaluate -> table.

Every step calls the library (``dsvae.data``, ``dsvae.evaluation.judge.train_judge``,
``dsvae.training.trainer.train``, ``dsvae.evaluation.protocol.evaluate``) and writes into
``--out``:

    data/<source>.h5            (unless --data-file names an existing file)
    data/train_mixed_<pairing>.h5  with --mix: the motion-mixed training set (dsvae.data.mixing)
    judge.pt                    (unless --judge names an existing judge)
    runs/<variant>/             training run folders (checkpoints, metrics.jsonl, samples)
    runs/<variant>/RESULTS.json evaluation of each variant
    RESULTS.md, RESULTS.json    the table (literature rows, our rows), each variant's figure against
                                each target of issue 7 (met, or the number reached) and every detail

Variants (``--variants``, comma separated, in table order):

    dsvae      the faithful DSVAE (model dsvae, --preset's config)
    plain      cdsvae with every ingredient off: the DSVAE objective on the cdsvae preset (small z)
    +static    plain + the static contrastive term (frame shuffles / reversals)
    +dynamic   plain + the dynamic contrastive term (colour permutations)
    +mi        plain + the MI penalty between f and z
    +prior     plain + the prior-sampled positives
    +anneal    plain + a KL warm-up (kl_anneal_steps from --anneal-steps)
    all        the cdsvae preset as it is (every default ingredient on)
    all+prior  all + the prior-sampled positives
    all+pair   all + the partner reconstruction (pair_share from --pair-share: that share of each batch
               decoded from a colour neighbour's static code)
    all-X      all without ingredient X (X = static, dynamic, mi)

``--curve N`` also measures time to quality along each run: a checkpoint every ``--curve-every`` steps, all
kept, up to ``--curve-max`` of them judged on the first N test videos (1 repeat), tabulated against the
training seconds.

Each variant trains for ``--minutes`` wall-clock minutes (no epoch cap unless --epochs; --max-steps
gives equal step budgets instead, fairer on a machine whose load changes), with the same seed. Unsupervised: the models never see
labels (only the judge does). A variant whose RESULTS.json exists is reused unless --overwrite.

``--mix colours`` trains on a motion-mixed copy of the train split (half of the sequences switch, at a
random frame, to a sequence of the same character found by colour histogram: no labels read);
``--mix characters`` finds it by the data set's character ids instead (weak supervision, so the table
then says labels were used). Evaluation always uses the data set's own test split.

    python scripts/sota_pipeline.py --out runs/sota/cpu60 --data lpc --data-file data/sprites.h5 \\
        --preset cpu --minutes 60 --variants dsvae,all --amp bf16
    python scripts/sota_pipeline.py --out runs/sota/colmix60 --data lpc --data-file data/sprites.h5 \\
        --judge runs/judge_lpc.pt --preset cpu --minutes 60 --variants all --mix colours --repeats 3
    # the best 60-minute CPU recipe (doubled widths, mixture prior, cosine decay; BENCHMARKS.md section 7)
    python scripts/sota_pipeline.py --out runs/sota/best60 --data lpc --data-file data/sprites.h5 \
        --judge runs/judge_lpc.pt --preset cpu-best --minutes 60 --variants all --mix colours --repeats 3
    python scripts/sota_pipeline.py --out runs/sota/quick --data procedural --minutes 2 \\
        --variants plain,+static,+dynamic,+mi,all --eval-limit 900 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from dsvae.errors import DsvaeError

INGREDIENT_WEIGHTS = {"static": "static_contrast_weight", "dynamic": "dynamic_contrast_weight",
                      "mi": "mi_weight", "prior": "prior_swap_weight"}
OFF = {w: 0.0 for w in INGREDIENT_WEIGHTS.values()}

#: Literature dynamic-test rows on Sprites (action accuracy, IS, H(y|x), H(y)), as quoted in issue 7.
LITERATURE = [
    ("DSVAE (Li & Mandt 2018)", 0.9073, 8.384, 0.072, 2.192),
    ("S3VAE (Zhu et al. 2020)", 0.9949, 8.637, 0.041, 2.197),
    ("C-DSVAE (Bai et al. 2021)", 0.9999, 8.871, 0.014, 2.197),
    ("SPYL (Naiman et al. 2023)", 1.0, 8.942, 0.006, 2.197),
    ("SKD (Berman et al. 2023)", 1.0, 8.999, 1.6e-7, 2.197),
]


def variant_spec(name: str, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """(model type, model config overrides) of a variant name (cdsvae overrides go over --set)."""
    from dsvae.models.cdsvae import CDSVAEConfig
    from dsvae.models.presets import get_preset

    full = {**CDSVAEConfig().to_dict(), **get_preset("cdsvae", args.preset)[0], **parse_sets(args.set)}
    on = {w: full[w] for w in INGREDIENT_WEIGHTS.values()}
    on["prior_swap_weight"] = on["prior_swap_weight"] or args.prior_weight
    if name == "dsvae":
        return "dsvae", {}
    if name == "plain":
        return "cdsvae", dict(OFF)
    if name == "all":
        return "cdsvae", {}
    if name == "all+prior":
        return "cdsvae", {"prior_swap_weight": on["prior_swap_weight"]}
    if name == "all+pair":
        return "cdsvae", {"pair_share": full["pair_share"] or args.pair_share}
    if name == "+anneal":
        return "cdsvae", {**OFF, "kl_anneal_steps": args.anneal_steps}
    if name.startswith("+") and name[1:] in INGREDIENT_WEIGHTS:
        weight = INGREDIENT_WEIGHTS[name[1:]]
        if not on[weight]:
            raise DsvaeError(f"variant {name}: {weight} is 0 in the {args.preset} preset; give it with --set")
        return "cdsvae", {**OFF, weight: on[weight]}
    if name.startswith("all-") and name[4:] in INGREDIENT_WEIGHTS:
        return "cdsvae", {INGREDIENT_WEIGHTS[name[4:]]: 0.0}
    raise DsvaeError(f"unknown variant {name!r} (see the script's docstring)")


def parse_sets(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise DsvaeError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    if hasattr(os, "getloadavg"):
        info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    return info


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------
# the steps
# ----------------------------------------------------------------------------------
def build_data(args: argparse.Namespace, out: Path) -> Path:
    if args.data_file and Path(args.data_file).is_file():
        log(f"data: using {args.data_file}")
        return Path(args.data_file)
    target = Path(args.data_file) if args.data_file else out / "data" / f"{args.data}.h5"
    if target.is_file() and not args.overwrite:  # built by an earlier call into the same --out
        log(f"data: reusing {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if args.data == "procedural":
        from dsvae.data.procedural import build_procedural

        build_procedural(target, seed=args.seed, overwrite=True, progress=not args.quiet)
    else:
        if not args.sheets:
            raise DsvaeError("--data lpc needs --sheets DIR (the raw LPC layers) or an existing --data-file")
        from dsvae.data.lpc import build_lpc

        sums = Path(args.sheets) / "SHA256SUMS"
        build_lpc(args.sheets, target, checksums=sums if sums.is_file() else None, overwrite=True,
                  progress=not args.quiet)
    log(f"data: built {target} in {time.time() - t0:.0f} s")
    return target


def mixed_training_set(args: argparse.Namespace, out: Path, data: Path) -> Path:
    """The training set of every variant: ``data`` itself, or its motion-mixed copy with ``--mix``."""
    if args.mix == "none":
        return data
    from dsvae.data.mixing import mix_motions

    target = out / "data" / f"train_mixed_{args.mix}.h5"
    if target.is_file() and not args.overwrite:
        log(f"training set: reusing {target}")
        return target
    t0 = time.time()
    mix_motions(data, target, share=args.mix_share, seed=args.seed, pairing=args.mix, overwrite=True,
                progress=not args.quiet)
    log(f"training set: {target} (motion change in {100 * args.mix_share:.0f}% of the train sequences, "
        f"pairing by {args.mix}) in {time.time() - t0:.0f} s")
    return target


def get_judge(args: argparse.Namespace, out: Path, data: Path) -> tuple[Path, dict[str, Any]]:
    from dsvae.evaluation.judge import judge_config, load_judge, train_judge

    if args.judge and Path(args.judge).is_file():
        judge = load_judge(args.judge)
        log(f"judge: using {args.judge} (test accuracy {judge.meta.get('test_accuracy')})")
        return Path(args.judge), {"path": args.judge, "trained_here": False,
                                  "test_accuracy": judge.meta.get("test_accuracy")}
    path = Path(args.judge) if args.judge else out / "judge.pt"
    if path.is_file() and not args.overwrite:
        judge = load_judge(path)
        log(f"judge: reusing {path}")
        return path, {"path": str(path), "trained_here": True, "test_accuracy": judge.meta.get("test_accuracy")}
    overrides: dict[str, Any] = {}
    if args.judge_widths == "auto" and args.judge_size == 32:
        overrides = {"widths": (32, 64, 128), "hidden_dim": 128}  # a lighter field judge: minutes on a CPU
    elif args.judge_widths not in ("auto", "field"):
        overrides["widths"] = tuple(int(w) for w in args.judge_widths.split(","))
    cfg = judge_config("field", image_size=args.judge_size, **overrides)
    log(f"judge: training {cfg} for {args.judge_epochs} epochs")
    res = train_judge(data, path, epochs=args.judge_epochs, batch_size=64, lr=1e-3, seed=args.seed, config=cfg,
                      augment=True, progress=not args.quiet, overwrite=True, amp=args.amp)
    log(f"judge: test accuracy {res.test_accuracy} in {res.seconds:.0f} s")
    return path, {"path": str(path), "trained_here": True, "config": cfg.to_dict(), "epochs": args.judge_epochs,
                  "test_accuracy": res.test_accuracy, "seconds": res.seconds}


def run_variant(name: str, args: argparse.Namespace, out: Path, data: Path, judge: Path,
                train_data: Path | None = None) -> dict[str, Any]:
    from dsvae.evaluation.protocol import evaluate
    from dsvae.evaluation.targets import check_targets
    from dsvae.training.trainer import train

    model, overrides = variant_spec(name, args)
    if model == "cdsvae":
        overrides = {**parse_sets(args.set), **overrides}
    elif args.set_dsvae:
        overrides = parse_sets(args.set_dsvae)
    safe = name.replace("+", "plus_").replace("-", "minus_")
    run_dir = out / "runs" / safe
    results_file = run_dir / "RESULTS.json"
    if results_file.is_file() and not args.overwrite:
        log(f"{name}: reusing {results_file}")
        return json.loads(results_file.read_text())
    log(f"{name}: training {model} preset {args.preset} with {overrides or 'no overrides'} "
        f"for {args.minutes} min")
    # no epoch cap unless asked for: the wall-clock budget (or --max-steps) ends every variant
    epochs = args.epochs if args.epochs is not None or args.max_steps is not None else 1e6
    # --curve keeps every periodic checkpoint, one each --curve-every steps
    periodic = dict(checkpoint_every=args.curve_every, keep_checkpoints=10**6) if args.curve else {}
    res = train(data=str(train_data or data), out=str(run_dir), model=model, preset=args.preset, model_config=overrides,
                max_minutes=args.minutes, epochs=epochs, max_steps=args.max_steps, amp=args.amp,
                channels_last=not args.no_channels_last,
                lr=args.lr, lr_schedule=args.lr_schedule, lr_decay_end=args.lr_decay_end, ema_decay=args.ema_decay,
                bn_recalibrate=args.bn_recalibrate, polish_minutes=args.polish_minutes, batch_size=args.batch_size,
                seed=args.seed, progress=not args.quiet, overwrite=True, sample_every=args.sample_every, **periodic)
    log(f"{name}: {res.step} steps in {res.seconds:.0f} s; last metrics {res.metrics}")
    # the run folder, not res.model: its weight average when it kept one (what dsvae.load gives)
    report = evaluate(run_dir, judge, data, repeats=args.repeats, limit=args.eval_limit, amp=args.eval_amp,
                      seed=args.seed, progress=not args.quiet, name=name)
    resolved = json.loads((run_dir / "config.json").read_text())["train"]
    report["training"] = {"model": model, "preset": args.preset, "overrides": overrides, "steps": res.step,
                          "lr_schedule": resolved["lr_schedule"],
                          "lr_decay_end": resolved["lr_decay_end"], "ema_decay": resolved["ema_decay"],
                          "bn_recalibrate": resolved.get("bn_recalibrate", 0),
                          "polish_minutes": resolved.get("polish_minutes", 0), "polished": res.polished,
                          "data": str(train_data or data), "mix": args.mix,
                          "seconds": res.seconds, "minutes_budget": args.minutes, "run_dir": str(run_dir),
                          "final_metrics": res.metrics, "torch_threads": torch.get_num_threads(),
                          "parameters": res.model.num_parameters()}
    report["targets"] = check_targets(report)
    if args.curve:
        report["curve"] = quality_curve(run_dir, judge, data, args)
    results_file.write_text(json.dumps(report, indent=2) + "\n")
    log(f"{name}: {report['markdown_row']} (eval {report['seconds']:.0f} s)")
    return report


def quality_curve(run_dir: Path, judge: Path, data: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Quality along one run (time to quality): each periodic checkpoint ``step_*.pt`` (the weights
    ``dsvae.load`` takes of it: the weight average when kept, its batch-norm statistics as averaged, not
    recomputed; no polish) judged on the first ``--curve`` test videos, one repeat, at the training seconds
    metrics.jsonl logged for its step (or for the last step logged before it, at most ``log_every`` steps
    earlier, when the time budget ended the run between two log lines)."""
    from dsvae.evaluation.protocol import evaluate

    seconds: dict[int, float] = {}
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                if "step" in row and "time" in row:
                    seconds[int(row["step"])] = float(row["time"])
    files = sorted((run_dir / "checkpoints").glob("step_*.pt"))
    if len(files) > args.curve_max:  # evenly spaced, the last one included
        files = [files[round(i * (len(files) - 1) / (args.curve_max - 1))] for i in range(args.curve_max)]
    points = []
    for file in files:
        r = evaluate(file, judge, data, repeats=1, limit=args.curve, amp=args.eval_amp, seed=args.seed,
                     progress=False, name=file.stem)
        step = r["model"]["step"]
        logged = [s for s in seconds if s <= step]
        point = {"step": step, "seconds": seconds[max(logged)] if logged else None, "checkpoint": str(file),
                 "action_accuracy": r["dynamic"]["action_accuracy"]["mean"],
                 "inception_score": r["dynamic"]["inception_score"]["mean"], "h_yx": r["dynamic"]["h_yx"]["mean"],
                 "static_attribute_accuracy": r["static"]["attribute_accuracy"]["mean"],
                 "swap_attribute_accuracy": r["swap"]["attribute_accuracy"]["mean"], "n_videos": r["n_videos"]}
        points.append(point)
        log(f"curve: step {step} ({point['seconds'] or 0:.0f} s): dynamic accuracy "
            f"{100 * point['action_accuracy']:.2f}%, IS {point['inception_score']:.3f}, static / swap attributes "
            f"{100 * point['static_attribute_accuracy']:.2f}% / {100 * point['swap_attribute_accuracy']:.2f}%")
    return points


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def write_table(out: Path, args: argparse.Namespace, reports: list[dict[str, Any]], judge_info: dict[str, Any],
                data: Path, hw: dict[str, Any], started: float) -> str:
    from dsvae.evaluation.protocol import markdown_row
    from dsvae.evaluation.targets import targets_table

    header = markdown_row("x", {})[0]
    first = header.splitlines()[0]
    n_cols = first.count("|") - first.count("\\|") - 2  # value columns ("\|" is an escaped pipe inside a cell)
    lines = [f"# Sprites: DSVAE vs improved DSVAE (cdsvae), preset `{args.preset}`", "",
             "## Literature (dynamic test only)", "", header]
    for label, acc, is_, hyx, hy in LITERATURE:
        cells = [_pct(acc), f"{is_:.3f}", f"{hyx:.3g}", f"{hy:.3f}"] + ["-"] * (n_cols - 4)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "## This pipeline", "", header]
    lines += [r["markdown_row"] for r in reports]
    # what the judge reads on the real test videos (the ceiling; results files of older versions lack it)
    lines += [r["markdown_real_row"] for r in reports if "markdown_real_row" in r][:1]
    if reports:
        lines += ["", "## Targets (issue 7), per variant", "", targets_table([(r["name"], r) for r in reports])]
    lines += ["", "| variant | model | overrides | steps | train s | eval videos | repeats |", "|---|---|---|---:|---:|---:|---:|"]
    for r in reports:
        t = r["training"]
        over = ", ".join(f"{k}={v}" for k, v in t["overrides"].items()) or "-"
        lines.append(f"| {r['name']} | {t['model']} | {over} | {t['steps']} | {t['seconds']:.0f} | "
                     f"{r['n_videos']} | {r['repeats']} |")
    for r in reports:
        if r.get("curve"):
            lines += ["", f"### Along the run: {r['name']} (periodic checkpoints, first {r['curve'][0]['n_videos']} "
                      "test videos, 1 repeat)", "",
                      "| step | train s | dynamic acc | IS | H(y\\|x) | static attr | swap attr |",
                      "|---:|---:|---:|---:|---:|---:|---:|"]
            for pt in r["curve"]:
                secs = "-" if pt["seconds"] is None else f"{pt['seconds']:.0f}"
                lines.append(f"| {pt['step']} | {secs} | {_pct(pt['action_accuracy'])} | {pt['inception_score']:.3f} | "
                             f"{pt['h_yx']:.3g} | {_pct(pt['static_attribute_accuracy'])} | "
                             f"{_pct(pt['swap_attribute_accuracy'])} |")
    lines += ["", "## Setup", "",
              f"- data: `{data}` ({reports[0]['data']['source'] if reports else '?'}), test split, "
              f"{reports[0]['selection'] if reports else ''}",
              f"- judge: `{judge_info['path']}`, test accuracy {judge_info.get('test_accuracy')}",
              f"- training: preset `{args.preset}`, budget {args.minutes} min per variant (wall clock)"
              + (f" or {args.max_steps} steps" if args.max_steps else "") + f", amp {args.amp}, seed {args.seed}; "
              + ("no labels used" if args.mix != "characters" else
                 "weak supervision: the training set is motion-mixed by the data set's character ids")
              + (f"; trained on a motion-mixed train split (--mix {args.mix}, share {args.mix_share})"
                 if args.mix != "none" else "")
              + " (results reused from an earlier call keep their own budget: see steps / train s)",
              f"- evaluation: `dsvae.evaluation.protocol.evaluate`, repeats {args.repeats}, amp {args.eval_amp}",
              f"- hardware: {hw}",
              f"- pipeline wall time: {time.time() - started:.0f} s",
              ""]
    text = "\n".join(lines)
    (out / "RESULTS.md").write_text(text)
    payload = {"args": vars(args), "hardware": hw, "judge": judge_info, "data": str(data),
               "literature": [dict(zip(("name", "action_accuracy", "inception_score", "h_yx", "h_y"), row))
                              for row in LITERATURE],
               "variants": reports, "seconds": time.time() - started}
    (out / "RESULTS.json").write_text(json.dumps(payload, indent=2) + "\n")
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--data", choices=["procedural", "lpc"], default="lpc", help="data source (default lpc)")
    p.add_argument("--data-file", help="data set .h5: used when it exists, else built there")
    p.add_argument("--sheets", help="folder of raw LPC layers (--data lpc, to build the data set)")
    p.add_argument("--mix", choices=["none", "colours", "characters"], default="none",
                   help="train on a motion-mixed train split, pairing sequences by colours (no labels) or by "
                        "character ids (weak supervision); default none")
    p.add_argument("--mix-share", type=float, default=0.5, help="share of mixed sequences with --mix (default 0.5)")
    p.add_argument("--judge", help="judge .pt: used when it exists, else trained there (default OUT/judge.pt)")
    p.add_argument("--judge-size", type=int, default=32, help="judge frame size when training one (default 32)")
    p.add_argument("--judge-widths", default="auto",
                   help="judge encoder widths: auto (default: 32-64-128 with LSTM hidden 128 at 32x32, the field "
                        "judge otherwise), field, or a comma list")
    p.add_argument("--judge-epochs", type=float, default=4, help="judge training epochs (default 4)")
    p.add_argument("--preset", default="cpu", help="model preset of every variant (default cpu)")
    p.add_argument("--variants", default="dsvae,plain,+static,+dynamic,+mi,all",
                   help="comma-separated variants (default dsvae,plain,+static,+dynamic,+mi,all)")
    p.add_argument("--minutes", type=float, default=60, help="training wall-clock minutes per variant (default 60)")
    p.add_argument("--epochs", type=float, help="training epoch cap (default: none, --minutes ends a run)")
    p.add_argument("--max-steps", type=int, help="training step limit")
    p.add_argument("--lr", type=float, help="learning rate (default: the preset's)")
    p.add_argument("--lr-schedule", choices=["constant", "cosine", "linear"],
                   help="learning rate over each variant's budget (default: the preset's, constant except for "
                        "cdsvae cpu-best; see dsvae train --help)")
    p.add_argument("--lr-decay-end", type=float,
                   help="share of the budget over which the decay runs, then held at its final rate (default 1)")
    p.add_argument("--ema-decay", type=float,
                   help="keep a moving average of the weights with this decay and evaluate it (default: the "
                        "preset's; 0 = off)")
    p.add_argument("--bn-recalibrate", type=int, metavar="N",
                   help="recompute the weight average's batch-norm statistics over N training batches after "
                        "training (default: the preset's; 0 = off)")
    p.add_argument("--polish-minutes", type=float, metavar="M",
                   help="after training, refit the decoder of the evaluated weights to the posterior means for M "
                        "minutes (dsvae polish; default: the preset's, 0 = off); not part of --minutes")
    p.add_argument("--batch-size", type=int, help="batch size (default: the preset's)")
    p.add_argument("--amp", default="bf16", help="training autocast: bf16 (default) or off")
    p.add_argument("--no-channels-last", action="store_true",
                   help="keep convolution weights NCHW (default: channels_last, a speed option; same results)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="cdsvae config override for every cdsvae variant (repeatable)")
    p.add_argument("--set-dsvae", action="append", default=[], metavar="KEY=VALUE",
                   help="config override of the dsvae variant (repeatable)")
    p.add_argument("--prior-weight", type=float, default=1.0, help="prior_swap_weight of +prior / all+prior")
    p.add_argument("--pair-share", type=float, default=0.5, help="pair_share of all+pair")
    p.add_argument("--anneal-steps", type=int, default=2000, help="kl_anneal_steps of +anneal")
    p.add_argument("--eval-limit", type=int, help="evaluate the first N test videos only (default: all)")
    p.add_argument("--repeats", type=int, default=5, help="evaluation repeats (default 5)")
    p.add_argument("--eval-amp", default="bf16", choices=["off", "bf16"], help="evaluation autocast (default bf16)")
    p.add_argument("--sample-every", type=int, default=0, help="training sample GIF interval (default 0 = off)")
    p.add_argument("--threads", type=int,
                   help="torch CPU threads (default: torch's choice; 1 is several times faster on a loaded machine)")
    p.add_argument("--curve", type=int, metavar="N",
                   help="time to quality: also judge every periodic checkpoint of each run on the first N test "
                        "videos (1 repeat) and tabulate quality against training seconds (default: off)")
    p.add_argument("--curve-every", type=int, default=500, metavar="STEPS",
                   help="with --curve, a checkpoint every STEPS training steps, all kept (default 500)")
    p.add_argument("--curve-max", type=int, default=8, metavar="K",
                   help="with --curve, judge at most K of them, evenly spaced, the last included (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="redo steps whose outputs exist")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)

    if args.curve is not None and (args.curve <= 0 or args.curve_every <= 0 or args.curve_max < 2):
        print("error: --curve and --curve-every must be positive and --curve-max at least 2", file=sys.stderr)
        return 2
    if args.threads is not None:
        if args.threads <= 0:
            print("error: --threads must be positive", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    started = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    try:
        for v in variants:
            variant_spec(v, args)  # fail before any work on a bad name
        hw = hardware()
        log(f"hardware: {hw}")
        data = build_data(args, out)
        judge, judge_info = get_judge(args, out, data)
        train_data = mixed_training_set(args, out, data)
        reports = []
        for v in variants:
            reports.append(run_variant(v, args, out, data, judge, train_data))
            write_table(out, args, reports, judge_info, data, hw, started)
        hw["load_average_end"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
        print(write_table(out, args, reports, judge_info, data, hw, started))
    except DsvaeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
