"""The field's disentanglement protocol on Sprites, scored by a judge (:mod:`dsvae.evaluation.judge`).

Evaluated videos: every video of the test split, in file order (2,664 on the real Sprites).
``legacy=True`` reproduces the literature's loader (batch 128, ``drop_last``): the first
floor(N / 128) * 128 videos in file order (2,560 on the real Sprites). ``limit`` keeps the first
``limit`` of those, ``indices`` names split positions explicitly (quick runs, tests).

Every evaluated video is encoded once (posterior means: deterministic in eval mode) and the
codes are reused by every test and repeat. Each repeat then runs three tests on all of them:

- **dynamic** (does z carry the motion?): z = the posterior mean of every frame of a real
  video, f ~ ``model.sample_static`` (one draw per video: N(0, I) for the DSVAE, or the mixture fitted to
  the training codes by ``dsvae fit-prior``, recorded as ``model.static_prior``); decode and classify. ``action
  accuracy`` = share of decoded videos whose predicted action is the source's. ``IS``,
  ``H(y|x)`` and ``H(y)`` (see :mod:`dsvae.evaluation.metrics`) use the judge's action
  probabilities on a class-balanced subset: with n = the smallest count of a source action
  among the evaluated videos, the first n evaluated videos of each action (in evaluation order).
  The four attribute heads' accuracy against the source is reported too (ideal: chance, 1/6).
- **static** (does f carry the appearance?): f = the posterior mean, z_1:T =
  ``model.sample_dynamics(n, T, means=True)`` (the prior rolled out on its own samples; the
  per-step means are decoded); attribute accuracies against the source (ideal 100%) and the
  action accuracy (ideal: chance, 1/9).
- **swap**: video A_i is paired with B_i = A_{pi(i)}, pi a seeded random derangement of the
  evaluated videos (no video with itself), fresh every repeat; decode f of A (posterior mean)
  with z of B (posterior mean). The judge should see A's attributes and B's action.

Beside the tests, ``real`` reports what the judge reads on the evaluated real videos themselves
(action accuracy, IS, H(y|x) and H(y) on the same balanced subset, attribute accuracies; one pass,
no repeats): the ceiling of what any model can score under this judge. A generated video can read
as more typical than a real one (lower H(y|x), higher IS), so the dynamic test may exceed it.

Models whose ``sample_static`` / ``sample_dynamics`` raise :class:`~dsvae.errors.NotApplicable`
get ``"not applicable"`` (with the reason) for the dynamic / static test; the swap test runs.

Every number is reported as mean and (population, ddof 0) standard deviation over ``repeats``
repeats. Repeat r of test k draws its randomness after ``torch.manual_seed(seed * 1000003 +
10 * r + k)``, all codes of a test at once, so results do not depend on ``batch_size``; the
caller's global RNG state is restored afterwards.

Decoded frames of a model whose image size differs from the judge's are resized to the judge's
size with :func:`dsvae.evaluation.judge.resize_frames` (area averaging to shrink, nearest
neighbour to enlarge: the modes the data set uses) and clamped to [0, 1].
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from dsvae import __version__
from dsvae.data.dataset import SpritesDataset, to_float
from dsvae.data.schema import FACTORS, HEADS
from dsvae.errors import DsvaeError, NotApplicable
from dsvae.evaluation import metrics
from dsvae.evaluation.judge import Judge, load_judge
from dsvae.io import atomic_write_text, check_output_path
from dsvae.training.static_prior import fitted_sequences

FORMAT = "dsvae-eval"
FORMAT_VERSION = 1
LEGACY_BATCH = 128
TESTS = ("dynamic", "static", "swap")
NOT_APPLICABLE = "not applicable"

#: Literature reference row (Li & Mandt's DSVAE as reported by later work), for comparison.
LITERATURE_DSVAE = {"action_accuracy": 0.9073, "inception_score": 8.384, "h_yx": 0.072, "h_y": 2.192}


def select_videos(n_split: int, legacy: bool = False, limit: int | None = None,
                  indices: Any = None) -> torch.Tensor:
    """Split positions of the evaluated videos, in evaluation order (see the module docstring)."""
    if indices is not None:
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n_split):
            raise DsvaeError(f"video index out of range for a split of {n_split} videos")
        if len(torch.unique(idx)) != len(idx):
            raise DsvaeError("the evaluated video indices repeat a video")
        return idx
    n = (n_split // LEGACY_BATCH) * LEGACY_BATCH if legacy else n_split
    if limit is not None:
        if limit <= 0:
            raise DsvaeError(f"limit must be positive, got {limit}")
        n = min(n, limit)
    return torch.arange(n)


def derangement(n: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random permutation of 0..n-1 without fixed points (rejection sampling, n >= 2)."""
    if n < 2:
        raise DsvaeError(f"the swap test needs at least 2 videos, got {n}")
    ar = torch.arange(n)
    while True:
        perm = torch.randperm(n, generator=generator)
        if not bool((perm == ar).any()):
            return perm


