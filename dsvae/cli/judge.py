"""``dsvae judge train|test``: the sequence classifier that scores generated sprites."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("judge", help="train or test the judge classifier used by `dsvae eval`",
                       description="The judge: DCGAN-64 frame encoder + bidirectional LSTM + five heads "
                                   "(action, body, bottom, top, hair), trained with full supervision.")
    jsub = p.add_subparsers(dest="judge_command", metavar="SUBCOMMAND", required=True)

    t = jsub.add_parser("train", help="train a judge on the train split of a data set",
                        description="Train a judge on the train split (kept in memory), then measure its "
                                    "per-head accuracy on the test split when the file has one.")
    t.add_argument("--data", required=True, help="data set .h5 file (dsvae data build)")
    t.add_argument("--out", required=True, help="judge file to write (.pt)")
    t.add_argument("--preset", default="field", choices=["field", "tiny"],
                   help="architecture: field = the literature's judge at 64x64 (default); tiny = 16x16 for tests")
    t.add_argument("--image-size", type=int, help="frame size for the preset (4 * 2**k; default the preset's)")
    t.add_argument("--epochs", type=float, default=5, help="passes over the train split (default 5)")
    t.add_argument("--batch-size", type=int, default=64, help="sequences per step (default 64)")
    t.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    t.add_argument("--lr-schedule", default="cosine", choices=["cosine", "constant"],
                   help="cosine: decay the learning rate to 0 over the run (default); constant")
    t.add_argument("--device", default="auto", help="auto (GPU when there is one), cpu or cuda")
    t.add_argument("--amp", default="auto", choices=["auto", "bf16", "off"],
                   help="autocast precision: auto = bf16 on GPU, fp32 on CPU")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--limit", type=int, help="train on the first N sequences only (quick runs)")
    t.add_argument("--augment", action="store_true",
                   help="light augmentation (random shifts of up to 2 px, pixel noise); off by default")
    t.add_argument("--overwrite", action="store_true", help="replace an existing judge file")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_train)

    s = jsub.add_parser("test", help="per-head accuracy of a judge on a split of a data set")
    s.add_argument("--judge", required=True, help="judge file (dsvae judge train)")
    s.add_argument("--data", required=True, help="data set .h5 file")
    s.add_argument("--split", default="test", help="split to test on (default test)")
    s.add_argument("--batch-size", type=int, default=256, help="sequences per batch (default 256)")
    s.add_argument("--device", default="auto", help="auto (GPU when there is one), cpu or cuda")
    s.add_argument("--limit", type=int, help="test on the first N sequences only")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_test)


def format_accuracy_table(acc: dict[str, float]) -> str:
    """A markdown table of per-head accuracies (percent)."""
    heads = list(acc)
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join("---:" for _ in heads) + "|",
             "| " + " | ".join(f"{100 * acc[h]:.2f}%" for h in heads) + " |"]
    return "\n".join(lines)


def _train(args: argparse.Namespace) -> int:
    from dsvae.evaluation.judge import train_judge

    res = train_judge(
        args.data, args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, device=args.device,
        seed=args.seed, config=args.preset, image_size=args.image_size, augment=args.augment,
        progress=not args.quiet, overwrite=args.overwrite, limit=args.limit, amp=args.amp,
        lr_schedule=args.lr_schedule,
    )
    print(f"trained the judge for {res.steps} steps in {res.seconds:.0f} s ({res.seq_per_s:.1f} seq/s); "
          f"saved {res.path}")
    if res.test_accuracy is not None:
        print("test accuracy:")
        print(format_accuracy_table(res.test_accuracy))
    else:
        print("(the data set has no test split: no test accuracy measured)")
    return 0


def _test(args: argparse.Namespace) -> int:
    from dsvae.errors import DsvaeError
    from dsvae.evaluation.judge import load_judge, test_judge
    from dsvae.training.trainer import resolve_device

    if args.batch_size <= 0:
        raise DsvaeError(f"--batch-size must be positive, got {args.batch_size}")
    judge = load_judge(args.judge, device=resolve_device(args.device))
    acc = test_judge(judge, args.data, split=args.split, batch_size=args.batch_size, limit=args.limit,
                     progress=not args.quiet)
    print(f"judge {args.judge} on {args.data} [{args.split}]:")
    print(format_accuracy_table(acc))
    return 0
