"""The dsvae data set schema: labels, HDF5 layout, writing and validation.

Every data set dsvae builds (the real Sprites from LPC layers, the procedural
sprites) is one HDF5 file with this layout::

    /train/videos      uint8 (N, T, H, W, 3), one sequence per chunk, gzip-compressed
    /train/actions     int64 (N,)    motion label in 0..8 = 3 * action + direction
    /train/attributes  int64 (N, 4)  [body, bottom, top, hair], each in 0..5
    /train/characters  int64 (N,)    character id = ((body*6 + bottom)*6 + top)*6 + hair
    /test/...          the same for the test split

Root attributes: ``format`` (= FORMAT), ``format_version``, ``factors`` and
``factor_values_<name>`` (names of the values of each static factor),
``actions``, ``directions``, ``motions``, ``source``, ``builder_version`` and
free-form ``source_*`` details.
"""

from __future__ import annotations

import json
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import h5py
import numpy as np

from dsvae.errors import DsvaeError
from dsvae.io import atomic_path, check_output_path

FORMAT = "dsvae-sprites"
FORMAT_VERSION = 1
BUILDER_VERSION = "1"

FACTORS = ("body", "bottom", "top", "hair")
N_VALUES = 6
ACTIONS = ("walk", "spellcast", "slash")
DIRECTIONS = ("front", "left", "right")
MOTIONS = tuple(f"{a}-{d}" for a in ACTIONS for d in DIRECTIONS)
N_MOTIONS = len(MOTIONS)
N_FRAMES = 8
IMAGE_SIZE = 64
N_CHARACTERS = N_VALUES ** len(FACTORS)
SPLITS = ("train", "test")
SPLIT_SEED = 423
N_TRAIN_CHARACTERS = 1000
#: Judge / evaluation heads: the motion and the four static factors.
HEADS = ("action",) + FACTORS
HEAD_CLASSES = {"action": N_MOTIONS, **{f: N_VALUES for f in FACTORS}}


def motion_label(action: int, direction: int) -> int:
    """Motion class of ``action`` (index in ACTIONS) seen from ``direction`` (index in DIRECTIONS)."""
    return len(DIRECTIONS) * action + direction


def character_id(attributes: np.ndarray) -> np.ndarray:
    """Character id of attribute rows [body, bottom, top, hair] (mixed radix 6)."""
    attributes = np.asarray(attributes)
    cid = np.zeros(attributes.shape[:-1], dtype=np.int64)
    for k in range(len(FACTORS)):
        cid = cid * N_VALUES + attributes[..., k]
    return cid


def character_attributes(cid: np.ndarray) -> np.ndarray:
    """Inverse of :func:`character_id`: (..., 4) attribute rows."""
    cid = np.asarray(cid, dtype=np.int64)
    out = np.empty(cid.shape + (len(FACTORS),), dtype=np.int64)
    rest = cid.copy()
    for k in reversed(range(len(FACTORS))):
        out[..., k] = rest % N_VALUES
        rest = rest // N_VALUES
    return out


def standard_split(seed: int = SPLIT_SEED, n_train: int = N_TRAIN_CHARACTERS) -> tuple[np.ndarray, np.ndarray]:
    """Character ids of the standard character-disjoint split (train ids, test ids), in permutation order."""
    perm = np.random.RandomState(seed).permutation(N_CHARACTERS)
    return perm[:n_train].astype(np.int64), perm[n_train:].astype(np.int64)


@dataclass
class SplitLabels:
    """Labels of one split, in file order."""

    actions: np.ndarray  # (N,)
    attributes: np.ndarray  # (N, 4)
    characters: np.ndarray  # (N,)

    def __len__(self) -> int:
        return len(self.actions)


def sequence_labels(characters: np.ndarray) -> SplitLabels:
    """The file order used by every builder: for each character (in the given order) its 9 motions."""
    characters = np.asarray(characters, dtype=np.int64)
    chars = np.repeat(characters, N_MOTIONS)
    actions = np.tile(np.arange(N_MOTIONS, dtype=np.int64), len(characters))
    return SplitLabels(actions=actions, attributes=character_attributes(chars), characters=chars)


def default_attrs(source: str, factor_values: Mapping[str, list[str]], **details: object) -> dict:
    """Root attributes of a data set file."""
    attrs: dict = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "builder_version": BUILDER_VERSION,
        "source": source,
        "factors": list(FACTORS),
        "actions": list(ACTIONS),
        "directions": list(DIRECTIONS),
        "motions": list(MOTIONS),
    }
    for name in FACTORS:
        attrs[f"factor_values_{name}"] = list(factor_values[name])
    for key, value in details.items():
        attrs[f"source_{key}"] = value if isinstance(value, (int, float, str)) else json.dumps(value)
    return attrs


