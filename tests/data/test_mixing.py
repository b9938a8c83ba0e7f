"""Motion mixing (dsvae.data.mixing and ``dsvae data mix``)."""

import json
import shutil

import h5py
import numpy as np
import pytest
import torch

from dsvae.cli import main
from dsvae.data.dataset import SpritesDataset
from dsvae.data.mixing import colour_histograms, colour_neighbours, dataset_colour_neighbours, mix_motions
from dsvae.errors import DsvaeError


def test_mix_motions_changes_motion_mid_sequence(procedural_h5, tmp_path):
    out = mix_motions(procedural_h5, tmp_path / "mixed.h5", share=0.5, seed=3, image_size=16, limit=90,
                      pairing="characters")
    orig = SpritesDataset(procedural_h5, "train", image_size=16, limit=90)
    mixed = SpritesDataset(out, "train")
    assert mixed.image_size == 16 and len(mixed) == 90
    assert (mixed.actions == orig.actions).all() and (mixed.attributes == orig.attributes).all()
    changed = 0
    for i in range(90):
        same = (mixed.videos[i] == orig.videos[i]).flatten(1).all(1)  # per frame
        if same.all():
            continue
        changed += 1
        k = int((~same).nonzero()[0])
        assert k >= 1 and bool(same[:k].all())  # the first k frames are the sequence's own
        donors = [j for j in range(90) if orig.characters[j] == orig.characters[i] and j != i]
        assert any(bool((mixed.videos[i, k:] == orig.videos[j, k:]).all()) for j in donors)
    assert 25 <= changed <= 65  # about half
    again = mix_motions(procedural_h5, tmp_path / "again.h5", share=0.5, seed=3, image_size=16, limit=90,
                        pairing="characters")
    assert bool((SpritesDataset(again, "train").videos == mixed.videos).all())  # seeded
    with pytest.raises(DsvaeError, match="mix share"):
        mix_motions(procedural_h5, tmp_path / "bad.h5", share=1.5)


def test_cli_mix(procedural_h5, tmp_path, capsys):
    out = tmp_path / "mixed.h5"
    assert main(["data", "mix", str(procedural_h5), "--out", str(out), "--share", "1", "--image-size", "16",
                 "--quiet"]) == 0
    assert str(out) in capsys.readouterr().out
    info = json.loads(h5py.File(out, "r").attrs["source_mixing"])  # the default pairing reads no labels
    assert info["pairing"] == "colours" and info["neighbours"] == 3 and info["pairing_precision"] >= 0.95
    orig = SpritesDataset(procedural_h5, "train", image_size=16)
    mixed = SpritesDataset(out, "train")
    assert len(mixed) == len(orig) and (mixed.actions == orig.actions).all()
    # share 1: every sequence whose character has another motion in the split is changed from some frame on
    changed = (mixed.videos != orig.videos).flatten(2).any(2)  # (N, T)
    assert bool(changed.any(1).float().mean() > 0.9) and not bool(changed[:, 0].any())
    # an existing output is refused without --overwrite, a bad share is a clear error (exit code 2, no traceback)
    assert main(["data", "mix", str(procedural_h5), "--out", str(out), "--quiet"]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["data", "mix", str(procedural_h5), "--out", str(tmp_path / "b.h5"), "--share", "-1", "--quiet"]) == 2
    assert "mix share" in capsys.readouterr().err


