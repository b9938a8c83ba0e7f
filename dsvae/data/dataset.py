"""The one data set API the trainer, evaluator and swap tools share."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from tqdm.auto import tqdm

from dsvae.data.schema import FACTORS, MOTIONS, open_h5
from dsvae.errors import DsvaeError

_READ_BLOCK = 256  # sequences per read when loading resident


def to_float(videos: torch.Tensor) -> torch.Tensor:
    """uint8 videos (..., C, H, W) -> float32 in [0, 1]."""
    return videos.float().div_(255.0)


def resize_videos(videos: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 videos (N, T, C, H, W) to ``size`` x ``size`` (area average downscale, nearest upscale)."""
    n, t, c, h, w = videos.shape
    if h == size and w == size:
        return videos
    frames = rearrange(videos, "n t c h w -> (n t) c h w").float()
    mode = "area" if size < h else "nearest"
    out = F.interpolate(frames, size=(size, size), mode=mode)
    out = out.round_().clamp_(0, 255).to(torch.uint8)
    return rearrange(out, "(n t) c h w -> n t c h w", n=n)


class SpritesDataset(torch.utils.data.Dataset):
    """One split of a dsvae data set file.

    ``resident=True`` (default) reads every sequence once into a uint8 tensor
    ``videos`` of shape (N, T, 3, H, W) (1.15 GB for the whole real set at 64x64);
    ``resident=False`` reads sequences lazily from the file, and the h5py handle
    is reopened in each process, so it survives DataLoader worker processes.

    Items are dicts: ``x`` float (T, 3, H, W) in [0, 1], ``action`` (), ``attributes`` (4,),
    ``character`` (), ``index`` ().
    """

    def __init__(
        self,
        path: str | os.PathLike,
        split: str = "train",
        resident: bool = True,
        image_size: int | None = None,
        limit: int | None = None,
        indices: Sequence[int] | None = None,
        progress: bool = False,
    ) -> None:
        self.path = Path(path)
        self.split = split
        self.resident = resident
        with open_h5(self.path) as f:
            if split not in f:
                raise DsvaeError(f"data set {self.path} has no '{split}' split (has: {', '.join(f.keys())})")
            g = f[split]
            n_total = g["videos"].shape[0]
            self.frames, self.stored_size = int(g["videos"].shape[1]), int(g["videos"].shape[2])
            if indices is not None:
                idx = np.asarray(indices, dtype=np.int64)
                if idx.size and (idx.min() < 0 or idx.max() >= n_total):
                    raise DsvaeError(f"index out of range for split '{split}' of {n_total} sequences")
            else:
                idx = np.arange(n_total if limit is None else min(limit, n_total), dtype=np.int64)
            self.file_indices = idx
            self.actions = torch.from_numpy(g["actions"][:][idx].astype(np.int64))
            self.attributes = torch.from_numpy(g["attributes"][:][idx].astype(np.int64))
            self.characters = torch.from_numpy(g["characters"][:][idx].astype(np.int64))
            self.attrs = {k: _plain(v) for k, v in f.attrs.items()}
            self.image_size = int(image_size or self.stored_size)
            if self.image_size <= 0:
                raise DsvaeError(f"image size must be positive, got {self.image_size}")
            self.videos: torch.Tensor | None = None
            if resident:
                self.videos = self._read_all(g["videos"], progress)
        self._h5: h5py.File | None = None
        self._pid: int | None = None

    # -- metadata -----------------------------------------------------------------
    @property
    def factor_names(self) -> tuple[str, ...]:
        return tuple(self.attrs.get("factors", FACTORS))

    @property
    def motion_names(self) -> tuple[str, ...]:
        return tuple(self.attrs.get("motions", MOTIONS))

    def factor_values(self, factor: str) -> list[str]:
        return list(self.attrs.get(f"factor_values_{factor}", []))

    def __len__(self) -> int:
        return len(self.file_indices)

    # -- reading --------------------------------------------------------------------
    def _read_all(self, ds: h5py.Dataset, progress: bool) -> torch.Tensor:
        n = len(self.file_indices)
        out = torch.empty((n, self.frames, 3, self.image_size, self.image_size), dtype=torch.uint8)
        contiguous = n > 0 and np.array_equal(self.file_indices, np.arange(self.file_indices[0], self.file_indices[0] + n))
        bar = tqdm(total=n, desc=f"loading {self.split}", unit="seq", disable=not progress, leave=False)
        for s in range(0, n, _READ_BLOCK):
            sel = self.file_indices[s:s + _READ_BLOCK]
            try:
                block = ds[sel[0]:sel[-1] + 1] if contiguous else ds[np.sort(sel)]
            except (OSError, ValueError, KeyError) as exc:
                raise DsvaeError(f"cannot read {self.path} /{self.split}/videos (truncated or corrupt?): {exc}") from exc
            if not contiguous:
                order = np.argsort(np.argsort(sel))
                block = block[order]
            t = rearrange(torch.from_numpy(block), "n t h w c -> n t c h w")
            out[s:s + len(sel)] = resize_videos(t, self.image_size)
            bar.update(len(sel))
        bar.close()
        return out

    def _handle(self) -> h5py.File:
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = open_h5(self.path)
            self._pid = os.getpid()
        return self._h5

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_h5"] = None
        state["_pid"] = None
        return state

    def videos_uint8(self, idx: torch.Tensor | np.ndarray | Sequence[int]) -> torch.Tensor:
        """uint8 videos (n, T, 3, H, W) of dataset positions ``idx``."""
        if self.videos is not None:
            return self.videos[torch.as_tensor(idx, dtype=torch.long)]
        pos = np.asarray(idx, dtype=np.int64).reshape(-1)
        ds = self._handle()[self.split]["videos"]
        try:
            rows = [ds[int(self.file_indices[p])] for p in pos]
        except (OSError, ValueError) as exc:
            raise DsvaeError(f"cannot read {self.path} /{self.split}/videos (truncated or corrupt?): {exc}") from exc
        t = rearrange(torch.from_numpy(np.stack(rows)), "n t h w c -> n t c h w")
        return resize_videos(t, self.image_size)

    def batch(self, idx: torch.Tensor | np.ndarray | Sequence[int]) -> dict[str, torch.Tensor]:
        """A batch dict of dataset positions ``idx`` (x float in [0, 1])."""
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        return {
            "x": to_float(self.videos_uint8(idx_t)),
            "action": self.actions[idx_t],
            "attributes": self.attributes[idx_t],
            "character": self.characters[idx_t],
            "index": idx_t,
        }

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} sequences")
        item = self.batch([i % len(self)])
        return {k: v[0] for k, v in item.items()}

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None


def _plain(value: object) -> object:
    """h5py attribute -> plain Python (lists of str, ints, floats)."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def load_split(path: str | os.PathLike, split: str = "train", **kwargs) -> SpritesDataset:
    """Shorthand for :class:`SpritesDataset`."""
    return SpritesDataset(path, split=split, **kwargs)
