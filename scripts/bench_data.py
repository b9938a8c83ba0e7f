"""Benchmark the real Sprites build (``dsvae.data.lpc.build_lpc``).

Each measurement runs in its own subprocess so that its wall time and peak
memory (max RSS from ``resource.getrusage``) are its own. Optionally also runs
a straightforward reference: PIL ``alpha_composite`` of whole sheets, one
character at a time, compressed on one thread, and checks that both files hold
byte-identical chunks.

    python scripts/bench_data.py [--sheets DIR] [--no-reference] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHEETS = Path(os.environ.get("DSVAE_LPC_DIR", REPO.parent / "shared" / "sprites-lpc"))


def _build_fast(sheets: Path, out: Path) -> None:
    from dsvae.data.lpc import build_lpc

    checksums = sheets / "SHA256SUMS"
    build_lpc(sheets, out, checksums=checksums if checksums.exists() else None, progress=False)


def _build_reference(sheets: Path, out: Path) -> None:
    """Whole-sheet PIL composition per character, one thread; the same file layout and labels."""
    import numpy as np
    from PIL import Image

    from dsvae.data import lpc, schema

    layers = {}
    for layer, value in lpc.NEEDED_LAYERS:
        with Image.open(sheets / lpc.layer_file(layer, value)) as im:
            layers[(layer, value)] = im.convert("RGBA")
    black = Image.new("RGBA", lpc.SHEET_SIZE, (0, 0, 0, 255))
    train_ids, test_ids = schema.standard_split()
    labels = {"train": schema.sequence_labels(train_ids), "test": schema.sequence_labels(test_ids)}
    attrs = schema.default_attrs("lpc", lpc.FACTOR_VALUE_NAMES)
    with schema.DatasetWriter(out, labels, attrs, threads=1) as writer:
        for split, ids in (("train", train_ids), ("test", test_ids)):
            for i, attributes in enumerate(schema.character_attributes(ids)):
                canvas = black
                keys = [(lpc.FACTOR_LAYERS[f], int(v)) for f, v in zip(schema.FACTORS, attributes)] + [lpc.SHOES]
                for key in keys:
                    canvas = Image.alpha_composite(canvas, layers[key])
                sheet = np.asarray(canvas)[..., :3]
                videos = np.empty((schema.N_MOTIONS, schema.N_FRAMES, 64, 64, 3), np.uint8)
                for a, action in enumerate(schema.ACTIONS):
                    for d, direction in enumerate(schema.DIRECTIONS):
                        row = lpc.ACTION_ROWS[action] + lpc.DIRECTION_OFFSETS[direction]
                        for t, col in enumerate(lpc.ACTION_COLUMNS[action]):
                            cell = sheet[row * 64:(row + 1) * 64, col * 64:(col + 1) * 64]
                            videos[schema.motion_label(a, d), t] = cell
                writer.write(split, i * schema.N_MOTIONS, videos)


def _worker(kind: str, sheets: Path, out: Path) -> None:
    start = time.perf_counter()
    (_build_fast if kind == "fast" else _build_reference)(sheets, out)
    wall = time.perf_counter() - start
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    json.dump({"wall_s": wall, "max_rss_mb": rss_kb / 1024, "size_mb": out.stat().st_size / 2**20}, sys.stdout)


def _measure(kind: str, sheets: Path, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--sheets", str(sheets), "--out", str(out)]
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def _same_chunks(a: Path, b: Path) -> bool:
    """True when both files hold the same compressed chunks (so the same pixels) and labels."""
    import h5py
    import numpy as np

    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        for split in ("train", "test"):
            for key in ("actions", "attributes", "characters"):
                if not np.array_equal(fa[f"{split}/{key}"][:], fb[f"{split}/{key}"][:]):
                    return False
            va, vb = fa[f"{split}/videos"], fb[f"{split}/videos"]
            if va.shape != vb.shape:
                return False
            for i in range(va.shape[0]):
                if va.id.read_direct_chunk((i, 0, 0, 0, 0)) != vb.id.read_direct_chunk((i, 0, 0, 0, 0)):
                    return False
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sheets", type=Path, default=DEFAULT_SHEETS, help="folder of raw LPC layers")
    p.add_argument("--no-reference", action="store_true", help="skip the slow whole-sheet PIL reference")
    p.add_argument("--repeat", type=int, default=1, help="fast builds to time (the best is reported)")
    p.add_argument("--keep", type=Path, help="write the files here instead of a temporary folder")
    p.add_argument("--worker", choices=["fast", "reference"], help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(args.worker, args.sheets, args.out)
        return 0

    with tempfile.TemporaryDirectory(prefix="dsvae-bench-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        fast_out = folder / "sprites_lpc.h5"
        runs = []
        for _ in range(max(1, args.repeat)):
            fast_out.unlink(missing_ok=True)
            runs.append(_measure("fast", args.sheets, fast_out))
        fast = min(runs, key=lambda r: r["wall_s"])
        rows = [("build_lpc (sparse, hierarchical, streamed)", fast)]
        identical = None
        if not args.no_reference:
            ref_out = folder / "sprites_lpc_reference.h5"
            ref_out.unlink(missing_ok=True)
            ref = _measure("reference", args.sheets, ref_out)
            rows.append(("reference (PIL whole sheets, 1 thread)", ref))
            identical = _same_chunks(fast_out, ref_out)

    print(f"cores: {os.cpu_count()}, python {sys.version.split()[0]}, fast builds timed: {len(runs)}\n")
    print("| build | wall (s) | max RSS (MB) | file (MB) | speed-up |")
    print("|---|---:|---:|---:|---:|")
    base = rows[-1][1]["wall_s"]
    for name, r in rows:
        speed = base / r["wall_s"]
        print(f"| {name} | {r['wall_s']:.2f} | {r['max_rss_mb']:.0f} | {r['size_mb']:.1f} | {speed:.1f}x |")
    if identical is not None:
        print(f"\nfast and reference files byte-identical chunk by chunk: {'yes' if identical else 'NO'}")
    return 0 if identical in (None, True) else 1


if __name__ == "__main__":
    sys.exit(main())
