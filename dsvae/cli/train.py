"""``dsvae train``: train any model of the registry (also under ``torchrun``)."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    from dsvae.models import MODELS

    p = sub.add_parser("train", help="train a model (DSVAE or a baseline) on a data set",
                       description="Train a model. Scale out with: torchrun --nproc_per_node N -m dsvae train ...")
    p.add_argument("--model", choices=sorted(MODELS), help="model to train (default dsvae)")
    p.add_argument("--data", required=True, help="data set .h5 file (dsvae data build)")
    p.add_argument("--out", required=True, help="run folder to create (or resume)")
    p.add_argument("--preset", help="model/training preset (default paper; cpu, tiny, ...)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model config value, e.g. --set z_dim=16 (JSON values); repeatable")
    p.add_argument("--label", choices=["action", "body", "bottom", "top", "hair"],
                   help="label factor of the cvae / aae-sup / aae-semi baselines (shorthand for --set label=...)")
    p.add_argument("--labeled", type=int, metavar="N",
                   help="aae-semi: number of labelled training images (default 100; shorthand for --set labeled=N)")
    p.add_argument("--epochs", type=float, help="epochs to train (default: the preset's)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimisation steps")
    p.add_argument("--max-minutes", type=float, help="stop (and checkpoint) after this much wall time")
    p.add_argument("--batch-size", type=int, help="global batch size (default: the preset's)")
    p.add_argument("--lr", type=float, help="Adam learning rate (default: the preset's)")
    p.add_argument("--lr-schedule", choices=["constant", "cosine", "linear"],
                   help="learning rate over the training budget (steps or --max-minutes, whichever ends first): "
                        "constant (default), or a cosine / linear decay to --min-lr-ratio times --lr")
    p.add_argument("--min-lr-ratio", type=float, help="final learning rate of a decay, as a share of --lr (default 0.05)")
    p.add_argument("--lr-decay-end", type=float,
                   help="share of the budget over which a decay runs; the rate then holds at its final value "
                        "(default 1: the decay spans the whole budget)")
    p.add_argument("--ema-decay", type=float,
                   help="also keep an exponential moving average of the weights with this decay (e.g. 0.999; "
                        "0 = off, the default unless the preset sets one); dsvae.load and eval use it by default")
    p.add_argument("--bn-recalibrate", type=int, metavar="N",
                   help="after training, recompute the batch-norm statistics of the weight average (--ema-decay) "
                        "over N training batches (forward passes only; 0 = off, the default unless the preset "
                        "sets one). Also on a finished run: --resume --max-steps <its step>")
    p.add_argument("--polish-minutes", type=float, metavar="M",
                   help="after training, refit the decoder of the weight average (or of the trained weights when "
                        "none is kept) to the posterior means for M minutes (0 = off, the default; see dsvae "
                        "polish). One process only")
    p.add_argument("--grad-clip", type=float, help="gradient norm clip, 0 = off (default 5)")
    p.add_argument("--device", default="auto", help="auto (GPU when there is one), cpu or cuda")
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "off"],
                   help="autocast precision: auto = bf16 on GPU, fp32 on CPU. On CPUs with AVX512_BF16/AMX, "
                        "--amp bf16 is about 2x faster (`dsvae bench` measures it here); use it with the default "
                        "allocator settings and --channels-last")
    p.add_argument("--channels-last", action="store_true",
                   help="store convolution weights NHWC (a speed option; results are unchanged)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (a speed option; the first steps compile for a minute or more)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--limit", type=int, help="use only the first N training sequences (quick runs)")
    p.add_argument("--lazy", action="store_true", help="read sequences from the file per batch instead of in memory")
    p.add_argument("--log-every", type=int, help="steps between metric lines (default 50)")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 500)")
    p.add_argument("--sample-every", type=int, help="steps between sample GIFs, 0 = only at the end (default 1000)")
    p.add_argument("--tensorboard", action="store_true", help="also log to RUN_DIR/tb (needs dsvae[tb])")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)


def parse_overrides(items: list[str]) -> dict:
    """KEY=VALUE pairs, values parsed as JSON when they parse (numbers, lists, true/false), else strings."""
    from dsvae.errors import DsvaeError

    out = {}
    for item in items:
        if "=" not in item:
            raise DsvaeError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _train(args: argparse.Namespace) -> int:
    from dsvae.training.trainer import train

    sample_every = args.sample_every
    model_config = parse_overrides(args.set)
    if args.label is not None:
        model_config["label"] = args.label
    if args.labeled is not None:
        model_config["labeled"] = args.labeled
    result = train(
        data=args.data, out=args.out, model=args.model, preset=args.preset,
        model_config=model_config or None, epochs=args.epochs, max_steps=args.max_steps,
        max_minutes=args.max_minutes, batch_size=args.batch_size, lr=args.lr, grad_clip=args.grad_clip,
        lr_schedule=args.lr_schedule, min_lr_ratio=args.min_lr_ratio, lr_decay_end=args.lr_decay_end,
        ema_decay=args.ema_decay, bn_recalibrate=args.bn_recalibrate, polish_minutes=args.polish_minutes,
        device=args.device, amp=args.amp, seed=args.seed, limit=args.limit, resident=False if args.lazy else None,
        log_every=args.log_every, checkpoint_every=args.checkpoint_every, sample_every=sample_every,
        tensorboard=args.tensorboard or None, channels_last=args.channels_last or None,
        compile=args.compile or None, progress=not args.quiet, resume=args.resume,
        overwrite=args.overwrite,
    )
    if result.rank == 0:
        terms = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items() if k in ("loss", "recon", "kl_f", "kl_z"))
        recal = (f"; batch-norm statistics recomputed over {result.bn_recalibrated} batches"
                 if result.bn_recalibrated else "")
        done = result.polished
        polish = (f"; decoder polished for {done['steps']} steps (reconstruction {done['loss_start']:.4g} -> "
                  f"{done['loss_end']:.4g})" if done else "")
        fits = result.static_prior or {}
        which = "trained weights and weight average" if "ema" in fits else "trained weights"
        prior = (f"; static prior fitted ({fits['raw']['components']} components, {which})" if fits else "")
        print(f"trained {result.step} steps in {result.seconds:.0f} s ({terms}){recal}{polish}{prior}; "
              f"run folder: {result.run_dir}")
    return 0
