"""Outputs of the image-level baselines (ae, vae, cvae, aae, aae-sup, aae-semi).

:func:`baseline_outputs` writes, for a trained baseline and a data set split:

- ``reconstructions.png``: real frames (top row) and their reconstructions (bottom row);
- ``samples.png``: images decoded from the model's prior over codes (not for the AE);
- ``class_grid.png`` (cvae): rows = classes set by hand, columns = fixed prior style samples;
- ``style_grid.png`` (aae-sup, aae-semi): rows = fixed style samples z, columns = classes y;
- ``latent_grid.png`` (``grid=True``, an AAE with a 2-D latent): a uniform grid over the latent plane;
- ``interpolation.gif`` (+ ``.png`` strip): per row, a frame, the decoded straight line from its
  code to the code of a frame of another sequence, and that frame;
- ``summary.json``: per-pixel reconstruction MSE on the split and, for models that predict a
  label (cvae, aae-sup's reader, aae-semi), the frame classification error of that label.

The training curves are in the run's ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from einops import repeat
from PIL import Image

from dsvae.data.dataset import SpritesDataset
from dsvae.errors import DsvaeError, NotApplicable
from dsvae.io import atomic_path, atomic_write_text, check_output_path
from dsvae.models.baselines import FrameModel
from dsvae.viz.gif import make_grid_frames, write_gif_grid


def write_png_grid(rows: list[list[torch.Tensor]], out: Path, labels: list[str] | None = None,
                   col_labels: list[str] | None = None, scale: int = 4) -> Path:
    """Write rows of single images (3, H, W) in [0, 1] as one labelled PNG grid, atomically."""
    frames = make_grid_frames([[img[None] for img in row] for row in rows], labels, scale=scale,
                              col_labels=col_labels)
    with atomic_path(out) as tmp:
        Image.fromarray(frames[0]).save(tmp, format="PNG")
    return out


def _load(run_or_model: Any, device: str | torch.device) -> FrameModel:
    if isinstance(run_or_model, torch.nn.Module):
        model = run_or_model
    else:
        from dsvae import load

        model = load(run_or_model, device=device)
    if not isinstance(model, FrameModel):
        raise DsvaeError(f"baseline outputs are for the image-level baselines (ae, vae, cvae, aae, aae-sup, "
                         f"aae-semi), not {getattr(model, 'model_type', type(model).__name__)!r}")
    return model


def class_names(model: FrameModel, ds: SpritesDataset) -> list[str]:
    """Names of the classes of the model's label (from the data set), else their numbers."""
    label = getattr(model.config, "label", None)
    names = list(ds.motion_names) if label == "action" else ds.factor_values(label) if label else []
    if len(names) != model.label_classes:
        names = [str(k) for k in range(model.label_classes)]
    return names


@torch.no_grad()
def evaluate_frames(model: FrameModel, ds: SpritesDataset, limit: int | None = None,
                    batch_size: int = 32) -> dict[str, float]:
    """Per-pixel reconstruction MSE of every frame of the split (or of ``limit`` sequences evenly
    spaced over it) and, when the model predicts a label, its frame classification error."""
    if len(ds) == 0:
        raise DsvaeError(f"the '{ds.split}' split is empty")
    if limit is None or limit >= len(ds):
        order = torch.arange(len(ds))
    else:
        order = torch.linspace(0, len(ds) - 1, max(int(limit), 1)).round().long()
    n = len(order)
    label = getattr(model.config, "label", None)
    device = model.device
    sq_err, pixels, wrong, frames = 0.0, 0, 0, 0
    for start in range(0, n, batch_size):
        batch = ds.batch(order[start:start + batch_size])
        x = batch["x"].to(device)
        x_hat = model.decode_frames(model.encode_frames(x).mean).float()
        sq_err += float((x_hat - x).pow(2).sum())
        pixels += x.numel()
        frames += x.shape[0] * x.shape[1]
        if model.label_classes:
            y = batch["action"] if label == "action" else batch["attributes"][:, ds.factor_names.index(label)]
            pred = model.classify_frames(x).argmax(-1).cpu()
            wrong += int((pred != y[:, None]).sum())
    out = {"recon_mse": sq_err / pixels, "frames": frames}
    if model.label_classes:
        out.update(label=label, classification_error=wrong / frames)
    return out


