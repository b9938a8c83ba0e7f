"""The one-command demo: data, judge, training, GIFs, loss curve, judged results and an HTML report.

:func:`run_demo` does the main job end to end on one machine, offline:

1. **data**: uses the data set file (default ``data/procedural.h5``, or ``data/sprites.h5`` for
   ``data="lpc"``), building it when it is absent (the procedural sprites need nothing; the real
   Sprites need the raw LPC layers, ``sheets``);
2. **judge**: reuses a judge that matches the demo's judge recipe (same architecture, training
   settings and data source) from the out folder or beside the data set, else trains one (a small
   16x16 judge: seconds on 2 CPU cores) and keeps a copy beside the data set for next time;
3. **training**: trains the DSVAE with the ``demo`` preset (3-4 minutes on 2 CPU cores;
   ``minutes`` caps the time) into ``OUT/run``, on ``OUT/train_mixed.h5``: the train split with a
   motion change in half of its sequences (:func:`dsvae.data.mixing.mix_motions`; the same character
   found by colour histogram, no labels read), so that the facing direction, constant in every
   original sequence, is learned as dynamics rather than as a static attribute;
4. **outputs**: ``swap.gif`` (random test pairs with their static and dynamic codes exchanged),
   ``sample_static.gif`` / ``sample_dynamic.gif`` (one part of a sequence's code kept, the other
   drawn from the prior), ``interpolate.gif`` (the static code walked from one sequence to another)
   and ``loss.png`` (the loss terms of ``OUT/run/metrics.jsonl``, drawn with PIL);
5. **evaluation**: the judged dynamic, static and swap tests (:func:`dsvae.evaluation.protocol.evaluate`)
   on the data set's test split (all of it for the default config), written to ``RESULTS.json``
   with the demo's own details under ``"demo"``;
6. **report**: ``index.html`` shows every file and the numbers; it is written last, so a folder
   with an ``index.html`` is a finished demo.

Every file is written atomically (a failure leaves no half-written file). An existing out folder
is refused unless ``overwrite`` (only a previous demo folder is replaced) or ``resume`` (a
previous demo with the same settings is continued: a finished judge and the training checkpoint
are reused, the outputs are written again).

The demo's settings come from a :class:`DemoConfig` (``DEMO_CONFIGS``: ``demo``, the default, and
``tiny``, seconds, for tests and smoke runs).
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from dsvae import __version__
from dsvae.data.mixing import mix_motions
from dsvae.data.schema import open_h5
from dsvae.errors import DsvaeError
from dsvae.io import atomic_path, atomic_write_text

FORMAT = "dsvae-demo"
FORMAT_VERSION = 1
#: Data sources the demo knows and their default data set files (relative to the working folder).
DATA_FILES = {"procedural": Path("data/procedural.h5"), "lpc": Path("data/sprites.h5")}
#: The demo's quality target: swapped sequences keep the source's attributes and the donor's action.
TARGET = 0.90
#: The demo folder's files, in the order the report shows them.
GIFS = ("swap.gif", "sample_static.gif", "sample_dynamic.gif", "interpolate.gif")
FILES = (*GIFS, "loss.png", "RESULTS.json", "index.html")
SETTINGS_FILE = "demo.json"
RUN_DIR = "run"
JUDGE_FILE = "judge.pt"
MIXED_FILE = "train_mixed.h5"
#: Loss terms drawn by :func:`plot_loss_curve`, with their colours.
LOSS_TERMS = {"loss": (230, 230, 230), "recon": (90, 170, 255), "kl_f": (255, 150, 60), "kl_z": (120, 220, 120)}


@dataclass(frozen=True)
class DemoConfig:
    """Everything a demo run does besides its data and out folder; ``None`` means "the preset's"."""

    preset: str = "demo"                 # dsvae model preset (dsvae.models.presets)
    epochs: float | None = None
    max_steps: int | None = None
    batch_size: int | None = None
    train_limit: int | None = None       # train on the first N training sequences only
    mix_share: float = 0.5               # share of training sequences given a motion change (see mix_motions)
    mix_pairing: str = "colours"         # same character by "colours" (no labels) or "characters" (ids)
    sample_every: int = 1000             # progress GIFs in OUT/run/samples
    # the judge (dsvae.evaluation.judge): architecture and training recipe
    judge_image_size: int = 16
    judge_widths: tuple[int, ...] = (16, 32)
    judge_epochs: float = 8
    judge_batch_size: int = 64
    judge_lr: float = 2e-3
    judge_limit: int | None = None
    cache_judge: bool = True             # keep a copy of a trained judge beside the data set for later demos
    # the judged evaluation (dsvae.evaluation.protocol)
    eval_limit: int | None = None        # None: the whole test split
    repeats: int = 1
    # the GIFs
    swap_pairs: int = 6
    samples: int = 4
    interpolation_steps: int = 6
    scale: int = 3

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["judge_widths"] = list(self.judge_widths)
        return out


DEMO_CONFIGS: dict[str, DemoConfig] = {
    "demo": DemoConfig(),
    # seconds on a CPU: 16x16 model, a few steps on a slice of the data, a 1-epoch judge, 24 test videos
    "tiny": DemoConfig(preset="tiny", max_steps=4, batch_size=8, train_limit=64, sample_every=0,
                       judge_widths=(8, 16), judge_epochs=1, judge_batch_size=32, judge_limit=64, cache_judge=False,
                       eval_limit=24, swap_pairs=2, samples=2, interpolation_steps=3, scale=2),
}


@dataclass
class DemoResult:
    """What :func:`run_demo` returns: the out folder, its files, the results and the timings."""

    out: Path
    files: dict[str, Path]
    results: dict[str, Any]          # the content of RESULTS.json
    summary: dict[str, float | None]  # swap / static / dynamic headline figures (shares in [0, 1])
    passed: bool | None              # both swap accuracies >= TARGET (None when not measured)
    seconds: dict[str, float]
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------
# checks and setup
# ----------------------------------------------------------------------------------
def get_demo_config(config: str | DemoConfig) -> DemoConfig:
    if isinstance(config, DemoConfig):
        return config
    if config not in DEMO_CONFIGS:
        raise DsvaeError(f"unknown demo config {config!r} (known: {', '.join(DEMO_CONFIGS)})")
    return DEMO_CONFIGS[config]


def _data_source(path: Path) -> str:
    with open_h5(path) as f:
        return str(f.attrs.get("source", "unknown"))


def _check_data(data: str, data_file: Path, sheets: str | os.PathLike | None) -> bool:
    """Read-only checks of the data choice. Returns True when the data set must be built."""
    if data not in DATA_FILES:
        raise DsvaeError(f"unknown data {data!r} (use {' or '.join(DATA_FILES)})")
    if sheets is not None and data != "lpc":
        raise DsvaeError("--sheets only applies to --data lpc")
    if data_file.exists():
        source = _data_source(data_file)
        if source != data:
            raise DsvaeError(f"{data_file} holds '{source}' data, not '{data}' (pass --data {source} or "
                             f"another --data-file)")
        return False
    if data == "lpc":
        if sheets is None:
            raise DsvaeError(f"--data lpc needs --sheets DIR (the raw LPC layers) to build {data_file}; or build "
                             f"it first with `dsvae data build --source lpc --download --out {data_file}`")
        if not Path(sheets).is_dir():
            raise DsvaeError(f"LPC layer folder {sheets} does not exist or is not a folder")
    return True


def _settings(data: str, data_file: Path, cfg: DemoConfig, seed: int) -> dict[str, Any]:
    """What makes two demo runs the same (compared on resume)."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "data": data, "data_file": str(data_file),
            "config": cfg.to_dict(), "seed": seed}


