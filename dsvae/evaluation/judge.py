"""The judge: the sequence classifier the field uses to score generated sprites.

Architecture (as in the literature's Sprites judge): every frame goes through the
DCGAN-64 frame encoder (:class:`~dsvae.models.blocks.FrameEncoder`, widths
64-128-256-512, a 128-d feature), a one-layer bidirectional LSTM (hidden 256) reads the
frame features, and the sequence summary — the last step of the forward direction
concatenated with the first step of the backward one (``pooling="ends"``; ``"mean"``
averages the LSTM output over time instead) — feeds five linear heads: ``action``
(9 motions) and the four attributes ``body``, ``bottom``, ``top``, ``hair`` (6 values each).

It is trained with full supervision (cross-entropy summed over the five heads, Adam) on
the train split of a data set and saved as a dsvae checkpoint of ``model_type`` "judge"
(its config, weights, the per-head test accuracy and the training data set's source).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from tqdm.auto import tqdm

from dsvae import __version__
from dsvae.data.dataset import SpritesDataset, to_float
from dsvae.data.schema import FACTORS, HEAD_CLASSES, HEADS, open_h5
from dsvae.errors import DsvaeError
from dsvae.io import check_output_path
from dsvae.models.base import ModelConfig, check_choice, check_positive
from dsvae.models.blocks import NORMS, FrameEncoder, image_size_for
from dsvae.training import checkpoint as ckpt_io

MODEL_TYPE = "judge"

#: Judge presets: ``field`` is the literature's judge, ``tiny`` is for tests (seconds on a CPU).
#: Encoder widths double from ``base_width`` up to ``max_width``, one stride-2 block per doubling
#: of the image size (4 * 2**blocks pixels).
PRESETS: dict[str, dict[str, Any]] = {
    "field": {"image_size": 64, "base_width": 64, "max_width": 512, "feature_dim": 128, "hidden_dim": 256},
    "tiny": {"image_size": 16, "base_width": 8, "max_width": 64, "feature_dim": 32, "hidden_dim": 32},
}


@dataclass
class JudgeConfig(ModelConfig):
    """Constructor arguments of :class:`Judge` (saved with its weights)."""

    image_size: int = 64
    widths: tuple[int, ...] = (64, 128, 256, 512)
    feature_dim: int = 128
    hidden_dim: int = 256
    norm: str = "batch"
    pooling: str = "ends"

    def validate(self) -> None:
        check_positive(self, "image_size", "widths", "feature_dim", "hidden_dim")
        check_choice(self, "norm", NORMS)
        check_choice(self, "pooling", ("ends", "mean"))
        if image_size_for(self.widths) != self.image_size:
            raise DsvaeError(
                f"JudgeConfig: {len(self.widths)} encoder widths give {image_size_for(self.widths)}x"
                f"{image_size_for(self.widths)} images, but image_size is {self.image_size}"
            )


def judge_config(preset: str = "field", image_size: int | None = None, **overrides: Any) -> JudgeConfig:
    """The config of a judge preset, optionally for another image size (4 * 2**k pixels).

    ``field`` gives widths 64-128-256-512 at 64x64 (64-128-256 at 32x32), ``tiny`` 8-16 at 16x16.
    """
    if preset not in PRESETS:
        raise DsvaeError(f"unknown judge preset {preset!r} (known: {', '.join(PRESETS)})")
    p = PRESETS[preset]
    size = int(p["image_size"] if image_size is None else image_size)
    blocks = round(math.log2(size / 4)) if size >= 8 else 0
    if blocks < 1 or 4 * 2 ** blocks != size:
        raise DsvaeError(f"judge image size must be 4 * 2**k (8, 16, 32, 64, 128, ...), got {image_size}")
    values: dict[str, Any] = {
        "image_size": size,
        "widths": tuple(min(p["base_width"] * 2 ** i, p["max_width"]) for i in range(blocks)),
        "feature_dim": p["feature_dim"],
        "hidden_dim": p["hidden_dim"],
        **overrides,
    }
    return JudgeConfig.from_dict(values)


def resize_frames(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize float videos (B, T, C, H, W) to ``size`` x ``size``.

    The same modes as the data set's resizing (:func:`dsvae.data.dataset.resize_videos`):
    area averaging to shrink, nearest neighbour to enlarge; values are not quantised.
    """
    b, _, _, h, w = x.shape
    if h == size and w == size:
        return x
    frames = rearrange(x, "b t c h w -> (b t) c h w")
    mode = "area" if size < h else "nearest"
    out = F.interpolate(frames.float(), size=(size, size), mode=mode)
    return rearrange(out, "(b t) c h w -> b t c h w", b=b)


