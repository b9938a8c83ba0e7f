"""Read a user's own sequence (a GIF, a video, a PNG strip or a folder of frames) for the swap tools.

:func:`read_sequence` turns one path into what a model encodes: float (T, 3, S, S) in [0, 1].

Accepted inputs:

- an animated image (GIF, APNG, animated WebP, multi-page TIFF): every frame, in order;
- a video imageio can read (MP4, AVI, MOV, WebM, ...): needs imageio's PyAV plugin
  (``pip install av``) or ``imageio-ffmpeg``;
- a single image: a horizontal strip of square frames (width = k * height);
- a folder: its image files (by extension; other and hidden files are ignored), one frame
  each, in natural name order (``frame2`` before ``frame10``).

An animation frame shown k times as long as the shortest frame counts as k frames (GIF and
APNG writers merge identical consecutive frames into one longer frame).

Pixels: RGB as is; RGBA (and palette images with transparency) composited over black, the
data sets' background; greyscale (1 channel) and grey + alpha (2 channels) are refused with an
error naming the file, as the models are trained on colour sprites. Frames that are not square
are padded with black to a centred square, then resized to the model's size like the data set
loader does (area average to shrink, nearest neighbour to enlarge).

Frame count: fewer frames than asked for is an error; from a longer input the first T frames
are used and a :class:`FramesDropped` warning says so (the CLI prints it as a note).
"""

from __future__ import annotations

import importlib.util
import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image, UnidentifiedImageError

from dsvae.data.dataset import resize_videos, to_float
from dsvae.errors import DsvaeError

#: Extensions read as videos through imageio (the rest goes through Pillow first).
VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv",
                              ".ogv"})
