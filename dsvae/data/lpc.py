"""The real Sprites data set, composed from the raw LPC layers.

A character is the alpha-composite, over an opaque black canvas, of
``body/B``, ``bottomwear/P``, ``topwear/T``, ``hair/H`` and ``shoes/1`` (in that
order, exactly as :func:`PIL.Image.alpha_composite`); see
``../shared/sprites-lpc/README.md`` for the sheet layout.

The builder never composes whole sheets. Only the 63 cells a sequence can use
are cut out of each sheet (3 directions x the distinct columns of walk,
spellcast and slash), laid out directly as the 72 frames of the 9 motions.
The canvas stays opaque, so the composite of one layer reduces to a per-pixel
formula that leaves the pixels where the layer is transparent untouched
(:func:`blend_over_opaque`); each layer is stored sparsely (its non-transparent
pixels only). The 216 body+bottomwear+topwear prefixes are composed once; each
of the 1,296 characters is then a copy of its prefix plus the sparse hair and
shoes updates. Characters are streamed to :class:`schema.DatasetWriter` in
file order, a group at a time, so the whole 1.15 GB set is never in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Mapping

import numpy as np
from PIL import Image
from tqdm import tqdm

from dsvae.data import schema
from dsvae.errors import DsvaeError

#: Layer folder of each static factor, in composition order (shoes/1 goes on top of them).
FACTOR_LAYERS = {"body": "body", "bottom": "bottomwear", "top": "topwear", "hair": "hair"}
SHOES = ("shoes", 1)
#: Every (layer, value) the standard set needs, in composition order of the layers.
NEEDED_LAYERS: tuple[tuple[str, int], ...] = tuple(
    (layer, v) for layer in FACTOR_LAYERS.values() for v in range(schema.N_VALUES)
) + (SHOES,)

SHEET_SIZE = (832, 1344)  # width, height: 13 columns x 21 rows of 64 x 64 cells
CELL = 64
#: First row of each action's block; a block holds the directions back, left, front, right.
ACTION_ROWS = {"walk": 8, "spellcast": 0, "slash": 12}
DIRECTION_OFFSETS = {"back": 0, "left": 1, "front": 2, "right": 3}
#: Sheet columns that fill frame positions 0..7 of each action.
ACTION_COLUMNS = {
    "walk": (8, 1, 2, 3, 4, 5, 6, 7),
    "spellcast": (0, 1, 2, 3, 4, 5, 4, 6),
    "slash": (0, 1, 2, 3, 4, 5, 4, 0),
}
FACTOR_VALUE_NAMES = {f: [f"{f}{v}" for v in range(schema.N_VALUES)] for f in schema.FACTORS}

DEFAULT_BASE_URL = "https://raw.githubusercontent.com/YingzhenLi/Sprites/master"
CACHE_ENV = "DSVAE_CACHE_DIR"
_DOWNLOAD_TIMEOUT_S = 60
_CHARS_PER_WRITE = 32  # characters handed to the writer at a time (32 x 9 sequences, 28 MB)


def layer_file(layer: str, value: int) -> str:
    """Path of a layer relative to the layer folder, e.g. ``body/0.png``."""
    return f"{layer}/{value}.png"


def motion_cells() -> tuple[list[tuple[int, int]], np.ndarray]:
    """The distinct sheet cells the data set uses and where they go.

    Returns ``cells``, a list of (row, column), and ``frame_map``, an int array
    (N_MOTIONS, N_FRAMES) of indices into ``cells``: frame t of motion m is the
    cell ``cells[frame_map[m, t]]``.
    """
    cells: list[tuple[int, int]] = []
    index: dict[tuple[int, int], int] = {}
    frame_map = np.empty((schema.N_MOTIONS, schema.N_FRAMES), dtype=np.intp)
    for a, action in enumerate(schema.ACTIONS):
        for d, direction in enumerate(schema.DIRECTIONS):
            row = ACTION_ROWS[action] + DIRECTION_OFFSETS[direction]
            for t, col in enumerate(ACTION_COLUMNS[action]):
                if (row, col) not in index:
                    index[(row, col)] = len(cells)
                    cells.append((row, col))
                frame_map[schema.motion_label(a, d), t] = index[(row, col)]
    return cells, frame_map


def blend_over_opaque(src_rgb: np.ndarray, src_alpha: np.ndarray, dst_rgb: np.ndarray) -> np.ndarray:
    """``PIL.Image.alpha_composite`` of a source over an opaque destination, bit for bit.

    ``src_rgb`` and ``dst_rgb`` (..., 3), ``src_alpha`` (..., 1) or broadcastable,
    all integer in 0..255. With an opaque destination the result stays opaque and
    PIL's fixed-point arithmetic reduces to the formula below (it also returns the
    destination unchanged where alpha is 0). Returns uint8 RGB.
    """
    a = np.asarray(src_alpha, dtype=np.uint32)
    tmp = (np.asarray(src_rgb, dtype=np.uint32) * a + np.asarray(dst_rgb, dtype=np.uint32) * (255 - a)) * 128
    tmp += 0x80 << 7
    return ((((tmp >> 8) + tmp) >> 8) >> 7).astype(np.uint8)


@dataclass
class _SparseLayer:
    """The non-transparent pixels of one layer, in the flat (72 * 64 * 64) frame layout."""

    opaque_idx: np.ndarray  # pixels with alpha 255: the result is the layer's colour
    opaque_rgb: np.ndarray  # (n, 3) uint8
    part_idx: np.ndarray  # pixels with 0 < alpha < 255: blended with what is below
    part_sa: np.ndarray  # (m, 3) uint32: colour * alpha
    part_ia: np.ndarray  # (m, 1) uint32: 255 - alpha

    @classmethod
    def from_rgba(cls, frames: np.ndarray) -> "_SparseLayer":
        rgb = frames[..., :3].reshape(-1, 3)
        alpha = frames[..., 3].reshape(-1)
        opaque = np.flatnonzero(alpha == 255)
        part = np.flatnonzero((alpha > 0) & (alpha < 255))
        a = alpha[part, None].astype(np.uint32)
        return cls(opaque, np.ascontiguousarray(rgb[opaque]), part, rgb[part].astype(np.uint32) * a, 255 - a)

    def apply(self, flat: np.ndarray) -> None:
        """Composite this layer in place over ``flat`` (..., P, 3) uint8 opaque RGB pixels."""
        flat[..., self.opaque_idx, :] = self.opaque_rgb
        if self.part_idx.size:
            tmp = (self.part_sa + flat[..., self.part_idx, :].astype(np.uint32) * self.part_ia) * 128
            tmp += 0x80 << 7
            flat[..., self.part_idx, :] = (((tmp >> 8) + tmp) >> 8) >> 7


# ---------------------------------------------------------------- input checks


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _normalise_sum_path(name: str) -> str:
    name = name.strip()
    if name.startswith("*"):  # binary-mode marker of sha256sum
        name = name[1:]
    while name.startswith("./"):
        name = name[2:]
    return name.replace("\\", "/")


def parse_checksums(text: str, source: str = "SHA256SUMS") -> dict[str, str]:
    """Parse ``sha256sum`` output (``<hex>  ./body/0.png`` lines) into {relative path: hex digest}."""
    sums: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        digest = parts[0].lower()
        if len(parts) != 2 or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise DsvaeError(f"checksum file {source}, line {lineno}: expected '<sha256 hex>  ./layer/N.png'")
        sums[_normalise_sum_path(parts[1])] = digest
    return sums


def _read_checksums(path: str | os.PathLike) -> dict[str, str]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DsvaeError(f"checksum file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DsvaeError(f"cannot read checksum file {path}: {_one_line(exc)}") from exc
    return parse_checksums(text, str(path))


def embedded_checksums() -> dict[str, str]:
    """The SHA-256 of the upstream layers shipped with dsvae (``dsvae/data/SHA256SUMS``)."""
    text = resources.files("dsvae.data").joinpath("SHA256SUMS").read_text(encoding="utf-8")
    return parse_checksums(text, "dsvae/data/SHA256SUMS")


def _check_present(sheets: Path) -> dict[tuple[str, int], Path]:
    if not sheets.exists():
        raise DsvaeError(f"LPC layer folder {sheets} does not exist (get the layers with --download)")
    if not sheets.is_dir():
        raise DsvaeError(f"LPC layer folder {sheets} is not a folder")
    paths = {key: sheets / layer_file(*key) for key in NEEDED_LAYERS}
    missing = [p for p in paths.values() if not p.is_file()]
    if len(missing) == len(paths):
        raise DsvaeError(
            f"{sheets} holds none of the LPC layers (expected body/0.png ... hair/5.png, shoes/1.png in it); "
            "get them with --download"
        )
    if missing:
        more = f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""
        raise DsvaeError(f"LPC layer {missing[0]} is missing{more}")
    return paths


def _check_sums(paths: Mapping[tuple[str, int], Path], checksums: str | os.PathLike) -> dict[str, str]:
    sums = _read_checksums(checksums)
    digests = {}
    for key, path in paths.items():
        rel = layer_file(*key)
        if rel not in sums:
            raise DsvaeError(f"checksum file {checksums} has no entry for {rel}")
        digest = _sha256(path)
        if digest != sums[rel]:
            raise DsvaeError(
                f"LPC layer {path} does not match its SHA-256 in {checksums} "
                f"(expected {sums[rel][:12]}..., got {digest[:12]}...)"
            )
        digests[rel] = digest
    return digests


_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, Image.DecompressionBombError)


def _decode(path: Path) -> np.ndarray:
    """The RGBA pixels (H, W, 4) of one sheet, after checking it is a complete image of the right size."""
    try:
        with Image.open(path) as im:
            if im.size != SHEET_SIZE:
                w, h = im.size
                raise DsvaeError(
                    f"LPC layer {path} is {w}x{h} pixels, expected {SHEET_SIZE[0]}x{SHEET_SIZE[1]} (13 x 21 cells)"
                )
            im.verify()  # chunk checksums and structure up to the end of the file
        with Image.open(path) as im:
            return np.asarray(im.convert("RGBA"))
    except _DECODE_ERRORS as exc:
        raise DsvaeError(f"LPC layer {path} is not a readable image (corrupt or truncated?): {_one_line(exc)}") from exc


def _read_layers(
    sheets: str | os.PathLike, checksums: str | os.PathLike | None, keep: bool = True
) -> tuple[dict[tuple[str, int], Path], dict[tuple[str, int], np.ndarray], dict[str, str]]:
    """Check the layers (presence, checksums, decoding, size); return paths, frame-layout RGBA and digests.

    With ``keep`` false the pixels are decoded (to check them) but not returned.
    """
    paths = _check_present(Path(sheets))
    digests = _check_sums(paths, checksums) if checksums is not None else {}
    cells, frame_map = motion_cells()
    rows = np.array([r for r, _ in cells])
    cols = np.array([c for _, c in cells])
    order = frame_map.reshape(-1)
    frames: dict[tuple[str, int], np.ndarray] = {}
    for key, path in paths.items():
        sheet = _decode(path)
        if keep:
            grid = sheet.reshape(SHEET_SIZE[1] // CELL, CELL, SHEET_SIZE[0] // CELL, CELL, 4)
            cut = grid[rows, :, cols]  # (63, 64, 64, 4): the distinct cells
            frames[key] = cut[order]  # (72, 64, 64, 4): motion-major, frame-minor
    return paths, frames, digests


def verify_layers(sheets: str | os.PathLike, checksums: str | os.PathLike | None = None) -> dict[tuple[str, int], Path]:
    """Check that every layer the standard set needs is present, decodable and 832 x 1344.

    With ``checksums`` (a ``SHA256SUMS`` file of ``<hex>  ./body/0.png`` lines) each
    file's SHA-256 must match too. Returns {(layer, value): path}; raises
    :class:`DsvaeError` naming the first bad file.
    """
    paths, _, _ = _read_layers(sheets, checksums, keep=False)
    return paths


# ---------------------------------------------------------------- building


def _compose_prefixes(layers: Mapping[tuple[str, int], _SparseLayer], n_pixels: int) -> np.ndarray:
    """(216, P, 3) uint8: body/B + bottomwear/P + topwear/T over black, indexed (B * 6 + P) * 6 + T."""
    n = schema.N_VALUES
    body, bottom, top = (FACTOR_LAYERS[f] for f in schema.FACTORS[:3])
    out = np.empty((n ** 3, n_pixels, 3), dtype=np.uint8)
    level1 = np.zeros((n_pixels, 3), dtype=np.uint8)
    level2 = np.empty_like(level1)
    for b in range(n):
        level1.fill(0)
        layers[(body, b)].apply(level1)
        for p in range(n):
            np.copyto(level2, level1)
            layers[(bottom, p)].apply(level2)
            for t in range(n):
                dst = out[(b * n + p) * n + t]
                np.copyto(dst, level2)
                layers[(top, t)].apply(dst)
    return out


def _compose_characters(
    ids: np.ndarray, prefixes: np.ndarray, hair: list[_SparseLayer], shoes: _SparseLayer, out: np.ndarray
) -> np.ndarray:
    """Compose characters ``ids`` into ``out`` (len(ids), P, 3); returns the filled view."""
    n = schema.N_VALUES
    view = out[: len(ids)]
    np.take(prefixes, ids // n, axis=0, out=view, mode="clip")  # ids are valid; "clip" avoids a buffer
    for i, cid in enumerate(ids):
        hair[cid % n].apply(view[i])
    shoes.apply(view)
    return view


def build_lpc(
    sheets: str | os.PathLike,
    out: str | os.PathLike,
    checksums: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Compose the 1,296 Sprites characters from the LPC layers in ``sheets`` into one HDF5 file ``out``.

    Every layer is checked first (:func:`verify_layers`, against ``checksums``
    when given); nothing is written when an input or the output path is bad, and
    the output appears only once complete. Returns the output path.
    """
    _, frames, digests = _read_layers(sheets, checksums)
    if not digests:
        digests = {layer_file(*key): _sha256(Path(sheets) / layer_file(*key)) for key in NEEDED_LAYERS}
    n_pixels = schema.N_MOTIONS * schema.N_FRAMES * CELL * CELL
    layers = {key: _SparseLayer.from_rgba(f) for key, f in frames.items()}
    del frames

    train_ids, test_ids = schema.standard_split()
    labels = {"train": schema.sequence_labels(train_ids), "test": schema.sequence_labels(test_ids)}
    attrs = schema.default_attrs(
        "lpc",
        FACTOR_VALUE_NAMES,
        layers={f: [layer_file(FACTOR_LAYERS[f], v) for v in range(schema.N_VALUES)] for f in schema.FACTORS}
        | {"shoes": layer_file(*SHOES)},
        composition="alpha_composite over opaque black of body, bottomwear, topwear, hair, shoes/1; RGB",
        action_rows=ACTION_ROWS,
        direction_offsets=DIRECTION_OFFSETS,
        action_columns={k: list(v) for k, v in ACTION_COLUMNS.items()},
        sha256=digests,
        split_seed=schema.SPLIT_SEED,
    )
    with schema.DatasetWriter(out, labels, attrs, overwrite=overwrite) as writer:
        prefixes = _compose_prefixes(layers, n_pixels)
        hair = [layers[(FACTOR_LAYERS["hair"], v)] for v in range(schema.N_VALUES)]
        shoes = layers[SHOES]
        buf = np.empty((_CHARS_PER_WRITE, n_pixels, 3), dtype=np.uint8)
        seq_shape = (schema.N_FRAMES, CELL, CELL, 3)
        total = sum(len(lab) for lab in labels.values())
        with tqdm(total=total, unit="seq", desc="composing Sprites", disable=not progress) as bar:
            for split, ids in (("train", train_ids), ("test", test_ids)):
                for start in range(0, len(ids), _CHARS_PER_WRITE):
                    group = ids[start:start + _CHARS_PER_WRITE]
                    videos = _compose_characters(group, prefixes, hair, shoes, buf)
                    writer.write(split, start * schema.N_MOTIONS, videos.reshape((-1,) + seq_shape))
                    bar.update(len(group) * schema.N_MOTIONS)
    return writer.path


