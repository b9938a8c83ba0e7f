"""``dsvae bench``: training-step throughput of a model, each speed option alone and all together."""

from __future__ import annotations

import argparse
import shlex

DESCRIPTION = """\
Time training steps (forward, loss, backward, clip, Adam; random input) of one model per variant:
  reference        float32, glibc's default allocator, no other option (the unoptimised step)
  +allocator       glibc keeps freed pages mapped (what dsvae train/eval apply at start-up; CPU only)
  +channels_last   NHWC convolution weights          (dsvae train --channels-last)
  +bf16            bf16 autocast                     (dsvae train --amp bf16)
  +compile         torch.compile (warm-up compiles)  (dsvae train --compile)
  all              every option; also all-OPTION (all but one) and combinations like allocator+bf16
Variants run interleaved, one step each in turn (fair on a shared machine); on CPU each allocator
setting runs in its own fresh worker process. --compare KEY=VALUE ... also times the same variants of
the model with those config values (e.g. --compare motion_flip=0 for the C-DSVAE), in the same
interleaving. Prints a markdown table (seq/s, frames/s, GFLOP/s, peak memory, speed-up over the
reference, loss deviation from the reference, CPU time per step; with --compare, the speed-up over the
same variant of the base config).
On a machine shared with other jobs, compare with --threads 1 and read `CPU s/step`: a team of
threads stalls whenever one of them is descheduled.

With --eval DATA it times `dsvae eval` instead (an untrained model of the preset and judge, amp off
and bf16) on --eval-limit videos of the test split, and extrapolates to the whole split.
"""


def register(sub: argparse._SubParsersAction) -> None:
    from dsvae.models import MODELS

    p = sub.add_parser("bench", help="training-step throughput: reference vs each speed option",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="dsvae", choices=sorted(MODELS), help="model to time (default dsvae)")
    p.add_argument("--preset", default="paper", help="model preset (default paper)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model config value (JSON values); repeatable")
    p.add_argument("--compare", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                   help="also time the model with these config values (JSON values, on top of --set), every "
                        "variant, interleaved with the rest; repeatable: one more config each")
    p.add_argument("--batch-size", type=int, nargs="+", default=[32], metavar="B",
                   help="batch sizes to time (default 32)")
    p.add_argument("--variants", help="comma-separated variants (default: reference,+allocator,+channels_last,"
                                      "+bf16,+compile,all; on a GPU without +allocator)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant (default 10; the median counts)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--threads", type=int, help="intra-op threads (default: PyTorch's, one per core)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval", metavar="DATA", help="time `dsvae eval` on this data set instead of training steps")
    p.add_argument("--eval-limit", type=int, default=128,
                   help="--eval: videos of the test split to evaluate (default 128; 0 = all)")
    p.add_argument("--repeats", type=int, default=5, help="--eval: repeats of the protocol (default 5)")
    p.add_argument("--judge-preset", default="field", help="--eval: judge preset (default field)")
    p.add_argument("--out", help="JSON report to write (atomically)")
    p.add_argument("--markdown", help="markdown table to write (atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace existing report files")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_bench)


def _bench(args: argparse.Namespace) -> int:
    from dsvae.bench import benchmark, benchmark_eval
    from dsvae.cli.train import parse_overrides

    if args.eval:
        report = benchmark_eval(
            args.eval, model=args.model, preset=args.preset, model_config=parse_overrides(args.set),
            judge_preset=args.judge_preset,
            limit=args.eval_limit or None, repeats=args.repeats, threads=args.threads, seed=args.seed,
            progress=not args.quiet, out=args.out, markdown=args.markdown, overwrite=args.overwrite,
            command=_eval_command(args),
        )
        print(report["markdown"], end="")
        return 0
    report = benchmark(
        model=args.model, preset=args.preset, model_config=parse_overrides(args.set), batch_sizes=args.batch_size,
        variants=args.variants, steps=args.steps, warmup=args.warmup, device=args.device, threads=args.threads,
        seed=args.seed, progress=not args.quiet, out=args.out, markdown=args.markdown, overwrite=args.overwrite,
        command=_command(args), compare=[parse_overrides(items) for items in args.compare],
    )
    print(report["markdown"], end="")
    for path in (args.out, args.markdown):
        if path:
            print(f"written: {path}")
    return 0


def _command(args: argparse.Namespace) -> str:
    """The equivalent command line with every timing option explicit (for the report)."""
    words = ["dsvae", "bench", "--model", args.model, "--preset", args.preset]
    for item in args.set:
        words += ["--set", item]
    for items in args.compare:
        words += ["--compare", *items]
    words += ["--batch-size", *map(str, args.batch_size)]
    if args.variants:
        words += ["--variants", args.variants]
    words += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device,
              "--seed", str(args.seed)]
    if args.threads is not None:
        words += ["--threads", str(args.threads)]
    return shlex.join(words)


def _eval_command(args: argparse.Namespace) -> str:
    words = ["dsvae", "bench", "--eval", args.eval, "--model", args.model, "--preset", args.preset,
             "--judge-preset", args.judge_preset, "--eval-limit", str(args.eval_limit), "--repeats", str(args.repeats),
             "--seed", str(args.seed)]
    if args.threads is not None:
        words += ["--threads", str(args.threads)]
    return shlex.join(words)