def _test_seed(seed: int, repeat: int, test: int) -> int:
    return seed * 1_000_003 + 10 * repeat + test


def _load_model(run: Any, device: torch.device, weights: str = "auto") -> tuple[nn.Module, dict[str, Any], bool]:
    """(model, info, loaded here) of a run folder, checkpoint file or model object."""
    if isinstance(run, nn.Module):
        info = {"source": "object", "model_type": getattr(run, "model_type", "") or type(run).__name__}
        config = getattr(run, "config", None)
        if hasattr(config, "to_dict"):
            info["model_config"] = config.to_dict()
        return run, info, False
    from dsvae.training.checkpoint import load_checkpoint, model_from_checkpoint, resolve_checkpoint

    file = resolve_checkpoint(run)
    ckpt = load_checkpoint(file, map_location="cpu")
    if ckpt.get("model_type") == "judge":
        raise DsvaeError(f"{run} is a judge, not a model run (pass it with --judge)")
    # what dsvae.load(path) does, keeping the checkpoint's metadata
    model, used = model_from_checkpoint(ckpt, weights, file)
    info = {"source": str(run), "checkpoint": str(file), "model_type": ckpt["model_type"],
            "model_config": ckpt.get("model_config", {}), "step": ckpt.get("step"), "weights": used}
    if "bn_recalibrated" in ckpt:  # dsvae train --bn-recalibrate: batch-norm statistics recomputed at the end
        info["bn_recalibrated"] = ckpt["bn_recalibrated"]
    if ckpt.get("polished", {}).get("weights") == used:  # dsvae polish: the judged weights' decoder was refit
        info["polished"] = ckpt["polished"]
    if used in ckpt.get("static_prior", {}):  # dsvae fit-prior: the dynamic test's f comes from the fitted mixture
        info["static_prior"] = ckpt["static_prior"][used]
    return model.to(device).eval(), info, True


def _run_name(run: Any, info: dict[str, Any]) -> str:
    """Row label: the model type and the run folder's name (or the checkpoint file's stem)."""
    if isinstance(run, nn.Module):
        return str(info["model_type"])
    path = Path(run)
    if path.is_dir():
        label = path.resolve().name
    elif path.parent.name == "checkpoints":
        label = f"{path.resolve().parent.parent.name}/{path.stem}"
    else:
        label = path.stem
    return f"{info['model_type']} ({label})"


