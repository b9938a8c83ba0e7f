"""Motion mixing (dsvae.data.mixing and ``dsvae data mix``)."""

import pytest

from dsvae.cli import main
from dsvae.data.dataset import SpritesDataset
from dsvae.data.mixing import mix_motions
from dsvae.errors import DsvaeError


def test_mix_motions_changes_motion_mid_sequence(procedural_h5, tmp_path):
    out = mix_motions(procedural_h5, tmp_path / "mixed.h5", share=0.5, seed=3, image_size=16, limit=90)
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
    again = mix_motions(procedural_h5, tmp_path / "again.h5", share=0.5, seed=3, image_size=16, limit=90)
    assert bool((SpritesDataset(again, "train").videos == mixed.videos).all())  # seeded
    with pytest.raises(DsvaeError, match="mix share"):
        mix_motions(procedural_h5, tmp_path / "bad.h5", share=1.5)


def test_cli_mix(procedural_h5, tmp_path, capsys):
    out = tmp_path / "mixed.h5"
    assert main(["data", "mix", str(procedural_h5), "--out", str(out), "--share", "1", "--image-size", "16",
                 "--quiet"]) == 0
    assert str(out) in capsys.readouterr().out
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