# ---------------------------------------------------------------- download


def default_cache_dir() -> Path:
    """``$DSVAE_CACHE_DIR`` when set, else ``~/.cache/dsvae/sprites-lpc``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dsvae" / "sprites-lpc"


def _fetch(url: str, dest: Path, expected: str) -> None:
    """Download ``url`` to ``dest`` through a temporary file; keep it only when its SHA-256 is ``expected``."""
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as exc:
        raise DsvaeError(f"cannot write to cache folder {dest.parent}: {_one_line(exc)}") from exc
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as f:
            try:
                with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
                    for block in iter(lambda: response.read(1 << 16), b""):
                        h.update(block)
                        f.write(block)
            except urllib.error.HTTPError as exc:
                raise DsvaeError(f"cannot download {url}: HTTP {exc.code} {_one_line(exc.reason or '')}") from exc
            except urllib.error.URLError as exc:
                raise DsvaeError(f"cannot download {url}: {_one_line(exc.reason)}") from exc
            except (OSError, ValueError) as exc:  # timeouts, resets, bad URLs
                raise DsvaeError(f"cannot download {url}: {_one_line(exc)}") from exc
        digest = h.hexdigest()
        if digest != expected:
            raise DsvaeError(
                f"downloaded {url} does not match its embedded SHA-256 (expected {expected[:12]}..., "
                f"got {digest[:12]}...); the transfer was corrupted or the upstream file changed"
            )
        try:
            os.replace(tmp, dest)
        except OSError as exc:
            raise DsvaeError(f"cannot store {dest}: {_one_line(exc)}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def download_layers(
    cache_dir: str | os.PathLike | None = None, base_url: str | None = None, progress: bool = True
) -> Path:
    """Fetch the layers the standard set needs from the upstream repository into a cache folder.

    Files are fetched from ``{base_url}/{layer}/{value}.png`` (default: the public
    YingzhenLi/Sprites repository on GitHub) and always checked against the
    checksums shipped with dsvae; files already cached with the right checksum are
    not fetched again. Returns the folder, ready for :func:`build_lpc`.
    """
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    base = (base_url or DEFAULT_BASE_URL).rstrip("/")
    sums = embedded_checksums()
    wanted = [layer_file(*key) for key in NEEDED_LAYERS]
    try:
        for layer in sorted({rel.split("/")[0] for rel in wanted}):
            (cache / layer).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DsvaeError(f"cannot create cache folder {cache}: {_one_line(exc)}") from exc
    with tqdm(wanted, unit="file", desc="downloading LPC layers", disable=not progress) as bar:
        for rel in bar:
            dest = cache / rel
            if dest.is_file() and _sha256(dest) == sums[rel]:
                continue
            if dest.is_file() or dest.is_symlink():
                dest.unlink()  # a stale or damaged copy: never leave it behind
            bar.set_postfix_str(rel)
            _fetch(f"{base}/{rel}", dest, sums[rel])
    return cache
