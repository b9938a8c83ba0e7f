"""``dsvae fit-prior``: fit a run's static prior to its training codes (dsvae.training.static_prior)."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Fit a mixture of diagonal Gaussians to the static codes (posterior means of f) that a trained DSVAE /
cdsvae gives the training sequences, and draw f from it from then on (the dynamic test, dsvae sample
--fix dynamic, the demo) instead of from N(0, I): draws from N(0, I) fall between the looks the encoder
uses and decode as blends. Ex-post density estimation: no labels read, no weight of the model changed.

Written back into the run's last checkpoint (atomically), for its trained weights and its weight average
when it keeps one; a mixture fitted before is replaced. The same runs at the end of training when the
model is built with --set static_prior_components=K. --out writes the fitted checkpoint to a new run
folder (or .pt file) instead and leaves the source as it was: to compare the N(0, I) and fitted priors of
one checkpoint, or to fit a periodic checkpoint (step_*.pt), which is never changed in place.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit-prior", help="fit a trained run's static prior to its training codes (seconds)",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run folder (its last checkpoint) or a checkpoint file")
    p.add_argument("--out", help="write the fitted checkpoint to this new run folder (its checkpoints/last.pt, with "
                                 "the source run's config.json) or .pt file, and leave --run as it was; needed "
                                 "when --run is a periodic checkpoint (step_*.pt)")
    p.add_argument("--data", required=True, help="data set .h5 file whose training split is encoded")
    p.add_argument("--components", type=int, default=64, help="Gaussians in the mixture (default 64)")
    p.add_argument("--iterations", type=int, default=200, help="at most this many EM rounds (default 200)")
    p.add_argument("--device", default="auto", help="auto (GPU when there is one), cpu or cuda")
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "off"],
                   help="autocast precision of the encoder: auto = bf16 on GPU, fp32 on CPU")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial means (default 0)")
    p.add_argument("--lazy", action="store_true", help="read sequences from the file per batch instead of in memory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_fit)


def _fit(args: argparse.Namespace) -> int:
    from dsvae.training.static_prior import fit_static_prior_run

    done = fit_static_prior_run(args.run, args.data, components=args.components, iterations=args.iterations,
                                device=args.device, amp=args.amp, seed=args.seed, resident=not args.lazy,
                                progress=not args.quiet, out=args.out)
    for which in ("raw", "ema"):
        if which in done:
            r = done[which]
            print(f"{'weight average' if which == 'ema' else 'trained weights'}: {r['components']} components fitted "
                  f"to {r['sequences']} codes in {r['iterations']} EM rounds "
                  f"({'converged' if r['converged'] else 'not converged'}), {r['seconds']:.0f} s; log-likelihood "
                  f"{r['log_likelihood']:.2f} nats per code (under N(0, I): {r['standard_log_likelihood']:.2f})")
    print(f"written to {done['checkpoint']}")
    return 0
