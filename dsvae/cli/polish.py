"""``dsvae polish``: refit a trained model's decoder to its posterior means (dsvae.training.polish)."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Refit the decoder of a trained run to decode its encoder's posterior means (f_mean, z_mean) of the
training sequences: everything else frozen (the decoder's input layers too, unless --all-layers),
squared error, Adam with a cosine decay to 0 over the budget, then the decoder's batch-norm
statistics recomputed. A decoder trained on posterior samples draws close classes (two skin
palettes) as their blend; the polish sharpens them. No labels are used.

The weights dsvae.load uses (the weight average when the run kept one) are polished and written back
into the run's last checkpoint (atomically); checkpoints/step_*.pt keep the unpolished weights. The
same runs at the end of training with dsvae train --polish-minutes M. --out writes the polish to a new
run folder (or .pt file) instead and leaves the source as it was: to compare polishes of one checkpoint,
or to polish a periodic checkpoint (step_*.pt), which is never polished in place.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("polish", help="refit a trained model's decoder to its posterior means (a few minutes)",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run folder (its last checkpoint) or a checkpoint file")
    p.add_argument("--out", help="write the polished checkpoint to this new run folder (its checkpoints/last.pt, with "
                                 "the source run's config.json) or .pt file, and leave --run as it was; needed "
                                 "when --run is a periodic checkpoint (step_*.pt)")
    p.add_argument("--data", required=True, help="data set .h5 file whose training split the run was trained on")
    p.add_argument("--minutes", type=float, help="wall-clock budget (default 10 unless --steps is given)")
    p.add_argument("--steps", type=int, help="optimisation steps (with --minutes: whichever ends first)")
    p.add_argument("--lr", type=float, default=3e-4, help="initial Adam learning rate, decayed to 0 (default 3e-4)")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per step (default 32)")
    p.add_argument("--bn-batches", type=int, default=200,
                   help="batches to recompute the decoder's batch-norm statistics with afterwards (default 200)")
    p.add_argument("--all-layers", action="store_true",
                   help="also refit the decoder's layers that read the codes (by default they stay as trained: "
                        "refit to the means alone they respond to unused static dimensions, and codes drawn from "
                        "the prior decode worse)")
    p.add_argument("--swap-weight", type=float, default=0.0, metavar="W",
                   help="also ask that each sequence's f decoded with another's z encodes back to those codes "
                        "(the frozen encoder as critic; the negative log-likelihood under its posterior, times W). "
                        "Default 0 = off; costs a second decode and an encode per step")
    p.add_argument("--prior-weight", type=float, default=0.0, metavar="W",
                   help="also ask that each sequence's z decoded with a look drawn from the static prior (the "
                        "dynamic test's decode) encodes back to that z (the frozen encoder as critic, times W). "
                        "Default 0 = off; costs a second decode and an encode per step")
    p.add_argument("--pair-share", type=float, default=0.0, metavar="S",
                   help="decode this share (0-1) of each batch from the static code of a colour neighbour (one of "
                        "the sequence's --neighbours nearest training sequences by colour histogram: the same "
                        "character in another motion, found without labels), its own frames the target: the swap "
                        "and static tests' decode with a real target. Default 0 = off; no extra cost per step")
    p.add_argument("--neighbours", type=int, default=3, metavar="K",
                   help="colour neighbours a --pair-share partner is drawn from (default 3, as dsvae data mix)")
    p.add_argument("--device", default="auto", help="auto (GPU when there is one), cpu or cuda")
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "off"],
                   help="autocast precision: auto = bf16 on GPU, fp32 on CPU")
    p.add_argument("--seed", type=int, default=0, help="seed of the batch draws (default 0)")
    p.add_argument("--lazy", action="store_true", help="read sequences from the file per batch instead of in memory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_polish)


def _polish(args: argparse.Namespace) -> int:
    from dsvae.training.polish import polish_run

    minutes = 10.0 if args.minutes is None and args.steps is None else args.minutes
    done = polish_run(args.run, args.data, minutes=minutes, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                      bn_batches=args.bn_batches, keep_input_layers=not args.all_layers,
                      swap_weight=args.swap_weight, prior_weight=args.prior_weight, pair_share=args.pair_share,
                      neighbours=args.neighbours, device=args.device,
                      amp=args.amp, seed=args.seed, resident=not args.lazy, progress=not args.quiet,
                      out=args.out)
    terms = "".join(f", {name} consistency {done[f'{name}_start']:.4g} -> {done[f'{name}_end']:.4g}"
                    for name in ("swap", "prior") if done[f"{name}_weight"])
    if done["pair_share"]:
        terms += (f", {100 * done['pair_share']:g}% of the decodes from a colour neighbour's f (same character for "
                  f"{100 * done['pair_precision']:.2f}% of the {done['pair_neighbours']} neighbours)")
    print(f"polished the decoder of the {'weight average' if done['weights'] == 'ema' else 'trained weights'}: "
          f"{done['steps']} steps in {done['seconds']:.0f} s, reconstruction {done['loss_start']:.4g} -> "
          f"{done['loss_end']:.4g}{terms}; written to {done['checkpoint']}")
    return 0
