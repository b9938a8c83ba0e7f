"""Motion mixing: a training set in which the action changes inside some sequences.

In every original Sprites sequence, everything but the motion is constant, and so is the direction
the sprite faces. A sequential VAE trained on them alone may keep the direction in its static code
f. :func:`mix_motions` writes a copy of the train split in which a share of the sequences switch,
at a random frame, to another motion of the same character; then only the character's attributes
stay constant in every training sequence.

Which sequences show the same character is found one of two ways (``pairing``):

- ``"colours"`` (the default), no labels: the nearest neighbours of each sequence by colour
  histogram (the square root of its pixel counts over 16 levels per channel, the background colour
  dropped; cosine similarity). A character wears the same layers in every motion, so its colours
  barely change with the motion. On the real Sprites train split the nearest neighbour is the same
  character for 100% of the sequences (99.95% within 3 neighbours; procedural set: 100% / 99.4%);
  the ids are read only to report that precision (``pairing_precision`` in the file's attributes);
- ``"characters"``: the data set's character ids (weak supervision, stated wherever results of such
  a run are reported).

``dsvae data mix FILE --out MIXED.h5`` is the command; ``dsvae demo`` uses it for its training set.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from dsvae.data import schema
from dsvae.data.dataset import SpritesDataset
from dsvae.errors import DsvaeError


PAIRINGS = ("characters", "colours")
_BLOCK = 256  # sequences per block when counting colours / comparing histograms


def _colour_counts(videos: torch.Tensor) -> torch.Tensor:
    """(N, 4096) float pixel counts over 16 levels per channel of uint8 videos (N, T, 3, H, W)."""
    counts = torch.zeros(videos.shape[0], 4096)
    for s in range(0, videos.shape[0], _BLOCK):
        q = (videos[s:s + _BLOCK] >> 4).to(torch.int32)
        code = rearrange(q[:, :, 0] * 256 + q[:, :, 1] * 16 + q[:, :, 2], "n t h w -> n (t h w)")
        code = code + torch.arange(code.shape[0], dtype=torch.int32)[:, None] * 4096
        counts[s:s + code.shape[0]] = torch.bincount(code.flatten(), minlength=code.shape[0] * 4096).view(-1, 4096)
    return counts


def _histograms(counts: torch.Tensor) -> torch.Tensor:
    if counts.shape[0]:
        counts[:, int(counts.sum(0).argmax())] = 0.0  # the background
    return F.normalize(counts.sqrt_(), dim=1)


def colour_histograms(videos: torch.Tensor) -> torch.Tensor:
    """(N, 4096) float: per sequence, the square root of its pixel counts over 16 levels per channel.

    ``videos`` is uint8 (N, T, 3, H, W). The colour most common over all sequences (the background)
    is set to 0; rows are L2-normalised, so ``h @ h.T`` is the cosine similarity.
    """
    return _histograms(_colour_counts(videos))


def _nearest(hist: torch.Tensor, k: int) -> torch.Tensor:
    n = hist.shape[0]
    if not 1 <= k < n:
        raise DsvaeError(f"neighbours must be in 1..{n - 1} for {n} sequences, got {k}")
    out = torch.empty(n, k, dtype=torch.long)
    for s in range(0, n, _BLOCK):
        sim = hist[s:s + _BLOCK] @ hist.T
        rows = torch.arange(sim.shape[0])
        sim[rows, rows + s] = -2.0  # never a sequence itself
        out[s:s + sim.shape[0]] = sim.topk(k, dim=1).indices
    return out


def colour_neighbours(videos: torch.Tensor, k: int) -> torch.Tensor:
    """(N, k) long: each sequence's k nearest other sequences by :func:`colour_histograms` (best first)."""
    return _nearest(colour_histograms(videos), k)


def dataset_colour_neighbours(ds: SpritesDataset, k: int) -> torch.Tensor:
    """(len(ds), min(k, len(ds) - 1)) long: :func:`colour_neighbours` of a data set's sequences, compared at their
    stored frame size (downscaling blends the colours) and read in blocks (a lazy data set is never held whole)."""
    n = len(ds)
    if n < 2:
        raise DsvaeError(f"pairing sequences by colour needs at least two of them; the data set has {n}")
    k = min(k, n - 1)
    if ds.videos is not None and ds.image_size == ds.stored_size:
        counts = _colour_counts(ds.videos)
    else:
        full = SpritesDataset(ds.path, ds.split, resident=False, indices=ds.file_indices)
        try:
            counts = torch.cat([_colour_counts(full.videos_uint8(np.arange(s, min(s + _BLOCK, n))))
                                for s in range(0, n, _BLOCK)])
        finally:
            full.close()
    return _nearest(_histograms(counts), k)