def test_colour_neighbours_find_the_sequence_with_the_same_colours():
    # oracle: 6 sequences in 3 colour groups on a black background; poses (pixel positions) differ
    gen = torch.Generator().manual_seed(0)
    palette = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    videos = torch.zeros(6, 4, 3, 8, 8, dtype=torch.uint8)
    for i in range(6):
        mask = torch.rand(4, 8, 8, generator=gen) < 0.4
        for c, v in enumerate(palette[i // 2]):
            videos[i, :, c][mask] = v
    near = colour_neighbours(videos, 1)
    assert near.flatten().tolist() == [1, 0, 3, 2, 5, 4]
    hist = colour_histograms(videos)
    assert hist.shape == (6, 4096) and torch.allclose(hist.norm(dim=1), torch.ones(6))
    assert bool((hist[:, 0] == 0).all())  # the background colour (black, the most common) is dropped
    with pytest.raises(DsvaeError, match="neighbours"):
        colour_neighbours(videos, 6)


def test_a_data_sets_colour_neighbours_are_compared_at_the_stored_size(procedural_h5):
    stored = SpritesDataset(procedural_h5, "train", limit=60)
    small_lazy = SpritesDataset(procedural_h5, "train", image_size=stored.stored_size // 4, limit=60, resident=False)
    try:
        near = dataset_colour_neighbours(stored, 2)
        assert torch.equal(near, colour_neighbours(stored.videos, 2))
        # a lazy data set at a smaller frame size gets the stored frames' neighbours, not the blended ones
        assert torch.equal(dataset_colour_neighbours(small_lazy, 2), near)
        assert not torch.equal(colour_neighbours(small_lazy.videos_uint8(np.arange(60)), 2), near)
        assert float((stored.characters[near[:, 0]] == stored.characters).float().mean()) > 0.9
    finally:
        stored.close()
        small_lazy.close()


def test_a_data_sets_colour_neighbours_are_at_most_the_others(procedural_h5):
    three = SpritesDataset(procedural_h5, "train", limit=3)
    one = SpritesDataset(procedural_h5, "train", limit=1)
    try:
        near = dataset_colour_neighbours(three, 8)  # asked for more than there are: every other sequence
        assert near.shape == (3, 2) and all(i not in row for i, row in enumerate(near.tolist()))
        with pytest.raises(DsvaeError, match="at least two"):
            dataset_colour_neighbours(one, 3)
    finally:
        three.close()
        one.close()


def test_colour_pairing_reads_no_labels(procedural_h5, tmp_path):
    # the same file with scrambled character ids must give the same mixed videos
    scrambled = tmp_path / "scrambled.h5"
    shutil.copy(procedural_h5, scrambled)
    with h5py.File(scrambled, "r+") as f:
        chars = f["train/characters"][:]
        f["train/characters"][...] = np.random.default_rng(0).permutation(chars)
    kw = dict(share=1.0, seed=1, image_size=16, limit=180, pairing="colours", neighbours=2)
    out = mix_motions(procedural_h5, tmp_path / "a.h5", **kw)
    again = mix_motions(scrambled, tmp_path / "b.h5", **kw)
    mixed = SpritesDataset(out, "train")
    assert bool((SpritesDataset(again, "train").videos == mixed.videos).all())
    # and the partners are the same character (the ids are read only to report this)
    orig = SpritesDataset(procedural_h5, "train", image_size=16, limit=180)
    same_char = []
    for i in range(180):
        differs = (mixed.videos[i] != orig.videos[i]).flatten(1).any(1)
        assert not bool(differs[0])  # the first frame is always the sequence's own
        if differs.any():
            k = int(differs.nonzero()[0])
            donors = [j for j in range(180) if bool((mixed.videos[i, k:] == orig.videos[j, k:]).all())]
            same_char.append(any(int(orig.characters[j]) == int(orig.characters[i]) for j in donors))
    assert len(same_char) > 150 and np.mean(same_char) >= 0.9
    info = json.loads(h5py.File(out, "r").attrs["source_mixing"])
    assert info["pairing"] == "colours" and info["pairing_precision"] >= 0.9
    with pytest.raises(DsvaeError, match="unknown pairing"):
        mix_motions(procedural_h5, tmp_path / "c.h5", pairing="ids")


def test_cli_mix_pair_by_characters(procedural_h5, tmp_path, capsys):
    out = tmp_path / "mixed.h5"
    assert main(["data", "mix", str(procedural_h5), "--out", str(out), "--image-size", "16", "--pair-by",
                 "characters", "--quiet"]) == 0
    info = json.loads(h5py.File(out, "r").attrs["source_mixing"])
    assert info["pairing"] == "characters" and info["neighbours"] is None
    assert main(["data", "mix", str(procedural_h5), "--out", str(tmp_path / "b.h5"), "--pair-by", "colours",
                 "--neighbours", "0", "--quiet"]) == 2
    assert "neighbours must be" in capsys.readouterr().err
