"""``dsvae baseline-outputs``: figures and summary numbers of a trained image-level baseline."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "baseline-outputs", help="reconstructions, prior samples, class/style grids and interpolations of a baseline",
        description="Write the figures of a trained image-level baseline (ae, vae, cvae, aae, aae-sup, aae-semi): "
                    "reconstructions.png, samples.png, class_grid.png / style_grid.png, interpolation.gif and "
                    "summary.json (reconstruction MSE, classification error of the model's label).",
    )
    p.add_argument("--run", required=True, help="run folder or checkpoint of a baseline")
    p.add_argument("--data", required=True, help="data set .h5 file")
    p.add_argument("--out", required=True, help="folder to write the outputs to")
    p.add_argument("--split", default="test", help="data split to reconstruct and evaluate (default test)")
    p.add_argument("-n", "--n", type=int, default=8, help="images per row (default 8)")
    p.add_argument("--grid", action="store_true",
                   help="also decode a uniform grid over the 2-D latent plane (an AAE with z_dim 2) into one image")
    p.add_argument("--grid-size", type=int, default=15, help="points per grid side (default 15)")
    p.add_argument("--grid-range", type=float, nargs=2, default=(-10.0, 10.0), metavar=("LO", "HI"),
                   help="latent range of the grid on both axes (default -10 10)")
    p.add_argument("--steps", type=int, default=12, help="interpolation steps (default 12)")
    p.add_argument("--limit", type=int, help="evaluate only the first N sequences of the split")
    p.add_argument("--seed", type=int, default=0, help="seed of the prior samples and interpolation pairs")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=_outputs)


def _outputs(args: argparse.Namespace) -> int:
    import json

    from dsvae.training.trainer import resolve_device
    from dsvae.viz.baselines import baseline_outputs

    paths = baseline_outputs(
        args.run, args.data, args.out, split=args.split, n=args.n, grid=args.grid, grid_size=args.grid_size,
        grid_range=tuple(args.grid_range), steps=args.steps, limit=args.limit, seed=args.seed,
        device=resolve_device(args.device), overwrite=args.overwrite,
    )
    summary = json.loads(paths["summary.json"].read_text())
    numbers = ", ".join(f"{k} {summary[k]:.4g}" for k in ("recon_mse", "classification_error") if k in summary)
    print(f"wrote {len(paths)} files to {paths['summary.json'].parent} ({numbers})")
    return 0