class Judge(nn.Module):
    """Sequence classifier: float videos (B, T, 3, H, W) in [0, 1] -> logits of every head."""

    def __init__(self, config: JudgeConfig | Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__()
        if config is None or isinstance(config, Mapping):
            config = JudgeConfig.from_dict({**dict(config or {}), **kwargs})
        elif kwargs:
            config = JudgeConfig.from_dict({**config.to_dict(), **kwargs})
        else:
            config.validate()
        self.config: JudgeConfig = config
        c = config
        self.encoder = FrameEncoder(c.widths, c.feature_dim, norm=c.norm)
        self.lstm = nn.LSTM(c.feature_dim, c.hidden_dim, batch_first=True, bidirectional=True)
        self.heads = nn.ModuleDict({name: nn.Linear(2 * c.hidden_dim, HEAD_CLASSES[name]) for name in HEADS})
        #: What the checkpoint said about this judge (test accuracy, training data); empty for a new one.
        self.meta: dict[str, Any] = {}
        self.to(memory_format=torch.channels_last)  # faster convolutions on CPU and GPU

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits ``{head: (B, classes)}`` of videos x (B, T, 3, S, S), S = ``config.image_size``."""
        s = self.config.image_size
        if x.ndim != 5 or x.shape[2] != 3 or x.shape[3] != s or x.shape[4] != s:
            raise DsvaeError(f"the judge takes videos (B, T, 3, {s}, {s}), got {tuple(x.shape)}")
        b = x.shape[0]
        frames = rearrange(x, "b t c h w -> (b t) c h w").contiguous(memory_format=torch.channels_last)
        feats = rearrange(self.encoder(frames), "(b t) d -> b t d", b=b)
        out, _ = self.lstm(feats)
        if self.config.pooling == "ends":
            h = self.config.hidden_dim
            summary = torch.cat([out[:, -1, :h], out[:, 0, h:]], dim=-1)
        else:
            summary = out.mean(1)
        return {name: head(summary) for name, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Class probabilities ``{head: (B, classes)}`` (float32) of videos of any size.

        Frames of another size are resized to the judge's with :func:`resize_frames`.
        """
        x = resize_frames(x, self.config.image_size).clamp(0.0, 1.0)
        return {k: torch.softmax(v.float(), dim=-1) for k, v in self(x).items()}


# ----------------------------------------------------------------------------------
# saving and loading
# ----------------------------------------------------------------------------------
def save_judge(path: str | os.PathLike, judge: Judge, **meta: Any) -> None:
    """Write ``judge`` (config, weights and ``meta`` fields) atomically as a dsvae checkpoint."""
    ckpt_io.save_checkpoint(path, {
        "dsvae_version": __version__,
        "model_type": MODEL_TYPE,
        "model_config": judge.config.to_dict(),
        "model": {k: v.detach().cpu().contiguous() for k, v in judge.state_dict().items()},
        **meta,
    })


def load_judge(path: str | os.PathLike, device: str | torch.device = "cpu") -> Judge:
    """Rebuild a judge saved by :func:`train_judge` (eval mode), with its checkpoint fields in ``judge.meta``."""
    path = Path(path)
    if not path.exists():
        raise DsvaeError(f"judge {path} does not exist (train one with `dsvae judge train`)")
    if path.is_dir():
        raise DsvaeError(f"judge {path} is a directory, expected a judge .pt file")
    ckpt = ckpt_io.load_checkpoint(path, map_location="cpu")
    kind = ckpt.get("model_type")
    if kind != MODEL_TYPE:
        raise DsvaeError(f"{path} is a {kind!r} checkpoint, not a judge (train one with `dsvae judge train`)")
    judge = Judge(JudgeConfig.from_dict(ckpt["model_config"]))
    try:
        judge.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError) as exc:
        raise DsvaeError(f"{path}: the judge weights do not match its config: {str(exc).splitlines()[0]}") from exc
    judge.meta = {k: v for k, v in ckpt.items() if k not in ("model", "format", "format_version")}
    judge.meta["path"] = str(path)
    return judge.to(device).eval()


