"""``dsvae swap``, ``dsvae sample`` and ``dsvae interpolate``: look at what a trained model does with codes."""

from __future__ import annotations

import argparse
import sys
import warnings

SWAP_DESCRIPTION = """\
Swap codes between two sequences and write a labelled GIF grid: rows A, B, their reconstructions,
"A static + B dynamics" = decode(f_A, z_B) and "B static + A dynamics" = decode(f_B, z_A), from
posterior means. --random K draws K pairs (one row per pair).

Own sequences (--a / --b): a GIF or other animated image, a video (needs `pip install av`), a
horizontal PNG strip of square frames, or a folder of frame images (natural name order). Frames are
resized to the model's size; RGBA is composited over black; greyscale is refused. The model gets T
frames (--frames, else the data set's, else 8): fewer is an error, from more the first T are used.
"""


def _view_options(p: argparse.ArgumentParser, out_default: str) -> None:
    p.add_argument("--run", required=True, help="run folder or checkpoint file of the model")
    p.add_argument("--out", default=out_default, help=f"output GIF (default {out_default})")
    p.add_argument("--split", default="test", help="data set split of the indices (default test)")
    p.add_argument("--frames", type=int, help="frames per sequence (default: the data set's, else 8)")
    p.add_argument("--png", action="store_true", help="also write a PNG strip (frames left to right) beside the GIF")
    p.add_argument("--scale", type=int, default=4, help="nearest-neighbour upscaling (default 4)")
    p.add_argument("--duration", type=int, default=150, help="frame duration in milliseconds (default 150)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("swap", help="swap static and dynamic codes of two sequences (GIF grid)",
                       description=SWAP_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--data", help="data set .h5 file (not needed when both --a and --b are given)")
    s.add_argument("--pair", type=int, nargs="+", metavar="I",
                   help="indices I J of A and B in the split (with only --a or --b: the other one's index)")
    s.add_argument("--a", help="own sequence for A instead of a data set index")
    s.add_argument("--b", help="own sequence for B instead of a data set index")
    s.add_argument("--random", type=int, metavar="K", help="K random pairs from the split, one row each")
    s.add_argument("--seed", type=int, default=0, help="seed of --random (default 0)")
    _view_options(s, "swap.gif")
    s.set_defaults(func=_swap)

    m = sub.add_parser("sample", help="keep one part of a sequence's code and sample the other (GIF grid)",
                       description="Keep the static code of a sequence and draw dynamics from the model's prior "
                                   "(--fix static; shown as the per-step means of the prior's roll-out, or its "
                                   "samples with --prior-samples), or keep its dynamics and draw static codes "
                                   "from its static prior (--fix dynamic; N(0, I), or the mixture dsvae "
                                   "fit-prior fitted). Needs a model with a sequence prior. "
                                   "--grid instead decodes a uniform grid over the 2-D latent plane of an "
                                   "adversarial autoencoder (z_dim 2) into one PNG.")
    m.add_argument("--data", help="data set .h5 file")
    m.add_argument("--fix", choices=["static", "dynamic"], default="static", help="part kept (default static)")
    m.add_argument("--index", type=int, help="index of the sequence in the split")
    m.add_argument("--input", help="own sequence instead of --index (as in dsvae swap --a)")
    m.add_argument("--n", type=int, default=4, help="number of samples (default 4)")
    m.add_argument("--seed", type=int, default=0, help="seed of the prior draws (default 0)")
    m.add_argument("--prior-samples", action="store_true",
                   help="--fix static: show the prior's sampled dynamics instead of their per-step means")
    m.add_argument("--grid", action="store_true",
                   help="AAE with a 2-D latent: decode a uniform grid over the latent plane into one PNG (--out X.png)")
    m.add_argument("--grid-size", type=int, default=15, help="--grid: points per side (default 15)")
    m.add_argument("--grid-range", type=float, nargs=2, default=(-10.0, 10.0), metavar=("LO", "HI"),
                   help="--grid: latent range on both axes (default -10 10)")
    _view_options(m, "sample.gif")
    m.set_defaults(func=_sample)

    i = sub.add_parser("interpolate", help="walk the static or dynamic code from one sequence to another (GIF grid)",
                       description="Rows A, B, then --steps rows (both ends included) walking the static code "
                                   "(--part static, keeping A's dynamics) or the dynamic code (--part dynamic, "
                                   "keeping A's static code) in a straight line from A's to B's.")
    i.add_argument("--data", help="data set .h5 file (not needed when both --a and --b are given)")
    i.add_argument("--pair", type=int, nargs="+", metavar="I", help="indices I J of A and B in the split")
    i.add_argument("--a", help="own sequence for A instead of a data set index")
    i.add_argument("--b", help="own sequence for B instead of a data set index")
    i.add_argument("--steps", type=int, default=5, help="rows from A to B, both included (default 5)")
    i.add_argument("--part", choices=["static", "dynamic"], default="static", help="code walked (default static)")
    _view_options(i, "interp.gif")
    i.set_defaults(func=_interpolate)


def _view_kwargs(args: argparse.Namespace) -> dict:
    return dict(out=args.out, split=args.split, frames=args.frames, png=args.png, scale=args.scale,
                duration_ms=args.duration, overwrite=args.overwrite, device=args.device)


def _pair(args: argparse.Namespace):
    if args.pair is None:
        return None
    return args.pair[0] if len(args.pair) == 1 else tuple(args.pair)


def _run(fn, **kwargs) -> int:
    """Call a library command; print where it wrote and, on stderr, a note per dropped-frames warning."""
    from dsvae.viz.video_io import FramesDropped

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FramesDropped)
        out = fn(**kwargs)
    for w in caught:  # only after success: a failed command prints its one error line alone
        if issubclass(w.category, FramesDropped):
            print(f"dsvae: note: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    print(f"wrote {out}")
    if kwargs.get("png"):
        print(f"wrote {out.with_suffix('.png')}")
    return 0


def _swap(args: argparse.Namespace) -> int:
    from dsvae.viz.swap import swap

    return _run(swap, run=args.run, data=args.data, pair=_pair(args), a=args.a, b=args.b, random_pairs=args.random,
                seed=args.seed, **_view_kwargs(args))


def _sample(args: argparse.Namespace) -> int:
    from dsvae.viz.swap import sample

    if args.grid:
        from dsvae.viz.baselines import latent_grid

        out = args.out if args.out != "sample.gif" else "latent_grid.png"
        path = latent_grid(args.run, out, grid_size=args.grid_size, grid_range=tuple(args.grid_range),
                           scale=max(1, args.scale // 2), device=args.device, overwrite=args.overwrite)
        print(f"wrote {path}")
        return 0

    return _run(sample, run=args.run, data=args.data, fix=args.fix, index=args.index, source=args.input, n=args.n,
                seed=args.seed, prior_means=not args.prior_samples, **_view_kwargs(args))


def _interpolate(args: argparse.Namespace) -> int:
    from dsvae.viz.swap import interpolate

    return _run(interpolate, run=args.run, data=args.data, pair=_pair(args), a=args.a, b=args.b, steps=args.steps,
                part=args.part, **_view_kwargs(args))
