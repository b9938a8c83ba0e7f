"""``dsvae data info`` and ``dsvae data preview``: describe a data set file, draw a few sequences."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from dsvae.data import schema
from dsvae.errors import DsvaeError
from dsvae.io import check_output_path


def _plain(value: object) -> object:
    """An h5py attribute value as plain Python (str, int, float or lists of them)."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


def _names(attrs: dict, key: str, default: tuple[str, ...] | list[str]) -> list[str]:
    value = attrs.get(key)
    if isinstance(value, list) and value:
        return [str(v) for v in value]
    if isinstance(value, str) and value:
        return [value]
    return list(default)


def _factor_names(attrs: dict) -> tuple[list[str], dict[str, list[str]]]:
    factors = _names(attrs, "factors", schema.FACTORS)
    values = {f: _names(attrs, f"factor_values_{f}", [str(i) for i in range(schema.N_VALUES)]) for f in factors}
    return factors, values


def _read(ds: h5py.Dataset, path: Path, name: str, sel=slice(None)) -> np.ndarray:
    try:
        return ds[sel]
    except (OSError, ValueError, KeyError) as exc:
        raise DsvaeError(f"cannot read {path} {name} (truncated or corrupt?): {exc}") from exc


def _size(n_bytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n_bytes < 1000 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    return f"{n_bytes:.1f} GB"  # not reached


def _counts(values: np.ndarray, names: list[str]) -> str:
    """'name count, name count, ...' for every named value and any unexpected one."""
    uniq, cnt = np.unique(values, return_counts=True)
    found = dict(zip(uniq.tolist(), cnt.tolist()))
    keys = sorted(set(range(len(names))) | set(found))
    parts = []
    for k in keys:
        name = names[k] if 0 <= k < len(names) else f"#{k} (unknown)"
        parts.append(f"{name} {found.get(k, 0)}")
    return ", ".join(parts)


def describe(path: str | os.PathLike) -> str:
    """A human-readable summary of a data set file: source, factors, splits, shapes and label counts."""
    path = Path(path)
    with schema.open_h5(path) as f:
        attrs = {k: _plain(v) for k, v in f.attrs.items()}
        factors, values = _factor_names(attrs)
        motions = _names(attrs, "motions", schema.MOTIONS)
        lines = [f"data set {path} ({_size(path.stat().st_size)})"]
        lines.append(
            f"format {attrs.get('format')} version {attrs.get('format_version', '?')}, "
            f"source {attrs.get('source', 'unknown')}, builder version {attrs.get('builder_version', '?')}"
        )
        details = {k[len("source_"):]: v for k, v in attrs.items() if k.startswith("source_")}
        for key, value in sorted(details.items()):
            lines.append(f"  {key}: {value}")
        lines.append(f"motions ({len(motions)}): {', '.join(motions)}")
        lines.append("factors:")
        for name in factors:
            lines.append(f"  {name} ({len(values[name])}): {', '.join(values[name])}")
        characters: dict[str, set[int]] = {}
        for split in (s for s in schema.SPLITS if s in f):
            g = f[split]
            v = g["videos"]
            n, t, h, w = v.shape[:4]
            actions = _read(g["actions"], path, f"/{split}/actions")
            attributes = _read(g["attributes"], path, f"/{split}/attributes")
            chars = _read(g["characters"], path, f"/{split}/characters")
            characters[split] = set(np.unique(chars).tolist())
            lines.append(f"split {split}: {n} sequences of {t} frames {h}x{w} RGB, "
                         f"{len(characters[split])} characters")
            for key in ("videos", "actions", "attributes", "characters"):
                d = g[key]
                extra = f", chunks {d.chunks}, {d.compression or 'uncompressed'}" if key == "videos" else ""
                lines.append(f"  {key}: {d.dtype} {d.shape}{extra}")
            lines.append(f"  per motion: {_counts(actions, motions)}")
            for k, name in enumerate(factors):
                col = attributes[:, k] if attributes.ndim == 2 and attributes.shape[1] > k else np.empty(0, int)
                lines.append(f"  per {name}: {_counts(col, values[name])}")
        if len(characters) == 2:
            shared = len(characters["train"] & characters["test"])
            lines.append(f"characters in both splits: {shared}" + (" (character-disjoint)" if shared == 0 else ""))
    return "\n".join(lines)


def sequence_label(action: int, attributes, motions: list[str], factors: list[str],
                   values: dict[str, list[str]], index: int | None = None) -> str:
    """Multi-line label of one sequence: '#index motion' then one factor value per line."""
    motion = motions[action] if 0 <= action < len(motions) else f"motion #{action}"
    head = f"#{index} {motion}" if index is not None else motion
    rows = [head]
    for k, name in enumerate(factors):
        v = int(attributes[k])
        rows.append(values[name][v] if 0 <= v < len(values[name]) else f"{name} #{v}")
    return "\n".join(rows)


def preview(path: str | os.PathLike, out: str | os.PathLike, split: str = "train", n: int = 8, seed: int = 0,
            scale: int = 4, duration_ms: int = 150, png: bool = False, overwrite: bool = False) -> Path:
    """Write a GIF grid of ``n`` randomly chosen sequences of ``split`` (one labelled row each)."""
    from dsvae.viz.gif import write_gif_grid

    path = Path(path)
    if int(n) != n or n < 1:
        raise DsvaeError(f"number of sequences to preview must be at least 1, got {n}")
    with schema.open_h5(path) as f:
        if split not in f:
            raise DsvaeError(f"data set {path} has no '{split}' split (has: {', '.join(f.keys())})")
        g = f[split]
        total = g["videos"].shape[0]
        if n > total:
            raise DsvaeError(f"cannot preview {n} sequences: split '{split}' of {path} has only {total}")
        out = check_output_path(out, overwrite=overwrite, what="preview")  # before reading any pixels
        idx = np.sort(np.random.default_rng(seed).choice(total, size=int(n), replace=False))
        videos = _read(g["videos"], path, f"/{split}/videos", idx)
        actions = _read(g["actions"], path, f"/{split}/actions")[idx]
        attributes = _read(g["attributes"], path, f"/{split}/attributes")[idx]
        attrs = {k: _plain(v) for k, v in f.attrs.items()}
    factors, values = _factor_names(attrs)
    motions = _names(attrs, "motions", schema.MOTIONS)
    labels = [sequence_label(int(a), att, motions, factors, values, index=int(i))
              for i, a, att in zip(idx, actions, attributes)]
    return write_gif_grid([[v] for v in videos], out, labels=labels, scale=scale, duration_ms=duration_ms, png=png,
                          overwrite=overwrite)