@torch.no_grad()
def interpolate_codes(model: FrameModel, a: torch.Tensor, b: torch.Tensor, steps: int) -> torch.Tensor:
    """Decode the straight line between the codes (means) of images a and b (N, 3, H, W) -> (N, steps, 3, H, W)."""
    ca, cb = model.encode_frames(a).mean, model.encode_frames(b).mean
    s = torch.linspace(0, 1, steps, device=ca.device, dtype=ca.dtype)[None, :, None]
    return model.decode_frames(ca[:, None] + s * (cb - ca)[:, None])


def write_latent_grid(model: FrameModel, out: Path, grid_size: int = 15,
                      grid_range: tuple[float, float] = (-10.0, 10.0), scale: int = 2) -> Path:
    """Decode a uniform ``grid_size`` x ``grid_size`` grid over a 2-D latent plane into one PNG."""
    lo, hi = grid_range
    with torch.no_grad():
        imgs = model.decode_grid(grid_size, float(lo), float(hi)).float().cpu()
    return write_png_grid([list(imgs[r * grid_size:(r + 1) * grid_size]) for r in range(grid_size)], out,
                          scale=max(1, scale))


def latent_grid(run_or_model: Any, out: str | os.PathLike, grid_size: int = 15,
                grid_range: tuple[float, float] = (-10.0, 10.0), scale: int = 2,
                device: str | torch.device = "cpu", overwrite: bool = False) -> Path:
    """``dsvae sample --grid``: the latent-plane grid of an AAE with a 2-D latent, as one PNG."""
    if not isinstance(grid_size, int) or isinstance(grid_size, bool) or grid_size <= 0:
        raise DsvaeError(f"grid size must be a positive integer, got {grid_size!r}")
    path = check_output_path(out, overwrite=overwrite, what="output")
    if path.suffix.lower() != ".png":
        raise DsvaeError(f"the latent grid is a PNG image; give an output ending in .png, not {path.name}")
    if isinstance(run_or_model, torch.nn.Module):
        model = run_or_model
    else:
        from dsvae import load

        model = load(run_or_model, device=device)
    if not hasattr(model, "decode_grid"):
        raise NotApplicable(f"a latent grid needs an adversarial autoencoder with a 2-D latent, not "
                            f"{getattr(model, 'model_type', type(model).__name__)!r}")
    was_training = model.training
    model.eval()
    try:
        return write_latent_grid(model, path, grid_size, grid_range, scale)
    finally:
        model.train(was_training)


