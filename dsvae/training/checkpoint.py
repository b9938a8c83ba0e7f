"""Checkpoints: plain tensors and types only (``torch.load(weights_only=True)``), written atomically.

A checkpoint alone rebuilds its model: it stores the model's registry name and its
config (the constructor arguments) beside the weights, plus optimizer and RNG states
so a run can be resumed exactly.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from dsvae.errors import DsvaeError
from dsvae.io import atomic_write_bytes, atomic_write_text

FORMAT = "dsvae-checkpoint"
FORMAT_VERSION = 1
LAST = "last.pt"


def save_checkpoint(path: str | os.PathLike, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` (plus format fields) to ``path`` atomically."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, buf)
    atomic_write_bytes(path, buf.getvalue())


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run folder (-> its checkpoints/last.pt)."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / "checkpoints" / LAST, path / LAST):
            if candidate.is_file():
                return candidate
        raise DsvaeError(f"run folder {path} has no checkpoint (expected {path / 'checkpoints' / LAST})")
    if not path.exists():
        raise DsvaeError(f"checkpoint or run folder {path} does not exist")
    return path


def derived_target(file: Path, out: str | os.PathLike | None, what: str) -> tuple[Path, Path | None]:
    """Where a command that changes checkpoint ``file`` (``what``: "polish", "fitted prior") writes its result,
    and the run's ``config.json`` to copy beside it (or None).

    Without ``out``: ``file`` itself, except a run's periodic checkpoint (``checkpoints/step_*.pt``), which
    keeps the run as it was trained and is refused. With ``out``: a new ``.pt`` file, or a new (or empty)
    run folder, written as its ``checkpoints/last.pt`` beside a copy of the source run's ``config.json``.
    Raises :class:`DsvaeError` before any work when the target is not acceptable."""
    in_run = file.parent.name == "checkpoints"
    if out is None:
        if in_run and file.name.startswith("step_"):
            raise DsvaeError(f"{file} is a periodic checkpoint: it keeps the run as it was trained, so the {what} "
                             "is not written over it; give a new run folder or .pt file to write to (--out)")
        return file, None
    out = Path(out)
    if out.suffix == ".pt" and not out.is_dir():
        if out.exists():
            raise DsvaeError(f"{out} already exists; give a new file to write the {what} to")
        return out, None
    if out.is_file() or (out.is_dir() and any(out.iterdir())):
        raise DsvaeError(f"{out} already exists and is not an empty folder; give a new run folder to write the "
                         f"{what} to")
    source = file.parent.parent / "config.json"
    return out / "checkpoints" / LAST, (source if in_run and source.is_file() else None)


def write_derived(target: Path, ckpt: Mapping[str, Any], config: Path | None) -> None:
    """Write checkpoint ``ckpt`` to ``target`` (from :func:`derived_target`), its folder created, atomically,
    and the run config beside it when ``config`` names one."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DsvaeError(f"cannot create folder {target.parent}: {exc.strerror}") from exc
    save_checkpoint(target, {k: v for k, v in ckpt.items() if k not in ("format", "format_version")})
    if config is not None:
        atomic_write_text(target.parent.parent / "config.json", config.read_text())


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely (weights_only) and check its format."""
    file = resolve_checkpoint(path)
    try:
        ckpt = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt/foreign files
        raise DsvaeError(f"cannot read checkpoint {file}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise DsvaeError(f"{file} is not a dsvae checkpoint")
    if int(ckpt.get("format_version", 0)) > FORMAT_VERSION:
        raise DsvaeError(f"{file} has checkpoint format {ckpt['format_version']}; this dsvae reads up to {FORMAT_VERSION}")
    return ckpt


WEIGHTS = ("auto", "ema", "raw")


def model_weights(ckpt: Mapping[str, Any], weights: str = "auto") -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, "ema" or "raw") of a checkpoint: the trained weights (``raw``), their moving average
    (``ema``, saved by runs trained with ``ema_decay``), or the average when there is one (``auto``)."""
    if weights not in WEIGHTS:
        raise DsvaeError(f"unknown weights {weights!r} (use {', '.join(WEIGHTS)})")
    has_ema = isinstance(ckpt.get("ema"), Mapping) and "weights" in ckpt["ema"]
    if weights == "ema" and not has_ema:
        raise DsvaeError("this checkpoint has no weight average (train with --ema-decay); use the raw weights")
    if weights == "raw" or not has_ema:
        return ckpt["model"], "raw"
    return ckpt["ema"]["weights"], "ema"


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", weights: str = "auto"):
    """Rebuild the model of a checkpoint (or run folder) with its weights, in eval mode.

    ``device``: a torch device or one of "auto" (CUDA when there is one), "cpu", "cuda[:N]".
    ``weights``: "auto" (the weight average when the run kept one, else the trained weights), "ema" or "raw".
    """
    from dsvae.training.trainer import resolve_device

    if isinstance(device, str):
        device = resolve_device(device)
    model, _ = model_from_checkpoint(load_checkpoint(path, map_location="cpu"), weights, resolve_checkpoint(path))
    return model.to(device).eval()


def model_from_checkpoint(ckpt: Mapping[str, Any], weights: str = "auto",
                          file: str | os.PathLike | None = None) -> tuple[Any, str]:
    """(model rebuilt from a loaded checkpoint with the chosen weights, "ema" or "raw"); ``file`` names the
    checkpoint in the error raised when it holds no model."""
    from dsvae.models import build_model

    if "model_type" not in ckpt or "model" not in ckpt:
        raise DsvaeError(f"{file if file is not None else 'the checkpoint'} has no model weights")
    state, used = model_weights(ckpt, weights)
    model = build_model(ckpt["model_type"], ckpt.get("model_config", {}))
    model.load_state_dict(state)
    return model, used


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