#: Pillow modes with one grey channel, and with grey plus alpha.
_GREY_MODES = frozenset({"1", "L", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_GREY_ALPHA_MODES = frozenset({"LA", "La"})


class FramesDropped(UserWarning):
    """A user input had more frames than the model is given; the first ones were used."""


def read_sequence(path: str | os.PathLike, image_size: int, frames: int) -> torch.Tensor:
    """The first ``frames`` frames of the sequence at ``path`` as float (frames, 3, S, S) in [0, 1], S = image_size.

    Raises :class:`DsvaeError` naming the file for unreadable inputs, greyscale inputs and
    inputs with fewer than ``frames`` frames; warns :class:`FramesDropped` when frames are dropped.
    """
    if int(frames) != frames or frames < 1:
        raise DsvaeError(f"the number of frames must be a positive integer, got {frames}")
    if int(image_size) != image_size or image_size < 1:
        raise DsvaeError(f"image size must be a positive integer, got {image_size}")
    path = Path(path)
    video = read_frames(path)
    n = video.shape[0]
    if n < frames:
        raise DsvaeError(f"{path} has {n} frame{'s' if n != 1 else ''}; the model needs {frames}")
    if n > frames:
        warnings.warn(FramesDropped(f"{path} has {n} frames; using the first {frames}"), stacklevel=2)
        video = video[:frames]
    return to_float(fit_frames(video, int(image_size)))


def read_frames(path: str | os.PathLike) -> np.ndarray:
    """Every frame at ``path`` (see the module docstring) as uint8 RGB (N, H, W, 3), at its own size."""
    path = Path(path)
    if not path.exists():
        raise DsvaeError(f"input {path} does not exist")
    if path.is_dir():
        return _read_folder(path)
    if path.suffix.lower() in VIDEO_EXTENSIONS:
        return _read_video(path)
    try:
        img = Image.open(path)
    except UnidentifiedImageError as exc:
        if video_backend_available():  # maybe a video without a usual extension
            return _read_video(path)
        raise DsvaeError(f"cannot read {path}: not an image, GIF or video dsvae can read") from exc
    except OSError as exc:
        raise DsvaeError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with img:
        stack = _read_image_frames(img, path)
    if len(stack) == 1:
        return _split_strip(stack[0], path)
    return stack


def fit_frames(video: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> uint8 (T, 3, size, size): black-padded to a centred square, then resized."""
    t, h, w, _ = video.shape
    side = max(h, w)
    if h != w:
        square = np.zeros((t, side, side, 3), dtype=np.uint8)
        top, left = (side - h) // 2, (side - w) // 2
        square[:, top:top + h, left:left + w] = video
        video = square
    x = rearrange(torch.from_numpy(np.ascontiguousarray(video)), "t h w c -> 1 t c h w")
    return resize_videos(x, size)[0]


# ----------------------------------------------------------------------------------
# readers
# ----------------------------------------------------------------------------------
def _read_image_frames(img: Image.Image, path: Path) -> np.ndarray:
    """Every frame of an open Pillow image as uint8 RGB (N, H, W, 3).

    An animation frame shown longer than the shortest one counts as round(duration / shortest)
    frames: GIF and APNG writers merge identical consecutive frames into one longer frame, and
    this gives them back.
    """
    out, durations = [], []
    try:
        for k in range(getattr(img, "n_frames", 1)):
            img.seek(k)
            out.append(_rgb(img, path))
            durations.append(float(img.info.get("duration") or 0))
    except DsvaeError:
        raise
    except Exception as exc:  # Pillow raises many types (OSError, IndexError, SyntaxError, ...) for corrupt files
        raise DsvaeError(f"cannot read {path} (truncated or corrupt?): {exc}") from exc
    sizes = {f.shape for f in out}
    if len(sizes) > 1:  # Pillow gives every GIF frame the full canvas; other formats may not
        raise DsvaeError(f"{path}: frames of different sizes {sorted(s[:2] for s in sizes)}")
    frames = np.stack(out)
    if len(out) > 1 and min(durations) > 0:
        repeats = np.maximum(np.rint(np.asarray(durations) / min(durations)).astype(np.int64), 1)
        frames = np.repeat(frames, repeats, axis=0)
    return frames


def _rgb(img: Image.Image, path: Path) -> np.ndarray:
    """One Pillow frame as uint8 (H, W, 3); alpha composited over black; grey refused."""
    mode = img.mode
    if mode in _GREY_MODES:
        raise DsvaeError(f"{path} is greyscale (1 channel); the models need colour (RGB or RGBA) frames")
    if mode in _GREY_ALPHA_MODES:
        raise DsvaeError(f"{path} is greyscale with alpha (2 channels); the models need colour (RGB or RGBA) frames")
    has_alpha = mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint16)
        return _over_black(rgba)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _over_black(rgba: np.ndarray) -> np.ndarray:
    """(..., 4) RGBA -> (..., 3) RGB composited over black, rounded."""
    rgba = rgba.astype(np.uint32)
    rgb = (rgba[..., :3] * rgba[..., 3:] + 127) // 255
    return rgb.astype(np.uint8)


def _split_strip(image: np.ndarray, path: Path) -> np.ndarray:
    """A horizontal strip of square frames (H, k*H, 3) -> (k, H, H, 3)."""
    h, w = image.shape[:2]
    if w % h:
        raise DsvaeError(f"{path}: a single image is read as a horizontal strip of square frames, but its width {w} "
                         f"is not a multiple of its height {h}")
    return np.ascontiguousarray(rearrange(image, "h (k w) c -> k h w c", w=h))


def _natural_key(name: str) -> list:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", name) if part]


def _read_folder(path: Path) -> np.ndarray:
    known = Image.registered_extensions()
    files = sorted((p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                    and p.suffix.lower() in known), key=lambda p: _natural_key(p.name))
    if not files:
        raise DsvaeError(f"folder {path} has no frame images")
    frames = []
    for file in files:
        try:
            img = Image.open(file)
        except (UnidentifiedImageError, OSError) as exc:
            raise DsvaeError(f"cannot read frame {file}: not a readable image") from exc
        with img:
            frames.append(_read_image_frames(img, file)[0])  # the first frame of an animated file
    sizes = {f.shape[:2] for f in frames}
    if len(sizes) > 1:
        raise DsvaeError(f"frames in {path} have different sizes: {', '.join(f'{w}x{h}' for h, w in sorted(sizes))}")
    return np.stack(frames)


def video_backend_available() -> bool:
    """Whether imageio can read videos here (its PyAV plugin or imageio-ffmpeg is installed)."""
    return any(importlib.util.find_spec(name) is not None for name in ("av", "imageio_ffmpeg"))


def _read_video(path: Path) -> np.ndarray:
    is_video = path.suffix.lower() in VIDEO_EXTENSIONS
    if is_video and not video_backend_available():
        raise DsvaeError(f"cannot read {path}: reading {path.suffix} videos needs imageio's PyAV plugin "
                         f"(pip install av) or imageio-ffmpeg")
    import imageio.v3 as iio

    try:
        video = np.asarray(iio.imread(path, index=None))
    except Exception as exc:  # imageio's plugins raise many types for unreadable files
        what = "video" if is_video else "image, GIF or video"
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DsvaeError(f"cannot read {path}: not a readable {what} ({first})") from exc
    if video.ndim == 3 and not is_video:
        video = video[None]
    if video.ndim == 3:  # (N, H, W): grey frames
        raise DsvaeError(f"{path} is greyscale (1 channel); the models need colour (RGB or RGBA) frames")
    if video.ndim != 4 or video.shape[0] == 0:
        raise DsvaeError(f"cannot read {path}: expected frames (N, H, W, C), got shape {video.shape}")
    channels = video.shape[-1]
    if channels in (1, 2):
        raise DsvaeError(f"{path} has {channels} channel{'s' if channels > 1 else ''} (greyscale); "
                         f"the models need colour (RGB or RGBA) frames")
    if channels not in (3, 4):
        raise DsvaeError(f"{path} has {channels} channels; the models need colour (RGB or RGBA) frames")
    if video.dtype == np.uint16:
        video = ((video.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif video.dtype != np.uint8:
        raise DsvaeError(f"{path}: unsupported pixel type {video.dtype} (expected 8- or 16-bit)")
    return _over_black(video) if channels == 4 else np.ascontiguousarray(video)