def baseline_outputs(
    run_or_model: Any,
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    split: str = "test",
    n: int = 8,
    grid: bool = False,
    grid_size: int = 15,
    grid_range: tuple[float, float] = (-10.0, 10.0),
    steps: int = 12,
    pairs: int = 4,
    limit: int | None = None,
    seed: int = 0,
    scale: int = 4,
    device: str | torch.device = "cpu",
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write the baseline's figures and summary to ``out_dir`` (see the module docstring); return name -> path.

    ``run_or_model``: a run folder, checkpoint file or a loaded baseline. ``n`` images per row,
    ``limit`` sequences (evenly spaced) for the summary numbers (default: all), ``seed`` fixes the
    prior samples. Existing files are refused unless ``overwrite``.
    """
    for name, value in (("n", n), ("steps", steps), ("pairs", pairs), ("grid_size", grid_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise DsvaeError(f"{name} must be a positive integer, got {value!r}")
    model = _load(run_or_model, device)
    c = model.config
    if grid and getattr(c, "z_dim", None) != 2:
        raise NotApplicable(f"--grid needs an adversarial autoencoder with a 2-D latent (z_dim 2); this is "
                            f"{model.model_type} with {'z_dim ' + str(c.z_dim) if hasattr(c, 'z_dim') else 'no z_dim'}")
    ds = SpritesDataset(data, split, resident=False, image_size=c.image_size)
    if len(ds) < 2:
        raise DsvaeError(f"the '{split}' split of {data} needs at least 2 sequences, has {len(ds)}")

    names = ["reconstructions.png", "interpolation.gif", "interpolation.png", "summary.json"]
    if type(model).sample is not FrameModel.sample:  # the model has a prior over codes
        names.append("samples.png")
    if hasattr(model, "generate"):
        names.append("class_grid.png")
    if hasattr(model, "style_grid"):
        names.append("style_grid.png")
    if grid:
        names.append("latent_grid.png")
    out_dir = Path(out_dir)
    paths = {name: check_output_path(out_dir / name, overwrite=overwrite, what="output") for name in names}

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(seed)
            _write_all(model, ds, paths, n, grid, grid_size, grid_range, steps, pairs, limit, seed, scale)
    finally:
        model.train(was_training)
    return paths


def _write_all(model: FrameModel, ds: SpritesDataset, paths: dict[str, Path], n: int, grid: bool, grid_size: int,
               grid_range: tuple[float, float], steps: int, pairs: int, limit: int | None, seed: int,
               scale: int) -> None:
    device = model.device
    picks = torch.linspace(0, len(ds) - 1, n).round().long()
    videos = ds.batch(picks)["x"]
    frames = videos[torch.arange(len(picks)), torch.arange(len(picks)) % videos.shape[1]].to(device)
    recon = model.decode_frames(model.encode_frames(frames).mean).float().cpu()
    write_png_grid([list(frames.cpu()), list(recon)], paths["reconstructions.png"],
                   labels=["real", "reconstruction"], scale=scale)

    if "samples.png" in paths:
        samples = model.sample(n * n).float().cpu()
        write_png_grid([list(samples[r * n:(r + 1) * n]) for r in range(n)], paths["samples.png"], scale=scale)
    names = class_names(model, ds)
    if "class_grid.png" in paths:
        grid_imgs = model.generate(list(range(model.label_classes)), n).float().cpu()
        write_png_grid([list(row) for row in grid_imgs], paths["class_grid.png"], labels=names, scale=scale)
    if "style_grid.png" in paths:
        grid_imgs = model.style_grid(n).float().cpu()
        write_png_grid([list(row) for row in grid_imgs], paths["style_grid.png"],
                       labels=[f"z{i}" for i in range(n)], col_labels=names, scale=scale)
    if grid:
        write_latent_grid(model, paths["latent_grid.png"], grid_size, grid_range, scale=max(1, scale // 2))

    # interpolation: frame of sequence i -> frame of a sequence half the split away
    g = torch.Generator().manual_seed(seed)
    starts = torch.randperm(len(ds), generator=g)[:pairs]
    ends = (starts + len(ds) // 2) % len(ds)
    t_a = torch.randint(0, ds.frames, (len(starts),), generator=g)
    t_b = torch.randint(0, ds.frames, (len(starts),), generator=g)
    a = ds.batch(starts)["x"][torch.arange(len(starts)), t_a].to(device)
    b = ds.batch(ends)["x"][torch.arange(len(starts)), t_b].to(device)
    path = interpolate_codes(model, a, b, steps).float().cpu()
    rows = [[repeat(a[i].cpu(), "c h w -> t c h w", t=steps), path[i], repeat(b[i].cpu(), "c h w -> t c h w", t=steps)]
            for i in range(len(starts))]
    labels = [f"{int(s)} -> {int(e)}" for s, e in zip(starts, ends)]
    write_gif_grid(rows, paths["interpolation.gif"], labels=labels, scale=scale, duration_ms=150, png=True,
                   overwrite=True, col_labels=["from", "interpolation", "to"])

    summary: dict[str, Any] = {"model_type": model.model_type, "split": ds.split, "data": str(ds.path)}
    summary.update(evaluate_frames(model, ds, limit=limit))
    summary["files"] = sorted(p.name for p in paths.values())
    atomic_write_text(paths["summary.json"], json.dumps(summary, indent=2) + "\n")


__all__ = ["baseline_outputs", "class_names", "evaluate_frames", "interpolate_codes", "latent_grid",
           "write_latent_grid", "write_png_grid"]
