"""Labelled grids of short videos, written as animated GIFs (and optionally one PNG).

Shared by the data preview and by the swap / sample / interpolation tools:

- :func:`to_uint8_frames` turns one sequence (numpy or torch; uint8 or float in
  [0, 1]; channels first or last) into uint8 (T, H, W, 3);
- :func:`make_grid_frames` lays rows of sequences out as one grid per time step,
  upscaled with nearest neighbour so pixel art stays crisp, with a label column;
- :func:`make_strip_image` lays every sequence's frames out left to right in time;
- :func:`write_gif_grid` writes the grid as a looping GIF, atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dsvae.errors import DsvaeError
from dsvae.io import atomic_path, check_output_path

#: Colour of the gaps between cells, the border and the label column.
BACKGROUND = (32, 32, 32)
#: Colour of label text.
TEXT_COLOUR = (255, 255, 255)


def to_uint8_frames(seq: Any) -> np.ndarray:
    """One sequence as uint8 (T, H, W, 3).

    Accepts numpy arrays and torch tensors of shape (T, H, W, C) or (T, C, H, W)
    with C in {1, 3}: uint8 as is, floats taken to be in [0, 1] (clipped, then
    rounded to the nearest of 256 levels, so ``x / 255`` maps back exactly).
    Channels last wins when both the second and the last axis could be channels.
    """
    if hasattr(seq, "detach"):  # torch tensor, without importing torch here
        seq = seq.detach().cpu()
        if seq.is_floating_point():
            seq = seq.float()
        seq = seq.numpy()
    arr = np.asarray(seq)
    if arr.ndim != 4:
        raise ValueError(f"a sequence must be (T, H, W, C) or (T, C, H, W), got shape {arr.shape}")
    if arr.shape[-1] in (1, 3):
        pass
    elif arr.shape[1] in (1, 3):
        arr = arr.transpose(0, 2, 3, 1)
    else:
        raise ValueError(f"a sequence needs 1 or 3 channels first or last, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype.kind == "f":
        out = (np.clip(np.nan_to_num(arr, nan=0.0), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif arr.dtype == np.bool_:
        out = arr.astype(np.uint8) * 255
    else:
        raise ValueError(f"sequence pixels must be uint8 or float in [0, 1], got {arr.dtype}")
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return np.ascontiguousarray(out)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # no FreeType: the fixed-size bitmap font
        return ImageFont.load_default()


def _text_size(text: str, font) -> tuple[int, int]:
    """Width and height of the ink of ``text`` drawn at (0, 0) (measured, as hinting may exceed the bbox)."""
    if not text:
        return 0, 0
    draw = ImageDraw.Draw(Image.new("L", (1, 1)))
    _, _, right, bottom = draw.multiline_textbbox((0, 0), text, font=font, spacing=2)
    img = Image.new("L", (int(right) + 32, int(bottom) + 8), 0)
    draw = ImageDraw.Draw(img)
    draw.fontmode = "1"
    draw.multiline_text((0, 0), text, fill=255, font=font, spacing=2)
    ink = np.asarray(img) > 0
    if not ink.any():
        return 0, 0
    cols, rows = np.nonzero(ink.any(0))[0], np.nonzero(ink.any(1))[0]
    return int(cols.max()) + 1, int(rows.max()) + 1


def _font_size(scale: int) -> int:
    return int(np.clip(4 * scale, 10, 16))


def _check_options(scale: int, pad: int, label_width: int | None) -> None:
    if int(scale) != scale or scale < 1:
        raise DsvaeError(f"scale must be a positive integer, got {scale}")
    if int(pad) != pad or pad < 0:
        raise DsvaeError(f"pad must be a non-negative integer, got {pad}")
    if label_width is not None and (int(label_width) != label_width or label_width < 0):
        raise DsvaeError(f"label width must be a non-negative integer, got {label_width}")


def _normalise_rows(rows: Sequence[Sequence[Any]]) -> list[list[np.ndarray]]:
    """Rows of uint8 (T, H, W, 3) sequences, checked to share T, H and W."""
    out = [[to_uint8_frames(s) for s in row] for row in rows]
    seqs = [s for row in out for s in row]
    if not seqs:
        raise ValueError("nothing to draw: no sequences given")
    t, h, w = seqs[0].shape[:3]
    for s in seqs:
        if s.shape[0] != t:
            raise ValueError(f"all sequences must have the same number of frames, got {s.shape[0]} and {t}")
        if s.shape[1:3] != (h, w):
            raise ValueError(f"all sequences must have the same frame size, got {s.shape[1:3]} and {(h, w)}")
    return out


def _check_labels(labels: Sequence[str | None] | None, n: int, what: str) -> list[str]:
    if labels is None:
        return [""] * n
    labels = ["" if lab is None else str(lab) for lab in labels]
    if len(labels) != n:
        raise ValueError(f"got {len(labels)} {what} labels for {n} {what}s")
    return labels


def _label_column(labels: list[str], row_height: int, pad: int, font, label_width: int | None,
                  header: int) -> np.ndarray:
    """The label column (height, width, 3): each row's text vertically centred in its row."""
    if label_width is None:
        widest = max((_text_size(lab, font)[0] for lab in labels), default=0)
        label_width = widest + 2 * pad + 4 if widest else 0
    height = header + pad + len(labels) * (row_height + pad)
    img = Image.new("RGB", (max(label_width, 1), height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    draw.fontmode = "1"  # crisp, not anti-aliased: pure white text, few colours for the GIF palette
    for r, lab in enumerate(labels):
        if not lab:
            continue
        _, th = _text_size(lab, font)
        y = header + pad + r * (row_height + pad) + max((row_height - th) // 2, 0)
        draw.multiline_text((pad + 2, y), lab, fill=TEXT_COLOUR, font=font, spacing=2)
    return np.asarray(img)[:, :label_width]


def _header_row(col_labels: list[str], cell_w: int, pad: int, font) -> tuple[int, Image.Image | None]:
    if not any(col_labels):
        return 0, None
    th = max(_text_size(lab, font)[1] for lab in col_labels)
    height = th + pad + 4
    img = Image.new("RGB", (pad + len(col_labels) * (cell_w + pad), height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    draw.fontmode = "1"
    for c, lab in enumerate(col_labels):
        tw, _ = _text_size(lab, font)
        x = pad + c * (cell_w + pad) + max((cell_w - tw) // 2, 0)
        draw.multiline_text((x, pad + 2), lab, fill=TEXT_COLOUR, font=font, spacing=2)
    return height, img


def _compose(cells: list[list[np.ndarray]], labels: list[str], col_labels: list[str], scale: int, pad: int,
             label_width: int | None) -> np.ndarray:
    """Grid frames (T, Hg, Wg, 3) of rows of uint8 (T, h, w, 3) cells (upscaled here)."""
    t, h, w = cells[0][0].shape[:3]
    ch, cw = h * scale, w * scale
    n_rows, n_cols = len(cells), max(len(row) for row in cells)
    font = _font(_font_size(scale))
    header, header_img = _header_row(col_labels, cw, pad, font)
    column = _label_column(labels, ch, pad, font, label_width, header)
    lw = column.shape[1]
    height = header + pad + n_rows * (ch + pad)
    width = lw + pad + n_cols * (cw + pad)
    grid = np.empty((t, height, width, 3), dtype=np.uint8)
    grid[:] = np.asarray(BACKGROUND, dtype=np.uint8)
    grid[:, :, :lw] = column
    if header_img is not None:
        hdr = np.asarray(header_img)
        grid[:, :header, lw:lw + hdr.shape[1]] = hdr
    for r, row in enumerate(cells):
        y = header + pad + r * (ch + pad)
        for c, seq in enumerate(row):
            x = lw + pad + c * (cw + pad)
            up = seq if scale == 1 else seq.repeat(scale, axis=1).repeat(scale, axis=2)
            grid[:, y:y + ch, x:x + cw] = up
    return grid


def make_grid_frames(rows: Sequence[Sequence[Any]], labels: Sequence[str | None] | None = None, scale: int = 4,
                     pad: int = 2, label_width: int | None = None,
                     col_labels: Sequence[str | None] | None = None) -> np.ndarray:
    """The grid of every time step: uint8 (T, Hg, Wg, 3).

    ``rows`` is a list of R rows, each a list of sequences (see :func:`to_uint8_frames`);
    rows may have different lengths (missing cells stay background). Cells are
    upscaled ``scale`` times (nearest neighbour) and separated by ``pad`` pixels;
    ``labels`` (one per row, ``\\n`` for several lines) go in a column on the left of
    width ``label_width`` (default: fitted to the text; none without labels);
    ``col_labels`` (one per column) go in a header row.
    """
    _check_options(scale, pad, label_width)
    cells = _normalise_rows(rows)
    labels_ = _check_labels(labels, len(cells), "row")
    col_labels_ = _check_labels(col_labels, max(len(r) for r in cells), "column") if col_labels is not None else []
    return _compose(cells, labels_, col_labels_, int(scale), int(pad), label_width)


def make_strip_image(rows: Sequence[Sequence[Any]], labels: Sequence[str | None] | None = None, scale: int = 4,
                     pad: int = 2, label_width: int | None = None) -> np.ndarray:
    """One image (H, W, 3) with time laid out left to right: one line per sequence.

    Sequences of a row are stacked as consecutive lines; the row's label is on its first line.
    """
    _check_options(scale, pad, label_width)
    cells = _normalise_rows(rows)
    labels_ = _check_labels(labels, len(cells), "row")
    lines: list[list[np.ndarray]] = []
    line_labels: list[str] = []
    for row, lab in zip(cells, labels_):
        for c, seq in enumerate(row):
            lines.append([frame[None] for frame in seq])  # each frame a 1-frame cell
            line_labels.append(lab if c == 0 else "")
    return _compose(lines, line_labels, [], int(scale), int(pad), label_width)[0]


def write_gif_grid(
    rows: Sequence[Sequence[Any]],
    out: str | os.PathLike,
    labels: Sequence[str | None] | None = None,
    scale: int = 4,
    duration_ms: int = 150,
    png: bool = False,
    overwrite: bool = False,
    pad: int = 2,
    label_width: int | None = None,
    col_labels: Sequence[str | None] | None = None,
) -> Path:
    """Write rows of sequences as a looping GIF grid (one GIF frame per time step); return its path.

    ``duration_ms`` is the time each frame is shown. With ``png=True`` also writes
    ``out.with_suffix(".png")``: every sequence's frames left to right in time.
    Output paths are checked before any work (an existing file is refused unless
    ``overwrite``; a missing folder is created) and written atomically: a failure
    leaves no partial file. Consecutive identical grid frames are merged by the GIF
    encoder (their durations add up), so a fully static grid reads back as one frame.
    """
    if int(duration_ms) != duration_ms or duration_ms < 1:
        raise DsvaeError(f"frame duration must be a positive number of milliseconds, got {duration_ms}")
    _check_options(scale, pad, label_width)
    out = check_output_path(out, overwrite=overwrite, what="GIF")
    png_out = check_output_path(out.with_suffix(".png"), overwrite=overwrite, what="PNG") if png else None
    if png_out is not None and png_out == out:
        raise DsvaeError(f"GIF output {out} must not end in .png when a PNG is written beside it")
    frames = make_grid_frames(rows, labels, scale=scale, pad=pad, label_width=label_width, col_labels=col_labels)
    strip = make_strip_image(rows, labels, scale=scale, pad=pad, label_width=label_width) if png_out else None

    import imageio.v3 as iio

    with atomic_path(out) as tmp_gif:
        iio.imwrite(tmp_gif, frames, extension=".gif", is_batch=True, duration=int(duration_ms), loop=0)
        if png_out is not None:
            with atomic_path(png_out) as tmp_png:
                iio.imwrite(tmp_png, strip, extension=".png")
    return out