# ----------------------------------------------------------------------------------
# accuracy
# ----------------------------------------------------------------------------------
def _labels(ds: SpritesDataset) -> dict[str, torch.Tensor]:
    out = {"action": ds.actions}
    for k, name in enumerate(FACTORS):
        out[name] = ds.attributes[:, k]
    return out


@torch.inference_mode()
def test_judge(judge: Judge, data: str | os.PathLike | SpritesDataset, split: str = "test",
               batch_size: int = 256, limit: int | None = None, progress: bool = False) -> dict[str, float]:
    """Per-head accuracy ``{head: share correct}`` of ``judge`` on a split (batched, on the judge's device)."""
    if isinstance(data, SpritesDataset):
        ds = data
    else:
        ds = SpritesDataset(data, split, image_size=judge.image_size, limit=limit)
    if len(ds) == 0:
        raise DsvaeError(f"split '{ds.split}' of {ds.path} is empty")
    was_training = judge.training
    judge.eval()
    device = judge.device
    labels = _labels(ds)
    correct = {name: 0 for name in HEADS}
    bar = tqdm(total=len(ds), desc="judge test", unit="seq", disable=not progress, leave=False)
    try:
        for start in range(0, len(ds), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(ds)))
            x = resize_frames(to_float(ds.videos_uint8(idx)).to(device), judge.image_size)
            logits = judge(x)
            for name in HEADS:
                correct[name] += int((logits[name].argmax(-1).cpu() == labels[name][idx]).sum())
            bar.update(len(idx))
    finally:
        bar.close()
        judge.train(was_training)
    return {name: correct[name] / len(ds) for name in HEADS}


test_judge.__test__ = False  # a library function, not a pytest test, when imported into a test module


# ----------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------
@dataclass
class JudgeResult:
    """What :func:`train_judge` returns."""

    path: Path
    judge: Judge
    test_accuracy: dict[str, float] | None
    train_accuracy: dict[str, float]  # running accuracy over the last epoch
    epochs: float
    steps: int
    seconds: float
    seq_per_s: float  # training throughput (sequences per second, optimisation steps only)


def augment_batch(x: torch.Tensor, generator: torch.Generator, shift: int = 2, noise: float = 0.02) -> torch.Tensor:
    """Light augmentation of float videos (B, T, C, H, W): one random translation per video
    (up to ``shift`` pixels each way, with wrap-around) and Gaussian pixel noise of std ``noise``."""
    b = x.shape[0]
    shifts = torch.randint(-shift, shift + 1, (b, 2), generator=generator)
    out = torch.stack([torch.roll(x[i], (int(dy), int(dx)), dims=(-2, -1)) for i, (dy, dx) in enumerate(shifts)])
    if noise > 0:
        out = out + noise * torch.randn(out.shape, generator=generator).to(out.device)
    return out.clamp_(0.0, 1.0)


#: Learning-rate schedules of :func:`train_judge`.
LR_SCHEDULES = ("cosine", "constant")


