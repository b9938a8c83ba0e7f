"""``dsvae data build|info|preview|mix``."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="build, inspect and preview data sets")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    b = dsub.add_parser("build", help="build a data set HDF5 file (real Sprites from LPC layers, or procedural)")
    b.add_argument("--source", choices=["lpc", "procedural"], default="procedural",
                   help="lpc: compose the real Sprites set from raw LPC layers; procedural: the embedded default")
    b.add_argument("--out", required=True, help="output .h5 file")
    b.add_argument("--sheets", help="folder of raw LPC layers (body/, bottomwear/, topwear/, hair/, shoes/)")
    b.add_argument("--download", action="store_true",
                   help="fetch the LPC layers from the upstream repository into the cache first (checksummed)")
    b.add_argument("--cache-dir", help="where downloaded layers are kept (default: ~/.cache/dsvae/sprites-lpc)")
    b.add_argument("--base-url", help="upstream URL to download the layers from (default: YingzhenLi/Sprites on GitHub)")
    b.add_argument("--checksums", help="SHA256SUMS file to verify the layers against")
    b.add_argument("--seed", type=int, default=0, help="procedural: random seed of the generator (default 0)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=_build)

    i = dsub.add_parser("info", help="print splits, shapes, label counts and factor names of a data set")
    i.add_argument("file")
    i.set_defaults(func=_info)

    v = dsub.add_parser("preview", help="write a GIF grid of a few labelled sequences")
    v.add_argument("file")
    v.add_argument("--out", required=True, help="output .gif")
    v.add_argument("--split", default="train")
    v.add_argument("-n", "--n", type=int, default=8, help="number of sequences (default 8)")
    v.add_argument("--seed", type=int, default=0, help="which sequences: random draw with this seed")
    v.add_argument("--scale", type=int, default=4, help="nearest-neighbour upscaling (default 4)")
    v.add_argument("--duration", type=int, default=150, help="frame duration in milliseconds (default 150)")
    v.add_argument("--png", action="store_true", help="also write a PNG grid beside the GIF")
    v.add_argument("--overwrite", action="store_true")
    v.set_defaults(func=_preview)

    m = dsub.add_parser("mix", help="write a training set in which the motion changes inside some sequences",
                        description="Copy the train split of FILE to --out with a motion change in a share of its "
                                    "sequences: from a random frame on, another sequence of the same character. "
                                    "Only the attributes stay constant in every sequence, so a sequential model "
                                    "learns the facing direction as dynamics. --pair-by characters uses the data "
                                    "set's character ids (weak supervision); --pair-by colours uses no labels "
                                    "(nearest neighbours by colour histogram).")
    m.add_argument("file", help="data set .h5 file (its train split is read)")
    m.add_argument("--out", required=True, help="output .h5 file (a train split only)")
    m.add_argument("--share", type=float, default=0.5, help="share of sequences given a motion change (default 0.5)")
    m.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    m.add_argument("--image-size", type=int, help="store frames at this size (default: the data set's)")
    m.add_argument("--pair-by", choices=("colours", "characters"), default="colours",
                   help="how the same character is found: colour histograms (default, no labels) or its ids")
    m.add_argument("--neighbours", type=int, default=3,
                   help="with --pair-by colours: pick a partner among this many nearest sequences (default 3)")
    m.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    m.add_argument("--quiet", action="store_true", help="no progress bar")
    m.set_defaults(func=_mix)


def _build(args: argparse.Namespace) -> int:
    from dsvae.errors import DsvaeError

    if args.source == "procedural":
        if args.sheets or args.download:
            raise DsvaeError("--sheets/--download only apply to --source lpc")
        from dsvae.data.procedural import build_procedural

        out = build_procedural(args.out, seed=args.seed, overwrite=args.overwrite, progress=not args.quiet)
    else:
        from dsvae.data.lpc import build_lpc, download_layers

        if bool(args.sheets) == bool(args.download):
            raise DsvaeError("--source lpc needs exactly one of --sheets DIR or --download")
        sheets = args.sheets
        checksums = args.checksums
        if args.download:
            sheets = download_layers(cache_dir=args.cache_dir, base_url=args.base_url, progress=not args.quiet)
        out = build_lpc(sheets, args.out, checksums=checksums, overwrite=args.overwrite, progress=not args.quiet)
    print(f"wrote {out}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from dsvae.data.inspect import describe

    print(describe(args.file))
    return 0


def _preview(args: argparse.Namespace) -> int:
    from dsvae.data.inspect import preview

    out = preview(args.file, args.out, split=args.split, n=args.n, seed=args.seed, scale=args.scale,
                  duration_ms=args.duration, png=args.png, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0


def _mix(args: argparse.Namespace) -> int:
    from dsvae.data.mixing import mix_motions

    out = mix_motions(args.file, args.out, share=args.share, seed=args.seed, image_size=args.image_size,
                      overwrite=args.overwrite, progress=not args.quiet, pairing=args.pair_by,
                      neighbours=args.neighbours)
    print(f"wrote {out}")
    return 0
