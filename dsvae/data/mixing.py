"""Motion mixing: a training set in which the action changes inside some sequences.

In every original Sprites sequence, everything but the motion is constant, and so is the direction
the sprite faces. A sequential VAE trained on them alone may keep the direction in its static code
f. :func:`mix_motions` writes a copy of the train split in which a share of the sequences switch,
at a random frame, to another motion of the same character; then only the character's attributes
stay constant in every training sequence. This uses which sequences show the same character (the
data set's character ids): weak supervision, stated wherever results of such a run are reported.

``dsvae data mix FILE --out MIXED.h5`` is the command; ``dsvae demo`` uses it for its training set.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from dsvae.data import schema
from dsvae.errors import DsvaeError


def mix_motions(data_file: str | os.PathLike, out: str | os.PathLike, share: float = 0.5, seed: int = 0,
                image_size: int | None = None, limit: int | None = None, overwrite: bool = False,
                progress: bool = False) -> Path:
    """Write the train split of ``data_file`` with a motion change in ``share`` of its sequences.

    A changed sequence keeps its first k frames (k uniform in 1..T-1) and takes frames k..T-1
    from another motion of the same character (uniform over the motions the split has for it;
    same time steps). Labels stay those of the first motion. Only what is constant in time
    (the character's attributes) stays constant in every training sequence: the direction a
    sprite faces is constant in every original sequence, so a DSVAE trained on them alone is
    free to keep it in the static code f, and then a swap shows the static source's direction
    with the donor's action (on the procedural set: direction from f in ~92% of swaps, so
    ~33% swap action accuracy). Frames are stored at ``image_size`` (default: the data set's);
    ``limit`` keeps the first N sequences. Seeded: the same arguments give the same file.
    """
    from dsvae.data.dataset import SpritesDataset

    if not 0.0 <= share <= 1.0:
        raise DsvaeError(f"mix share must be in [0, 1], got {share!r}")
    ds = SpritesDataset(data_file, "train", image_size=image_size, limit=limit, progress=progress)
    videos = ds.videos
    assert videos is not None
    n, frames = videos.shape[0], videos.shape[1]
    if n == 0 or frames < 2:
        raise DsvaeError(f"the train split of {data_file} has no sequences of 2 frames or more to mix")
    rng = np.random.default_rng(seed)
    chars, actions = ds.characters.numpy(), ds.actions.numpy()
    by_char: dict[int, dict[int, int]] = {}
    for i, (c, a) in enumerate(zip(chars.tolist(), actions.tolist())):
        by_char.setdefault(c, {})[a] = i
    mixed = videos.clone()
    chosen = rng.random(n) < share
    for i in np.flatnonzero(chosen):
        others = [j for a, j in sorted(by_char[int(chars[i])].items()) if a != actions[i]]
        if not others:
            continue
        j, k = int(rng.choice(others)), int(rng.integers(1, frames))
        mixed[i, k:] = videos[j, k:]
    labels = {"train": schema.SplitLabels(actions=actions, attributes=ds.attributes.numpy(), characters=chars)}
    with schema.open_h5(data_file) as f:
        attrs = dict(f.attrs.items())
    attrs["source_mixing"] = json.dumps({"from": str(data_file), "share": share, "seed": seed, "limit": limit,
                                         "changed": int(chosen.sum())})
    size = int(videos.shape[-1])
    with schema.DatasetWriter(out, labels, attrs, frames=frames, size=size, overwrite=overwrite) as writer:
        for start in range(0, n, 512):
            block = mixed[start:start + 512].permute(0, 1, 3, 4, 2).contiguous().numpy()
            writer.write("train", start, block)
    ds.close()
    return writer.path