def same_character_share(characters: torch.Tensor, near: torch.Tensor) -> float:
    """The share of the neighbours ``near`` (N, k) that show the same character as their sequence (ids (N,)):
    the pairing's precision, reported only (the pairing itself reads no labels)."""
    return float((characters[near] == characters[:, None]).float().mean())


def mix_motions(data_file: str | os.PathLike, out: str | os.PathLike, share: float = 0.5, seed: int = 0,
                image_size: int | None = None, limit: int | None = None, overwrite: bool = False,
                progress: bool = False, pairing: str = "colours", neighbours: int = 3) -> Path:
    """Write the train split of ``data_file`` with a motion change in ``share`` of its sequences.

    A changed sequence keeps its first k frames (k uniform in 1..T-1) and takes frames k..T-1
    from another sequence of the same character (same time steps). With ``pairing="characters"``
    that is another motion of the character (uniform over the motions the split has for it, by
    the data set's character ids: weak supervision); with ``pairing="colours"`` (the default) it
    is one of the sequence's ``neighbours`` nearest sequences by colour, compared at the stored
    frame size (uniform; no labels read; see the module doc).
    Labels stay those of the first motion. Only what is constant in time
    (the character's attributes) stays constant in every training sequence: the direction a
    sprite faces is constant in every original sequence, so a DSVAE trained on them alone is
    free to keep it in the static code f, and then a swap shows the static source's direction
    with the donor's action (on the procedural set: direction from f in ~92% of swaps, so
    ~33% swap action accuracy). Frames are stored at ``image_size`` (default: the data set's);
    ``limit`` keeps the first N sequences. Seeded: the same arguments give the same file.
    """
    if not 0.0 <= share <= 1.0:
        raise DsvaeError(f"mix share must be in [0, 1], got {share!r}")
    if pairing not in PAIRINGS:
        raise DsvaeError(f"unknown pairing {pairing!r} (choose from: {', '.join(PAIRINGS)})")
    if pairing == "colours" and neighbours < 1:
        raise DsvaeError(f"neighbours must be at least 1, got {neighbours}")
    ds = SpritesDataset(data_file, "train", image_size=image_size, limit=limit, progress=progress)
    videos = ds.videos
    assert videos is not None
    n, frames = videos.shape[0], videos.shape[1]
    if n == 0 or frames < 2:
        raise DsvaeError(f"the train split of {data_file} has no sequences of 2 frames or more to mix")
    rng = np.random.default_rng(seed)
    chars, actions = ds.characters.numpy(), ds.actions.numpy()
    partners: list[list[int]]
    precision = None
    if pairing == "characters":
        by_char: dict[int, dict[int, int]] = {}
        for i, (c, a) in enumerate(zip(chars.tolist(), actions.tolist())):
            by_char.setdefault(c, {})[a] = i
        partners = [[j for a, j in sorted(by_char[int(c)].items()) if a != a_i]
                    for c, a_i in zip(chars.tolist(), actions.tolist())]
    else:
        near = dataset_colour_neighbours(ds, neighbours) if n > 1 else torch.empty(n, 0, dtype=torch.long)
        partners = near.tolist()
        if near.numel():  # reported only: how often a colour neighbour is the same character
            precision = same_character_share(ds.characters, near)
    mixed = videos.clone()
    chosen = rng.random(n) < share
    for i in np.flatnonzero(chosen):
        others = partners[i]
        if not others:
            continue
        j, k = int(rng.choice(others)), int(rng.integers(1, frames))
        mixed[i, k:] = videos[j, k:]
    labels = {"train": schema.SplitLabels(actions=actions, attributes=ds.attributes.numpy(), characters=chars)}
    with schema.open_h5(data_file) as f:
        attrs = dict(f.attrs.items())
    attrs["source_mixing"] = json.dumps({"from": str(data_file), "share": share, "seed": seed, "limit": limit,
                                         "pairing": pairing, "neighbours": neighbours if pairing == "colours" else None,
                                         "pairing_precision": precision, "changed": int(chosen.sum())})
    size = int(videos.shape[-1])
    with schema.DatasetWriter(out, labels, attrs, frames=frames, size=size, overwrite=overwrite) as writer:
        for start in range(0, n, 512):
            block = mixed[start:start + 512].permute(0, 1, 3, 4, 2).contiguous().numpy()
            writer.write("train", start, block)
    ds.close()
    return writer.path