class DatasetWriter:
    """Writes a dsvae data set file incrementally and atomically.

    Sequences are compressed in a thread pool (zlib releases the GIL) and stored
    with ``write_direct_chunk``: one sequence per chunk, standard HDF5 gzip
    filter, readable by any HDF5 reader. The file is written under a temporary
    name and renamed onto ``path`` only when :meth:`close` succeeds; on error
    the temporary file is removed.

    Use as a context manager::

        with DatasetWriter(path, {"train": labels_train, "test": labels_test}, attrs) as w:
            w.write("train", start, videos_uint8)
    """

    def __init__(
        self,
        path: str | os.PathLike,
        labels: Mapping[str, SplitLabels],
        attrs: Mapping[str, object],
        frames: int = N_FRAMES,
        size: int = IMAGE_SIZE,
        overwrite: bool = False,
        level: int = 1,
        threads: int | None = None,
    ) -> None:
        self.path = check_output_path(path, overwrite=overwrite, what="data set")
        self.labels = dict(labels)
        self.attrs = dict(attrs)
        self.shape = (frames, size, size, 3)
        self.level = level
        self.threads = threads or min(4, os.cpu_count() or 1)
        self._ctx = None
        self._file: h5py.File | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._written: dict[str, np.ndarray] = {}

    def __enter__(self) -> "DatasetWriter":
        self._ctx = atomic_path(self.path)
        tmp = self._ctx.__enter__()
        try:
            self._file = h5py.File(tmp, "w")
            for key, value in self.attrs.items():
                self._file.attrs[key] = value
            for split, lab in self.labels.items():
                g = self._file.create_group(split)
                n = len(lab)
                g.create_dataset(
                    "videos", shape=(n,) + self.shape, dtype=np.uint8,
                    chunks=(1,) + self.shape, compression="gzip", compression_opts=self.level,
                )
                g.create_dataset("actions", data=np.asarray(lab.actions, dtype=np.int64))
                g.create_dataset("attributes", data=np.asarray(lab.attributes, dtype=np.int64))
                g.create_dataset("characters", data=np.asarray(lab.characters, dtype=np.int64))
                self._written[split] = np.zeros(n, dtype=bool)
            self._pool = ThreadPoolExecutor(self.threads)
        except BaseException as exc:
            self._abort(exc)
            raise
        return self

    def write(self, split: str, start: int, videos: np.ndarray) -> None:
        """Write sequences ``videos`` (n, T, H, W, 3) uint8 at rows ``start:start+n`` of ``split``."""
        if videos.dtype != np.uint8 or videos.shape[1:] != self.shape:
            raise ValueError(f"expected uint8 (n,){self.shape}, got {videos.dtype} {videos.shape}")
        assert self._file is not None and self._pool is not None
        ds = self._file[split]["videos"]
        videos = np.ascontiguousarray(videos)
        level = self.level
        blobs = self._pool.map(lambda v: zlib.compress(v.data, level), videos)
        for i, blob in enumerate(blobs):
            ds.id.write_direct_chunk((start + i, 0, 0, 0, 0), blob)
        self._written[split][start:start + len(videos)] = True

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            try:
                missing = [s for s, w in self._written.items() if not w.all()]
                if missing:
                    raise RuntimeError(f"data set writer closed with unwritten rows in {missing}")
                self._file.close()
                self._file = None
            except BaseException as err:
                self._abort(err)
                raise
            self._pool.shutdown()
            self._ctx.__exit__(None, None, None)
        else:
            self._abort(exc)

    def _abort(self, exc: BaseException) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
        if self._file is not None:
            try:
                self._file.close()
            finally:
                self._file = None
        if self._ctx is not None:
            self._ctx.__exit__(type(exc), exc, exc.__traceback__)


def open_h5(path: str | os.PathLike) -> h5py.File:
    """Open a dsvae data set read-only with a clear error for missing, foreign or broken files."""
    path = Path(path)
    if not path.exists():
        raise DsvaeError(f"data set {path} does not exist (build one with `dsvae data build`)")
    if path.is_dir():
        raise DsvaeError(f"data set {path} is a directory, expected an .h5 file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DsvaeError(f"data set {path} is not a readable HDF5 file (truncated or corrupt?): {exc}") from exc
    try:
        validate(f, path)
    except BaseException:
        f.close()
        raise
    return f


def validate(f: h5py.File, path: str | os.PathLike) -> None:
    """Check the schema of an open file; raise DsvaeError naming the first problem."""
    if f.attrs.get("format") != FORMAT:
        raise DsvaeError(f"{path} is not a dsvae data set (no '{FORMAT}' format attribute)")
    version = int(f.attrs.get("format_version", -1))
    if version > FORMAT_VERSION:
        raise DsvaeError(f"{path} has data set format version {version}; this dsvae reads up to {FORMAT_VERSION}")
    splits = [s for s in SPLITS if s in f]
    if not splits:
        raise DsvaeError(f"{path} has no train or test split")
    for split in splits:
        g = f[split]
        for key in ("videos", "actions", "attributes", "characters"):
            if key not in g or not isinstance(g[key], h5py.Dataset):
                raise DsvaeError(f"{path}: /{split}/{key} is missing")
        v = g["videos"]
        if v.dtype != np.uint8 or v.ndim != 5 or v.shape[-1] != 3 or v.shape[2] != v.shape[3]:
            raise DsvaeError(
                f"{path}: /{split}/videos must be uint8 (N, T, H, W, 3) with H == W, got {v.dtype} {v.shape}"
            )
        n = v.shape[0]
        expect = {"actions": (n,), "attributes": (n, len(FACTORS)), "characters": (n,)}
        for key, shape in expect.items():
            d = g[key]
            if d.shape != shape or d.dtype.kind not in "iu":
                raise DsvaeError(f"{path}: /{split}/{key} must be integer {shape}, got {d.dtype} {d.shape}")