def _check_out(out: Path, settings: Mapping[str, Any], overwrite: bool, resume: bool) -> bool:
    """Read-only checks of the out folder. Returns True when a previous demo is continued."""
    if overwrite and resume:
        raise DsvaeError("--resume and --overwrite exclude each other")
    if out.exists() and not out.is_dir():
        raise DsvaeError(f"demo folder {out} is a file")
    if not (out.is_dir() and any(out.iterdir())):
        return False
    marker = out / SETTINGS_FILE
    if not (overwrite or resume):
        raise DsvaeError(f"demo folder {out} already exists (use --overwrite to replace it or --resume to "
                         f"continue it)")
    if not marker.is_file():
        raise DsvaeError(f"{out} is not empty and is not a dsvae demo folder; refusing to "
                         f"{'overwrite' if overwrite else 'resume'} it")
    if overwrite:
        return False
    try:
        saved = json.loads(marker.read_text())
    except (OSError, ValueError) as exc:
        raise DsvaeError(f"cannot read {marker}: {exc}") from exc
    if saved != dict(settings):
        diff = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
        raise DsvaeError(f"demo folder {out} was made with other settings ({', '.join(diff)}); use --overwrite "
                         f"to replace it")
    return True


def _writable_parent(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    probe = parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise DsvaeError(f"cannot write {path}: folder {probe} is not writable")


# ----------------------------------------------------------------------------------
# the judge
# ----------------------------------------------------------------------------------
def _judge_recipe(cfg: DemoConfig, seed: int) -> dict[str, Any]:
    return {"epochs": cfg.judge_epochs, "batch_size": cfg.judge_batch_size, "lr": cfg.judge_lr, "seed": seed,
            "limit": cfg.judge_limit}


def judge_cache_path(data_file: Path, cfg: DemoConfig) -> Path:
    """Where a demo keeps its judge beside the data set, so later demos reuse it."""
    widths = "-".join(str(w) for w in cfg.judge_widths)
    return data_file.with_name(f"{data_file.stem}.judge-{cfg.judge_image_size}px-{widths}.pt")


def _judge_matches(path: Path, config: Mapping[str, Any], recipe: Mapping[str, Any], source: str) -> Any:
    """The judge at ``path`` when it was made by the same recipe on the same data source, else None."""
    from dsvae.evaluation.judge import load_judge

    if not path.is_file():
        return None
    try:
        judge = load_judge(path)
    except DsvaeError:
        return None
    saved = judge.meta.get("train_config") or {}
    same_recipe = all(saved.get(k) == v for k, v in recipe.items())
    if judge.config.to_dict() != dict(config) or not same_recipe or judge.meta.get("data_source") != source:
        return None
    return judge


def _get_judge(out: Path, data_file: Path, cfg: DemoConfig, seed: int, device: str, judge: str | os.PathLike | None,
               progress: bool, say: Callable[[str], None]) -> tuple[Any, str, float]:
    """(judge, where it came from, seconds spent training it)."""
    from dsvae.evaluation.judge import judge_config, load_judge, train_judge

    if judge is not None:
        say(f"judge: using {judge}")
        return load_judge(judge), f"given ({judge})", 0.0
    config = judge_config("tiny", image_size=cfg.judge_image_size, widths=tuple(cfg.judge_widths))
    recipe = _judge_recipe(cfg, seed)
    source = _data_source(data_file)
    cache = judge_cache_path(data_file, cfg)
    for candidate, where in ((out / JUDGE_FILE, "reused from the demo folder"), (cache, f"reused ({cache})")):
        found = _judge_matches(candidate, config.to_dict(), recipe, source)
        if found is not None:
            say(f"judge: {where}")
            if candidate != out / JUDGE_FILE:
                _copy(candidate, out / JUDGE_FILE)
            return found, where, 0.0
    say(f"judge: training a {cfg.judge_image_size}x{cfg.judge_image_size} judge on the train split of {data_file}")
    res = train_judge(data_file, out / JUDGE_FILE, config=config, epochs=cfg.judge_epochs,
                      batch_size=cfg.judge_batch_size, lr=cfg.judge_lr, seed=seed, limit=cfg.judge_limit,
                      device=device, progress=progress, overwrite=True)
    if cfg.cache_judge and not cache.exists() and os.access(cache.parent, os.W_OK | os.X_OK):
        _copy(res.path, cache)
    judge_model = load_judge(res.path)  # with its checkpoint fields (test accuracy, training data) in .meta
    return judge_model, "trained by this demo", res.seconds


def _copy(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


# ----------------------------------------------------------------------------------
# the loss curve
# ----------------------------------------------------------------------------------
def read_metrics(path: str | os.PathLike) -> list[dict[str, float]]:
    """The records of a run's ``metrics.jsonl`` (one JSON object per logged step)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise DsvaeError(f"cannot read metrics file {path}: {exc.strerror}") from exc
    records = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as exc:
            raise DsvaeError(f"{path}, line {lineno}: not JSON: {exc}") from exc
    return records


def _nice_ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    """Round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten)."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step) * step
    return [first + k * step for k in range(int((hi - first) / step + 1e-9) + 1)]


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Tick values 1, 2, 5 x 10^k inside [lo, hi] on a log axis (fewer when the range is wide)."""
    ticks = []
    for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10.0 ** k
            if lo <= v <= hi:
                ticks.append(v)
    if len(ticks) > 10:
        ticks = [t for t in ticks if f"{t:.0e}".startswith("1")]
    return ticks or [lo, hi]


def _tick_label(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-2:
        return f"{v:.0e}".replace("e+0", "e").replace("e-0", "e-")
    return f"{v:g}"


def plot_loss_curve(metrics: str | os.PathLike | list[Mapping[str, float]], out: str | os.PathLike,
                    terms: Mapping[str, tuple[int, int, int]] | None = None, size: tuple[int, int] = (800, 450),
                    title: str = "training loss per sequence", overwrite: bool = False) -> Path:
    """Draw the loss terms of a run (``metrics.jsonl`` records) against the step on a log axis; write a PNG.

    ``terms`` maps a record key to its colour (default :data:`LOSS_TERMS`); keys a run does not log
    are left out. Values <= 0 are drawn at the axis' bottom. Written atomically.
    """
    from PIL import Image, ImageDraw

    from dsvae.io import check_output_path
    from dsvae.viz.gif import _font

    out = check_output_path(out, overwrite=overwrite, what="loss plot")
    records = read_metrics(metrics) if not isinstance(metrics, list) else metrics
    terms = dict(terms or LOSS_TERMS)
    series = {k: [(float(r["step"]), float(r[k])) for r in records if k in r and "step" in r and
                  math.isfinite(float(r[k]))] for k in terms}
    series = {k: v for k, v in series.items() if v}
    if not series:
        raise DsvaeError(f"no loss values to plot (looked for {', '.join(terms)})")
    width, height = size
    left, right, top, bottom = 70, 20, 40, 50
    img = Image.new("RGB", (width, height), (24, 24, 28))
    draw = ImageDraw.Draw(img)
    font, small = _font(16), _font(13)
    steps = [s for v in series.values() for s, _ in v]
    values = [y for v in series.values() for _, y in v if y > 0]
    x_lo, x_hi = min(steps), max(steps)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    y_lo, y_hi = (min(values), max(values)) if values else (0.1, 1.0)
    y_lo, y_hi = y_lo / 1.3, y_hi * 1.3
    pw, ph = width - left - right, height - top - bottom

    def px(step: float, value: float) -> tuple[float, float]:
        v = max(value, y_lo)
        x = left + (step - x_lo) / (x_hi - x_lo) * pw
        y = top + (math.log(y_hi) - math.log(v)) / (math.log(y_hi) - math.log(y_lo)) * ph
        return x, y

    grid, axis, text = (52, 52, 60), (140, 140, 150), (220, 220, 220)
    for t in _log_ticks(y_lo, y_hi):
        _, y = px(x_lo, t)
        draw.line([(left, y), (left + pw, y)], fill=grid)
        label = _tick_label(t)
        w = draw.textlength(label, font=small)
        draw.text((left - 8 - w, y - 8), label, fill=text, font=small)
    for t in _nice_ticks(x_lo, x_hi):
        x, _ = px(t, y_hi)
        draw.line([(x, top), (x, top + ph)], fill=grid)
        label = _tick_label(t)
        draw.text((x - draw.textlength(label, font=small) / 2, top + ph + 6), label, fill=text, font=small)
    draw.rectangle([left, top, left + pw, top + ph], outline=axis)
    draw.text((left, 10), title, fill=text, font=font)
    draw.text((left + pw / 2 - 15, height - 24), "step", fill=text, font=small)
    for key, points in series.items():
        xy = [px(s, v) for s, v in points]
        if len(xy) == 1:
            x, y = xy[0]
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=terms[key])
        else:
            draw.line(xy, fill=terms[key], width=2)
    lx = left + pw - 10
    for key in reversed(list(series)):  # legend, top right
        last = series[key][-1][1]
        label = f"{key} {last:.4g}"
        lw = draw.textlength(label, font=small)
        lx -= lw + 34
        draw.line([(lx, 20), (lx + 20, 20)], fill=terms[key], width=3)
        draw.text((lx + 24, 12), label, fill=text, font=small)
    with atomic_path(out) as tmp:
        img.save(tmp, format="PNG")
    return out


# ----------------------------------------------------------------------------------
# GIFs
# ----------------------------------------------------------------------------------
def _showcase(data_file: Path, split: str = "test") -> tuple[int, int]:
    """Two test sequences that differ in motion and in every attribute (the first such pair in file order)."""
    from dsvae.data.dataset import SpritesDataset

    ds = SpritesDataset(data_file, split, resident=False)
    try:
        a = 0
        for b in range(1, len(ds)):
            if ds.actions[b] != ds.actions[a] and bool((ds.attributes[b] != ds.attributes[a]).all()):
                return a, b
        return a, min(1, len(ds) - 1)
    finally:
        ds.close()


def _write_gifs(model: torch.nn.Module, data_file: Path, out: Path, cfg: DemoConfig, seed: int) -> dict[str, Path]:
    from dsvae.viz.swap import interpolate, sample, swap

    a, b = _showcase(data_file)
    view = dict(data=data_file, split="test", scale=cfg.scale, overwrite=True)
    files = {
        "swap.gif": swap(model, random_pairs=cfg.swap_pairs, seed=seed, out=out / "swap.gif", **view),
        "sample_static.gif": sample(model, fix="static", index=a, n=cfg.samples, seed=seed,
                                    out=out / "sample_static.gif", **view),
        "sample_dynamic.gif": sample(model, fix="dynamic", index=a, n=cfg.samples, seed=seed,
                                     out=out / "sample_dynamic.gif", **view),
        "interpolate.gif": interpolate(model, pair=(a, b), steps=cfg.interpolation_steps, part="static",
                                       out=out / "interpolate.gif", **view),
    }
    return files


# ----------------------------------------------------------------------------------
# results and report
# ----------------------------------------------------------------------------------
def _mean(results: Mapping[str, Any], test: str, key: str) -> float | None:
    entry = results.get(test, {})
    if entry.get("status") != "ok" or key not in entry:
        return None
    return float(entry[key]["mean"])


def summarize(results: Mapping[str, Any]) -> dict[str, float | None]:
    """The headline figures of an evaluation report (shares in [0, 1]; None when not measured)."""
    return {
        "swap_attribute_accuracy": _mean(results, "swap", "attribute_accuracy"),
        "swap_action_accuracy": _mean(results, "swap", "action_accuracy"),
        "static_attribute_accuracy": _mean(results, "static", "attribute_accuracy"),
        "static_action_accuracy": _mean(results, "static", "action_accuracy"),
        "dynamic_action_accuracy": _mean(results, "dynamic", "action_accuracy"),
        "dynamic_attribute_accuracy": _mean(results, "dynamic", "attribute_accuracy"),
        "inception_score": _mean(results, "dynamic", "inception_score"),
    }


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _html_report(out: Path, results: Mapping[str, Any], summary: Mapping[str, float | None],
                 passed: bool | None) -> str:
    demo = results["demo"]
    e = html.escape
    verdict = {True: "reached", False: "NOT reached", None: "not measured"}[passed]
    judge_acc = (results.get("judge") or {}).get("test_accuracy") or {}
    judge_cells = "".join(f"<td>{e(k)}: {_pct(v)}</td>" for k, v in judge_acc.items())
    rows = [
        ("swap: attributes kept from the static source", summary["swap_attribute_accuracy"], "100%"),
        ("swap: action taken from the dynamics donor", summary["swap_action_accuracy"], "100%"),
        ("static test: attributes (f kept, prior dynamics)", summary["static_attribute_accuracy"], "100%"),
        ("static test: action (f kept, prior dynamics)", summary["static_action_accuracy"], "chance, 11.1%"),
        ("dynamic test: action (z kept, prior static)", summary["dynamic_action_accuracy"], "100%"),
        ("dynamic test: attributes (z kept, prior static)", summary["dynamic_attribute_accuracy"], "chance, 16.7%"),
    ]
    table = "\n".join(f"<tr><td>{e(name)}</td><td class=num>{_pct(v)}</td><td class=num>{e(ideal)}</td></tr>"
                      for name, v, ideal in rows)
    per_attr = (results.get("swap") or {}).get("attributes") or {}
    attr_cells = "".join(f"<td>{e(k)}: {_pct(v['mean'])}</td>" for k, v in per_attr.items())
    captions = {
        "swap.gif": "Swaps: each row is a pair of test sequences A and B, their reconstructions, then A's static "
                    "code with B's dynamics and B's static code with A's dynamics.",
        "sample_static.gif": "A test sequence, its reconstruction, then its static code with dynamics drawn from "
                             "the learned prior.",
        "sample_dynamic.gif": "The same sequence's dynamics with static codes drawn from N(0, I).",
        "interpolate.gif": "A, B, then the static code walked in a straight line from A's to B's, keeping A's "
                           "dynamics.",
        "loss.png": "Training loss terms (per sequence) against the step.",
    }
    figures = "\n".join(
        f'<figure><img src="{e(name)}" alt="{e(name)}"><figcaption><a href="{e(name)}">{e(name)}</a>: '
        f"{e(captions[name])}</figcaption></figure>" for name in (*GIFS, "loss.png"))
    seconds = demo["seconds"]
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
    train = demo["training"]
    data = results.get("data", {})
    notes = "".join(f"<li>{e(n)}</li>" for n in [*demo.get("notes", []), *results.get("warnings", [])])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>dsvae demo</title>
<style>
body {{ font-family: system-ui, sans-serif; background: #18181c; color: #ddd; margin: 2em auto; max-width: 1100px; }}
a {{ color: #8cf; }} table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #444; padding: 4px 10px; }} td.num {{ text-align: right; }}
img {{ image-rendering: pixelated; max-width: 100%; border: 1px solid #333; }}
figure {{ margin: 2em 0; }} code {{ color: #fc8; }}
</style></head><body>
<h1>dsvae demo</h1>
<p>A Disentangled Sequential VAE (Li &amp; Mandt, 2018) trained on <code>{e(str(demo["data_file"]))}</code>
({e(str(data.get("source")))} sprites), judged on its <b>{e(str(data.get("split")))}</b> split
({results.get("n_videos")} of {data.get("videos_in_split")} videos, {results.get("repeats")} repeat(s)).
Quality target: both swap accuracies &ge; {100 * TARGET:.0f}%: <b>{verdict}</b>.</p>
<table><tr><th>test</th><th>judged accuracy</th><th>ideal</th></tr>
{table}
</table>
<table><tr><td>swap, per attribute</td>{attr_cells}</tr>
<tr><td>judge test accuracy ({e(str(demo["judge"]["origin"]))})</td>{judge_cells}</tr></table>
<p>Training: preset <code>{e(str(train["preset"]))}</code>, {train["steps"]} steps, {train["seconds"]:.0f} s on
{e(str(train["device"]))}{" (stopped by the time limit)" if train["time_limited"] else ""}.
Time per stage: {e(timing)}. Full numbers: <a href="RESULTS.json">RESULTS.json</a>; the run (checkpoints,
config, metrics) is in <a href="{RUN_DIR}/">{RUN_DIR}/</a>.</p>
{figures}
{f"<h2>Notes</h2><ul>{notes}</ul>" if notes else ""}
<p><small>dsvae {e(__version__)}, torch {e(torch.__version__)}</small></p>
</body></html>
"""


# ----------------------------------------------------------------------------------
# the demo
# ----------------------------------------------------------------------------------
def run_demo(
    out: str | os.PathLike = "demo",
    data: str = "procedural",
    sheets: str | os.PathLike | None = None,
    data_file: str | os.PathLike | None = None,
    minutes: float | None = None,
    device: str = "auto",
    config: str | DemoConfig = "demo",
    judge: str | os.PathLike | None = None,
    amp: str = "auto",
    seed: int = 0,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    threads: int | None = None,
    log: Callable[[str], None] | None = None,
) -> DemoResult:
    """Build the data (if needed), get a judge, train, write the GIFs, loss curve, results and report.

    ``data``: ``procedural`` (default) or ``lpc``; ``data_file``: the data set file (default
    ``data/procedural.h5`` / ``data/sprites.h5``), built when absent (``lpc`` needs ``sheets``, the
    raw LPC layer folder). ``minutes`` caps the training time. ``config``: a :class:`DemoConfig`
    or the name of one in :data:`DEMO_CONFIGS`. ``judge``: a judge file to use instead of the
    demo's own. ``amp``: ``auto`` = bf16 autocast for training on a GPU and on CPUs with native
    bf16 (AVX512-BF16 / AMX), else fp32; ``bf16``; ``off``. ``threads``: CPU threads for the run
    (default: torch's setting; restored afterwards). ``log`` receives one line per stage.
    See the module docstring for the out folder and the overwrite / resume rules. Every user
    mistake raises :class:`~dsvae.errors.DsvaeError` before anything is written; a later failure
    keeps the unfinished demo folder (without ``index.html``) for ``resume``.
    """
    from dsvae.models.presets import get_preset
    from dsvae.training.trainer import resolve_device

    say = log or (lambda _msg: None)
    cfg = get_demo_config(config)
    out = Path(out)
    data_file = Path(data_file) if data_file is not None else DATA_FILES.get(data, Path("data.h5"))
    if minutes is not None and not minutes > 0:
        raise DsvaeError(f"--minutes must be positive, got {minutes!r}")
    if amp not in ("auto", "bf16", "off"):
        raise DsvaeError(f"unknown amp {amp!r} (use auto, bf16 or off)")
    if judge is not None and not Path(judge).is_file():
        raise DsvaeError(f"judge {judge} does not exist")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise DsvaeError(f"--threads must be a positive integer, got {threads!r}")
    get_preset("dsvae", cfg.preset)
    dev = resolve_device(device)
    build = _check_data(data, data_file, sheets)
    settings = _settings(data, data_file, cfg, seed)
    resuming = _check_out(out, settings, overwrite, resume)
    _writable_parent(out / SETTINGS_FILE)
    if build:
        _writable_parent(data_file)

    t_start = time.time()
    seconds: dict[str, float] = {}
    t0 = time.time()
    if build:
        say(f"data: building {data_file} ({data} sprites)")
        _build_data(data, data_file, sheets, progress)
    else:
        say(f"data: using {data_file}")
    seconds["data"] = time.time() - t0

    if overwrite and out.is_dir():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if not resuming:
        atomic_write_text(out / SETTINGS_FILE, json.dumps(settings, indent=2) + "\n")
    for name in ("index.html", "RESULTS.json"):  # a resumed demo is unfinished until its report is rewritten
        (out / name).unlink(missing_ok=True)
    run_dir = out / RUN_DIR
    if resuming and run_dir.is_dir() and not (run_dir / "checkpoints" / "last.pt").is_file():
        shutil.rmtree(run_dir)  # stopped before its first checkpoint: start the training again from scratch
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _stages(out, data, data_file, cfg, config, dev, device, amp, minutes, judge, seed, resuming, progress,
                       say, seconds, t_start)
    except DsvaeError as exc:
        raise type(exc)(f"{exc} (the unfinished demo is kept in {out}: run again with --resume to continue "
                        f"it)") from exc
    finally:
        torch.set_num_threads(previous_threads)


def _build_data(data: str, data_file: Path, sheets: str | os.PathLike | None, progress: bool) -> None:
    data_file.parent.mkdir(parents=True, exist_ok=True)
    if data == "procedural":
        from dsvae.data.procedural import build_procedural

        build_procedural(data_file, seed=0, progress=progress)
    else:
        from dsvae.data.lpc import build_lpc

        build_lpc(sheets, data_file, progress=progress)


def _stages(out: Path, data: str, data_file: Path, cfg: DemoConfig, config: str | DemoConfig, dev: torch.device,
            device: str, amp: str, minutes: float | None, judge: str | os.PathLike | None, seed: int,
            resuming: bool, progress: bool, say: Callable[[str], None], seconds: dict[str, float],
            t_start: float) -> DemoResult:
    """Everything after the checks: judge, training set, training, outputs, evaluation, report."""
    from dsvae.evaluation.protocol import evaluate
    from dsvae.models.presets import get_preset
    from dsvae.training.trainer import cpu_has_native_bf16, train

    notes: list[str] = []
    t0 = time.time()
    judge_model, judge_origin, _ = _get_judge(out, data_file, cfg, seed, device, judge, progress, say)
    seconds["judge"] = time.time() - t0

    t0 = time.time()
    train_file, train_limit = data_file, cfg.train_limit
    if cfg.mix_share > 0:
        train_file, train_limit = out / MIXED_FILE, None
        if not (resuming and train_file.is_file()):
            say(f"training set: the train split with a motion change in {100 * cfg.mix_share:.0f}% of the "
                f"sequences -> {train_file}")
            preset_model, _ = get_preset("dsvae", cfg.preset)
            mix_motions(data_file, train_file, share=cfg.mix_share, seed=seed,
                        image_size=preset_model.get("image_size"), limit=cfg.train_limit, overwrite=True,
                        progress=progress, pairing=cfg.mix_pairing)
    seconds["training_set"] = time.time() - t0

    train_amp = amp
    if amp == "auto":
        train_amp = "bf16" if dev.type == "cuda" or cpu_has_native_bf16() else "off"
    say(f"training: dsvae preset '{cfg.preset}' on {dev}" + (f", at most {minutes:g} min" if minutes else "")
        + f" -> {out / RUN_DIR}")
    t0 = time.time()
    res = train(data=str(train_file), out=str(out / RUN_DIR), model="dsvae", preset=cfg.preset, epochs=cfg.epochs,
                max_steps=cfg.max_steps, max_minutes=minutes, batch_size=cfg.batch_size, limit=train_limit,
                device=device, amp=train_amp, seed=seed, sample_every=cfg.sample_every, progress=progress,
                resume=resuming)
    seconds["training"] = time.time() - t0
    model = res.model.eval()
    planned = _planned_steps(out / RUN_DIR)
    time_limited = planned is not None and res.step < planned
    if time_limited:
        notes.append(f"training stopped by the time limit at step {res.step} of {planned}; the figures are "
                     f"those of a shorter training than the preset's")

    t0 = time.time()
    say("outputs: swap, sample and interpolation GIFs, loss curve")
    files = _write_gifs(model, data_file, out, cfg, seed)
    files["loss.png"] = plot_loss_curve(out / RUN_DIR / "metrics.jsonl", out / "loss.png", overwrite=True)
    seconds["outputs"] = time.time() - t0

    t0 = time.time()
    say(f"evaluation: judged dynamic, static and swap tests on the test split of {data_file}")
    report = evaluate(model, judge_model, data_file, repeats=cfg.repeats, limit=cfg.eval_limit, device=device,
                      seed=seed, progress=progress, amp="bf16" if train_amp == "bf16" else "off",
                      name=f"dsvae demo ({cfg.preset})")
    seconds["evaluation"] = time.time() - t0
    report["judge"]["path"] = str(out / JUDGE_FILE) if judge is None else str(judge)
    seconds["total"] = time.time() - t_start
    summary = summarize(report)
    swap_scores = (summary["swap_attribute_accuracy"], summary["swap_action_accuracy"])
    passed = None if None in swap_scores else all(v >= TARGET for v in swap_scores)
    report["demo"] = {
        "config": cfg.to_dict(),
        "config_name": config if isinstance(config, str) else None,
        "data": data,
        "data_file": str(data_file),
        "seed": seed,
        "target": {"swap_attribute_accuracy": TARGET, "swap_action_accuracy": TARGET},
        "passed": passed,
        "summary": summary,
        "judge": {"origin": judge_origin, "path": report["judge"]["path"]},
        "training": {"preset": cfg.preset, "data": str(train_file), "mix_share": cfg.mix_share,
                     "mix_pairing": cfg.mix_pairing if cfg.mix_share > 0 else None, "steps": res.step,
                     "planned_steps": planned, "time_limited": time_limited, "seconds": res.seconds,
                     "device": str(dev), "amp": train_amp, "max_minutes": minutes, "final_metrics": res.metrics,
                     "run": str(out / RUN_DIR)},
        "threads": torch.get_num_threads(),
        "seconds": seconds,
        "notes": notes,
        "files": [*FILES],
    }
    results_path = out / "RESULTS.json"
    atomic_write_text(results_path, json.dumps(report, indent=2) + "\n")
    files["RESULTS.json"] = results_path
    index = out / "index.html"
    atomic_write_text(index, _html_report(out, report, summary, passed))
    files["index.html"] = index
    return DemoResult(out, files, report, summary, passed, seconds, notes)


def _planned_steps(run_dir: Path) -> int | None:
    """The step count the run's settings ask for (epochs x steps per epoch, or max_steps)."""
    try:
        cfg = json.loads((run_dir / "config.json").read_text())["train"]
    except (OSError, ValueError, KeyError):
        return None
    with open_h5(cfg["data"]) as f:
        n = int(f["train"]["videos"].shape[0])
    if cfg.get("limit"):
        n = min(n, int(cfg["limit"]))
    per_epoch = max(n // int(cfg["batch_size"]), 1)
    by_epochs = max(1, math.ceil(cfg["epochs"] * per_epoch)) if cfg.get("epochs") else None
    options = [v for v in (cfg.get("max_steps"), by_epochs) if v is not None]
    return min(options) if options else None


__all__ = ["DEMO_CONFIGS", "DemoConfig", "DemoResult", "FILES", "TARGET", "judge_cache_path", "plot_loss_curve",
           "read_metrics", "run_demo", "summarize"]
