import numpy as np
import pytest
from PIL import Image

from dsvae.cli import main
from dsvae.data import procedural as P
from dsvae.data import schema
from dsvae.data.inspect import describe, preview
from dsvae.errors import DsvaeError


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small data set with procedural pixels: 3 train and 2 test characters, 9 motions each."""
    path = tmp_path_factory.mktemp("inspect") / "small.h5"
    ids = {"train": np.array([0, 7, 1295]), "test": np.array([100, 555])}
    labels = {s: schema.sequence_labels(i) for s, i in ids.items()}
    attrs = schema.default_attrs("procedural", P.FACTOR_VALUES, seed=3)
    with schema.DatasetWriter(path, labels, attrs) as w:
        for split, i in ids.items():
            videos = P.render_characters(schema.character_attributes(i))
            w.write(split, 0, videos.reshape((-1,) + videos.shape[2:]))
    return path


def _n_frames(path):
    with Image.open(path) as im:
        return im.n_frames


def test_describe(small):
    text = describe(small)
    assert "split train: 27 sequences of 8 frames 64x64" in text
    assert "split test: 18 sequences" in text
    assert "3 characters" in text and "2 characters" in text
    assert "walk-front 3" in text and "slash-right 2" in text
    assert "source procedural" in text
    assert "uint8 (27, 8, 64, 64, 3)" in text
    assert "light skin, tan skin" in text  # value names of the body factor
    assert "blue jeans" in text and "red tee" in text
    assert "character-disjoint" in text
    assert "seed: 3" in text


def test_describe_counts_every_value(small):
    text = describe(small)
    train = text.split("split test")[0]
    # characters 0, 7 and 1295: hair values 0, 1, 5; 9 sequences each
    expect = "per hair: blue short 9, blond spiky 9, black long 0, ginger pigtails 0, silver bob 0, green mohawk 9"
    assert expect in train


def test_preview_writes_a_gif(small, tmp_path):
    out = preview(small, tmp_path / "p.gif", n=4, seed=1, scale=1)
    assert out == tmp_path / "p.gif"
    assert _n_frames(out) == 8
    with Image.open(out) as im:
        assert im.info["loop"] == 0 and im.info["duration"] == 150
        assert im.size[1] == 2 + 4 * (64 + 2)
    again = preview(small, tmp_path / "q.gif", n=4, seed=1, scale=1)
    assert again.read_bytes() == out.read_bytes()  # the same seed draws the same sequences
    png = preview(small, tmp_path / "r.gif", split="test", n=18, scale=1, png=True)
    assert png.with_suffix(".png").exists()


def test_preview_bad_arguments(small, tmp_path):
    with pytest.raises(DsvaeError, match="only 27"):
        preview(small, tmp_path / "p.gif", n=28)
    with pytest.raises(DsvaeError, match="at least 1"):
        preview(small, tmp_path / "p.gif", n=0)
    with pytest.raises(DsvaeError, match="no 'val' split"):
        preview(small, tmp_path / "p.gif", split="val")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "e.gif").write_bytes(b"x")
    with pytest.raises(DsvaeError, match="already exists"):
        preview(small, tmp_path / "e.gif", n=1)


def test_cli_info_and_preview(small, tmp_path, capsys):
    assert main(["data", "info", str(small)]) == 0
    assert "split train" in capsys.readouterr().out
    out = tmp_path / "v.gif"
    assert main(["data", "preview", str(small), "--out", str(out), "-n", "2", "--scale", "1"]) == 0
    assert _n_frames(out) == 8
    assert f"wrote {out}" in capsys.readouterr().out


def test_cli_bad_file(tmp_path, capsys):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not a data set")
    assert main(["data", "info", str(junk)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dsvae: error: ") and err.count("\n") == 1
    assert main(["data", "info", str(tmp_path / "missing.h5")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and err.count("\n") == 1
    assert main(["data", "preview", str(junk), "--out", str(tmp_path / "x.gif")]) == 2
    assert capsys.readouterr().err.startswith("dsvae: error: ")