class _Runner:
    """Decode-and-classify in batches on the evaluation device."""

    def __init__(self, model: nn.Module, judge: Judge, batch_size: int, autocast: bool, device: torch.device,
                 bar: tqdm) -> None:
        self.model, self.judge, self.batch_size = model, judge, batch_size
        self.autocast, self.device, self.bar = autocast, device, bar

    def judge_real(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Judge probabilities {head: (b, classes)} (CPU, float32) of real videos x."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            probs = self.judge.predict(x)
        return {h: probs[h].float().cpu() for h in HEADS}

    def classify(self, f: torch.Tensor, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Judge probabilities {head: (n, classes)} (CPU, float32) of decode(f, z)."""
        out: dict[str, list[torch.Tensor]] = {h: [] for h in HEADS}
        for s in range(0, f.shape[0], self.batch_size):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                x = self.model.decode(f[s:s + self.batch_size], z[s:s + self.batch_size])
                probs = self.judge.predict(x.float())
            for h in HEADS:
                out[h].append(probs[h].float().cpu())
            self.bar.update(1)
        return {h: torch.cat(v) for h, v in out.items()}


def _attribute_scores(probs: dict[str, torch.Tensor], attributes: torch.Tensor) -> dict[str, Any]:
    per = {name: metrics.accuracy(probs[name].argmax(-1), attributes[:, k]) for k, name in enumerate(FACTORS)}
    return {"attribute_accuracy": sum(per.values()) / len(per), "attributes": per}


def _action_and_attribute_row(probs: dict[str, torch.Tensor], actions: torch.Tensor, attributes: torch.Tensor,
                              balanced: torch.Tensor) -> dict[str, float]:
    """Action accuracy, IS / H(y|x) / H(y) on the ``balanced`` subset and attribute accuracies of judged videos."""
    row = {"action_accuracy": metrics.accuracy(probs["action"].argmax(-1), actions)}
    row.update(metrics.action_scores(probs["action"][balanced]))
    attr = _attribute_scores(probs, attributes)
    row["attribute_accuracy"] = attr["attribute_accuracy"]
    row.update({f"attributes.{k}": v for k, v in attr["attributes"].items()})
    return row


def evaluate(
    run: Any,
    judge: Judge | str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike | None = None,
    repeats: int = 5,
    legacy: bool = False,
    batch_size: int = 128,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
    split: str = "test",
    limit: int | None = None,
    indices: Any = None,
    amp: str = "off",
    overwrite: bool = False,
    name: str | None = None,
    weights: str = "auto",
) -> dict[str, Any]:
    """Run the dynamic, static and swap tests (see the module docstring) and return the results.

    ``run``: a run folder, a checkpoint file, or a model object (moved to ``device`` and put in
    eval mode while evaluated; its training flag is restored). ``judge``: a judge file or a
    :class:`Judge`. ``data``: the data set file; ``split`` (default ``test``) is evaluated:
    all of it, in file order, or with ``legacy`` the first floor(N/128)*128 videos; ``limit``
    and ``indices`` restrict it further (quick runs). ``batch_size`` videos are decoded and
    judged at once. ``amp="bf16"`` runs encode, decode and judge under bf16 autocast (about
    twice as fast on recent CPUs; the default ``off`` is fp32). ``out``: RESULTS.json written
    atomically (an existing file is refused unless ``overwrite``). ``name`` labels the
    markdown row (default: the model type and the run folder's name). ``weights``: which weights of
    a checkpoint are judged: "auto" (the weight average when the run kept one), "ema" or "raw".

    Returns a dict with, for each of ``dynamic``, ``static`` and ``swap``, either
    ``{"status": "ok", <metric>: {"mean", "std", "values"}, ...}`` or
    ``{"status": "not applicable", "reason": ...}``, plus the run, judge and data details,
    ``real`` (the judge on the real videos, same format, one value each), ``n_videos``, ``repeats``,
    ``seconds`` and the ``markdown_header`` / ``markdown_row`` / ``markdown_real_row``.
    """
    from dsvae.training.runtime import apply_cpu_allocator_settings
    from dsvae.training.trainer import resolve_device, warn_if_slow_bf16

    t_start = time.time()
    if not isinstance(repeats, int) or repeats <= 0:
        raise DsvaeError(f"repeats must be a positive integer, got {repeats!r}")
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise DsvaeError(f"batch size must be a positive integer, got {batch_size!r}")
    if amp not in ("off", "bf16"):
        raise DsvaeError(f"unknown amp {amp!r} (use off or bf16)")
    out_path = check_output_path(out, overwrite=overwrite, what="results file") if out is not None else None
    dev = resolve_device(device)
    apply_cpu_allocator_settings()  # keeps the big activation buffers mapped between batches

    model, model_info, owned = _load_model(run, dev, weights)
    model_info["has_sequence_prior"] = bool(getattr(model, "has_sequence_prior", False))
    if isinstance(judge, Judge):
        judge_model = judge
        judge_path = judge.meta.get("path")
    else:
        judge_model = load_judge(judge)
        judge_path = str(judge)
    judge_was_training, judge_device = judge_model.training, judge_model.device
    model_was_training = model.training
    model_device = next(model.parameters()).device if any(True for _ in model.parameters()) else dev

    probe = SpritesDataset(data, split, resident=False)
    n_split = len(probe)
    data_attrs = probe.attrs
    probe.close()
    positions = select_videos(n_split, legacy=legacy, limit=limit, indices=indices)
    n = len(positions)
    if n == 0:
        raise DsvaeError(f"no videos to evaluate in split '{split}' of {data}")
    model_size = getattr(getattr(model, "config", None), "image_size", None)
    ds = SpritesDataset(data, split, image_size=model_size, indices=positions.tolist(),
                        progress=progress)
    actions, attributes = ds.actions, ds.attributes
    frames = ds.frames
    warnings: list[str] = []
    judge_source = judge_model.meta.get("data_source")
    if judge_source is not None and judge_source != data_attrs.get("source"):
        warnings.append(f"the judge was trained on '{judge_source}' data but the evaluated data is "
                        f"'{data_attrs.get('source')}'")
    if fitted_sequences(model) == 0:
        warnings.append("the model's static prior mixture was never fitted (dsvae fit-prior): the dynamic test "
                        "draws f from N(0, I)")
    if ds.image_size != judge_model.image_size:
        warnings.append(f"decoded {ds.image_size}x{ds.image_size} frames are resized to the judge's "
                        f"{judge_model.image_size}x{judge_model.image_size}")

    use_amp = amp == "bf16"
    if use_amp:
        warn_if_slow_bf16(dev)
    batches = -(-n // batch_size)
    rng_devices = [dev] if dev.type == "cuda" else []
    results: dict[str, Any] = {}
    timing: dict[str, float] = {}
    bar = tqdm(total=batches * (1 + len(TESTS) * repeats), desc="evaluate", unit="batch", disable=not progress,
               dynamic_ncols=True)
    try:
        model.to(dev).eval()
        judge_model.to(dev).eval()
        if owned:
            model.to(memory_format=torch.channels_last)  # faster convolutions; our own copy
        runner = _Runner(model, judge_model, batch_size, use_amp, dev, bar)
        with torch.inference_mode(), torch.random.fork_rng(devices=rng_devices):
            # encode every video once; the posterior means serve every test and repeat
            t0 = time.time()
            f_means, z_means = [], []
            real_probs: dict[str, list[torch.Tensor]] = {h: [] for h in HEADS}
            for s in range(0, n, batch_size):
                x = to_float(ds.videos_uint8(torch.arange(s, min(s + batch_size, n)))).to(dev)
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
                    post = model.encode(x)
                f_means.append(post.f_mean.float())
                z_means.append(post.z_mean.float())
                for h, p in runner.judge_real(x).items():
                    real_probs[h].append(p)
                bar.update(1)
            f_mean, z_mean = torch.cat(f_means), torch.cat(z_means)
            timing["encode"] = time.time() - t0
            balanced = metrics.balanced_subset(actions)
            # the judge on the evaluated real videos themselves: the ceiling of what any model can score
            real = {h: torch.cat(v) for h, v in real_probs.items()}
            results["real"] = _aggregate([_action_and_attribute_row(real, actions, attributes, balanced)])

            def dynamic(r: int) -> dict[str, float]:
                torch.manual_seed(_test_seed(seed, r, 0))
                f = model.sample_static(n).to(dev, torch.float32)
                return _action_and_attribute_row(runner.classify(f, z_mean), actions, attributes, balanced)

            def static(r: int) -> dict[str, float]:
                torch.manual_seed(_test_seed(seed, r, 1))
                z = model.sample_dynamics(n, frames, means=True).to(dev, torch.float32)
                probs = runner.classify(f_mean, z)
                attr = _attribute_scores(probs, attributes)
                row = {"attribute_accuracy": attr["attribute_accuracy"]}
                row.update({f"attributes.{k}": v for k, v in attr["attributes"].items()})
                row["action_accuracy"] = metrics.accuracy(probs["action"].argmax(-1), actions)
                return row

            def swap(r: int) -> dict[str, float]:
                gen = torch.Generator().manual_seed(_test_seed(seed, r, 2))
                perm = derangement(n, gen)
                probs = runner.classify(f_mean, z_mean[perm.to(dev)])
                attr = _attribute_scores(probs, attributes)
                row = {"attribute_accuracy": attr["attribute_accuracy"]}
                row.update({f"attributes.{k}": v for k, v in attr["attributes"].items()})
                row["action_accuracy"] = metrics.accuracy(probs["action"].argmax(-1), actions[perm])
                return row

            tests: dict[str, Callable[[int], dict[str, float]]] = {"dynamic": dynamic, "static": static, "swap": swap}
            for test_name, fn in tests.items():
                t0 = time.time()
                rows: list[dict[str, float]] = []
                try:
                    for r in range(repeats):
                        rows.append(fn(r))
                except NotApplicable as exc:
                    bar.update(batches * (repeats - len(rows)))
                    results[test_name] = {"status": NOT_APPLICABLE, "reason": str(exc)}
                else:
                    results[test_name] = _aggregate(rows)
                    if test_name == "dynamic":
                        results[test_name]["balanced_per_class"] = len(balanced) // max(len(torch.unique(actions)), 1)
                        results[test_name]["balanced_videos"] = len(balanced)
                timing[test_name] = time.time() - t0
    finally:
        bar.close()
        model.train(model_was_training)
        judge_model.train(judge_was_training)
        if not owned:
            model.to(model_device)
        judge_model.to(judge_device)

    timing["total"] = time.time() - t_start
    label = name or _run_name(run, model_info)
    header, row = markdown_row(label, results)
    real_label = f"real {split} videos ({n}; what the judge reads on the data itself)"
    report: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dsvae_version": __version__,
        "torch_version": torch.__version__,
        "name": label,
        "model": model_info,
        "judge": {
            "path": judge_path,
            "config": judge_model.config.to_dict(),
            "test_accuracy": judge_model.meta.get("test_accuracy"),
            "data_source": judge_source,
        },
        "data": {
            "path": str(data),
            "split": split,
            "source": data_attrs.get("source"),
            "videos_in_split": n_split,
            "image_size": ds.image_size,
        },
        "selection": ("explicit indices" if indices is not None else
                      f"first {n} videos in file order" + (" (legacy: batch 128, drop_last)" if legacy else "")),
        "n_videos": n,
        "positions": positions.tolist() if indices is not None or limit is not None else None,
        "repeats": repeats,
        "legacy": legacy,
        "seed": seed,
        "batch_size": batch_size,
        "device": str(dev),
        "amp": amp,
        **results,
        "warnings": warnings,
        "seconds": timing["total"],
        "timing": timing,
        "markdown_header": header,
        "markdown_row": row,
        "markdown_real_row": markdown_real_row(real_label, results["real"]),
    }
    if out_path is not None:
        atomic_write_text(out_path, json.dumps(report, indent=2) + "\n")
    return report


def _aggregate(rows: list[dict[str, float]]) -> dict[str, Any]:
    """Per-repeat rows -> {"status": "ok", metric: mean_std, "attributes": {factor: mean_std}}."""
    out: dict[str, Any] = {"status": "ok"}
    for key in rows[0]:
        stats = metrics.mean_std([r[key] for r in rows])
        if key.startswith("attributes."):
            out.setdefault("attributes", {})[key.split(".", 1)[1]] = stats
        else:
            out[key] = stats
    return out


def markdown_real_row(label: str, real: dict[str, Any]) -> str:
    """A row of :func:`markdown_row`'s table for the judge on the real videos (``results["real"]``): its
    action accuracy, IS, H(y|x) and H(y) under the dynamic test's columns, its attribute accuracy under
    the static and swap attribute columns and its action accuracy under the swap action column (the
    ceilings of those columns); ``-`` where the ideal is chance."""
    def pct(key: str) -> str:
        return f"{100 * real[key]['mean']:.2f}%"

    cells = [pct("action_accuracy"), f"{real['inception_score']['mean']:.3f}", f"{real['h_yx']['mean']:.3f}",
             f"{real['h_y']['mean']:.3f}", "-", pct("attribute_accuracy"), "-", pct("attribute_accuracy"),
             pct("action_accuracy")]
    return f"| {label.replace('|', '/')} | " + " | ".join(cells) + " |"


def markdown_row(label: str, results: dict[str, Any]) -> tuple[str, str]:
    """(header lines, row) of a markdown table in the literature's order (dynamic Acc, IS, H(y|x),
    H(y)) followed by this protocol's static and swap columns; means over repeats."""
    cols = [
        ("acc", "dynamic", "action_accuracy", "pct"),
        ("IS", "dynamic", "inception_score", "3f"),
        ("H(y\\|x)", "dynamic", "h_yx", "3f"),
        ("H(y)", "dynamic", "h_y", "3f"),
        ("dyn. attr acc", "dynamic", "attribute_accuracy", "pct"),
        ("static attr acc", "static", "attribute_accuracy", "pct"),
        ("static action acc", "static", "action_accuracy", "pct"),
        ("swap attr acc", "swap", "attribute_accuracy", "pct"),
        ("swap action acc", "swap", "action_accuracy", "pct"),
    ]
    cells = []
    for _, test, key, fmt in cols:
        entry = results.get(test, {})
        if entry.get("status") != "ok":
            cells.append("n/a")
            continue
        value = entry[key]["mean"]
        cells.append(f"{100 * value:.2f}%" if fmt == "pct" else f"{value:.3f}")
    header = "| model | " + " | ".join(c[0] for c in cols) + " |\n|---|" + "---:|" * len(cols)
    row = f"| {label.replace('|', '/')} | " + " | ".join(cells) + " |"
    return header, row