def train_judge(
    data: str | os.PathLike,
    out: str | os.PathLike,
    epochs: float = 5,
    batch_size: int = 64,
    lr: float = 1e-3,
    device: str = "auto",
    seed: int = 0,
    config: JudgeConfig | Mapping[str, Any] | str | None = None,
    image_size: int | None = None,
    augment: bool = False,
    progress: bool = True,
    overwrite: bool = False,
    limit: int | None = None,
    amp: str = "auto",
    lr_schedule: str = "cosine",
) -> JudgeResult:
    """Train a judge on the train split of ``data`` and save it to ``out``.

    ``config`` is a :class:`JudgeConfig`, a dict of its fields, or a preset name (``field``,
    the default, or ``tiny``); ``image_size`` picks another frame size for a preset (see
    :func:`judge_config`). The whole train split stays in memory as uint8 (on the GPU when
    training there) and batches are gathered by indexing; every epoch visits all sequences in
    a seeded random order (the last batch may be smaller). Loss: cross-entropy summed over the
    five heads; Adam with ``lr``, decayed to 0 along a half cosine over the planned steps
    (``lr_schedule="cosine"``, the default) or kept (``"constant"``). ``augment`` turns on :func:`augment_batch` (off by default).
    ``amp``: ``auto`` = bf16 autocast on a GPU, fp32 on a CPU; ``bf16``; ``off``.
    When the file has a test split, the per-head test accuracy is measured at the end and
    saved with the judge. An existing ``out`` is refused unless ``overwrite``.
    """
    from dsvae.training.runtime import apply_cpu_allocator_settings
    from dsvae.training.trainer import amp_dtype, resolve_device

    out = check_output_path(out, overwrite=overwrite, what="judge")
    if isinstance(config, str) or config is None:
        cfg = judge_config(config or "field", image_size=image_size)
    else:
        cfg = config if isinstance(config, JudgeConfig) else JudgeConfig.from_dict(config)
        if image_size is not None and image_size != cfg.image_size:
            raise DsvaeError(f"image_size {image_size} contradicts the judge config's {cfg.image_size}")
    cfg.validate()
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise DsvaeError(f"batch size must be a positive integer, got {batch_size!r}")
    for name, value in (("epochs", epochs), ("lr", lr)):
        if not value > 0:
            raise DsvaeError(f"{name} must be positive, got {value!r}")
    if limit is not None and limit <= 0:
        raise DsvaeError(f"limit must be positive, got {limit!r}")
    if lr_schedule not in LR_SCHEDULES:
        raise DsvaeError(f"unknown learning-rate schedule {lr_schedule!r} (use {' or '.join(LR_SCHEDULES)})")
    apply_cpu_allocator_settings()
    dev = resolve_device(device)
    autocast = amp_dtype(amp, dev)

    with open_h5(data) as f:
        has_test = "test" in f
    ds = SpritesDataset(data, "train", image_size=cfg.image_size, limit=limit, progress=progress)
    if len(ds) == 0:
        raise DsvaeError(f"the train split of {data} is empty")
    videos = ds.videos
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        if videos.numel() < 0.5 * free:
            videos = videos.to(dev)
    labels = {k: v.to(dev) for k, v in _labels(ds).items()}

    torch.manual_seed(seed)
    judge = Judge(cfg).to(dev)
    opt = torch.optim.Adam(judge.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = len(ds)
    per_epoch = math.ceil(n / batch_size)
    total = max(1, math.ceil(epochs * per_epoch))
    bar = tqdm(total=total, desc="train judge", unit="step", disable=not progress, dynamic_ncols=True)
    step, seen, busy = 0, 0, 0.0
    t0 = time.time()
    running: dict[str, torch.Tensor] = {}
    count = 0
    judge.train()
    try:
        while step < total:
            perm = torch.randperm(n, generator=gen)
            running = {name: torch.zeros((), device=dev) for name in HEADS}
            count = 0
            for start in range(0, n, batch_size):
                if step >= total:
                    break
                t_step = time.time()
                if lr_schedule == "cosine":
                    for group in opt.param_groups:
                        group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
                idx = perm[start:start + batch_size]
                x = to_float(videos[idx.to(videos.device)].to(dev, non_blocking=True))
                if augment:
                    x = augment_batch(x, gen)
                idx_dev = idx.to(dev)
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast is not None):
                    logits = judge(x)
                losses = {name: F.cross_entropy(logits[name].float(), labels[name][idx_dev]) for name in HEADS}
                loss = sum(losses.values())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    for name in HEADS:
                        running[name] += (logits[name].argmax(-1) == labels[name][idx_dev]).sum()
                count += len(idx)
                step += 1
                seen += len(idx)
                if step % 10 == 0 or step == total:
                    if not torch.isfinite(loss.detach()):
                        raise DsvaeError(f"the judge's loss became NaN or infinite at step {step}; try a lower --lr")
                    bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
                bar.update(1)
                busy += time.time() - t_step
    finally:
        bar.close()
    judge.eval()
    train_acc = {name: float(running[name]) / max(count, 1) for name in HEADS}
    test_acc = test_judge(judge, data, "test", progress=progress) if has_test else None
    seconds = time.time() - t0
    save_judge(out, judge, test_accuracy=test_acc, train_accuracy=train_acc,
               data_source=ds.attrs.get("source"), data_path=str(data),
               train_config={"epochs": epochs, "batch_size": batch_size, "lr": lr, "lr_schedule": lr_schedule, "seed": seed,
                             "augment": augment, "limit": limit, "steps": step, "amp": amp})
    judge.meta = {"test_accuracy": test_acc, "train_accuracy": train_acc, "data_source": ds.attrs.get("source"),
                  "data_path": str(data), "path": str(out)}
    return JudgeResult(out, judge, test_acc, train_acc, epochs, step, seconds, seen / max(busy, 1e-9))
