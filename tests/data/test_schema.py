import h5py
import numpy as np
import pytest

from dsvae.data import schema
from dsvae.data.dataset import SpritesDataset
from dsvae.errors import DsvaeError


def _tiny_file(path, n_chars=(3, 2), frames=8, size=8, overwrite=False):
    train_ids, test_ids = np.arange(n_chars[0]), np.arange(100, 100 + n_chars[1])
    labels = {"train": schema.sequence_labels(train_ids), "test": schema.sequence_labels(test_ids)}
    values = {f: [str(i) for i in range(6)] for f in schema.FACTORS}
    rng = np.random.default_rng(0)
    data = {s: rng.integers(0, 256, (len(l), frames, size, size, 3), dtype=np.uint8) for s, l in labels.items()}
    with schema.DatasetWriter(path, labels, schema.default_attrs("test", values), frames=frames, size=size,
                              overwrite=overwrite) as w:
        for s, v in data.items():
            w.write(s, 0, v[:5])
            w.write(s, 5, v[5:])
    return data, labels


def test_character_id_round_trip():
    ids = np.arange(schema.N_CHARACTERS)
    attrs = schema.character_attributes(ids)
    assert attrs.shape == (1296, 4) and attrs.min() == 0 and attrs.max() == 5
    assert np.array_equal(schema.character_id(attrs), ids)
    assert list(schema.character_attributes(np.array([((1 * 6 + 2) * 6 + 3) * 6 + 4]))[0]) == [1, 2, 3, 4]


def test_standard_split_sizes_and_disjoint():
    train, test = schema.standard_split()
    assert len(train) == 1000 and len(test) == 296
    assert not set(train) & set(test)
    assert sorted(np.concatenate([train, test])) == list(range(1296))
    np.random.seed(423)
    assert np.array_equal(np.random.permutation(1296)[:1000], train)


def test_writer_round_trip_and_chunking(tmp_path):
    path = tmp_path / "d.h5"
    data, labels = _tiny_file(path)
    with h5py.File(path) as f:
        assert f.attrs["format"] == schema.FORMAT
        v = f["train/videos"]
        assert v.chunks == (1, 8, 8, 8, 3) and v.compression == "gzip"
        assert np.array_equal(v[:], data["train"])
        assert np.array_equal(f["test/actions"][:], labels["test"].actions)
    ds = SpritesDataset(path, "test")
    assert ds.videos.shape == (len(labels["test"]), 8, 3, 8, 8)
    item = ds[3]
    assert item["x"].shape == (8, 3, 8, 8) and 0 <= item["x"].min() and item["x"].max() <= 1
    expect = data["test"][3].transpose(0, 3, 1, 2) / 255.0
    assert np.allclose(item["x"].numpy(), expect)
    lazy = SpritesDataset(path, "test", resident=False)
    assert np.allclose(lazy[3]["x"].numpy(), expect)
    assert int(lazy[3]["action"]) == labels["test"].actions[3]


def test_writer_leaves_nothing_on_failure(tmp_path):
    path = tmp_path / "d.h5"
    labels = {"train": schema.sequence_labels(np.arange(2))}
    values = {f: [str(i) for i in range(6)] for f in schema.FACTORS}
    with pytest.raises(RuntimeError):
        with schema.DatasetWriter(path, labels, schema.default_attrs("t", values), size=8) as w:
            w.write("train", 0, np.zeros((3, 8, 8, 8, 3), np.uint8))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="unwritten"):
        with schema.DatasetWriter(path, labels, schema.default_attrs("t", values), size=8) as w:
            w.write("train", 0, np.zeros((3, 8, 8, 8, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_existing_output_refused_unless_overwrite(tmp_path):
    path = tmp_path / "d.h5"
    _tiny_file(path)
    with pytest.raises(DsvaeError, match="already exists"):
        _tiny_file(path)
    _tiny_file(path, overwrite=True)


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(DsvaeError, match="cannot create folder"):
        _tiny_file(blocker / "sub" / "d.h5")
    with pytest.raises(DsvaeError, match="is a directory"):
        _tiny_file(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(DsvaeError, match="does not exist"):
        SpritesDataset(tmp_path / "missing.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(DsvaeError, match="not a readable HDF5"):
        SpritesDataset(junk)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(DsvaeError, match="not a dsvae data set"):
        SpritesDataset(foreign)
    path = tmp_path / "d.h5"
    _tiny_file(path)
    with h5py.File(path, "a") as f:
        del f["train/actions"]
        f["train/actions"] = np.zeros(2)
    with pytest.raises(DsvaeError, match="actions"):
        SpritesDataset(path)


def test_truncated_file(tmp_path):
    path = tmp_path / "d.h5"
    _tiny_file(path)
    raw = path.read_bytes()
    for cut in (len(raw) // 2, len(raw) - 200):
        bad = tmp_path / f"cut{cut}.h5"
        bad.write_bytes(raw[:cut])
        with pytest.raises(DsvaeError):
            SpritesDataset(bad, "train")
            SpritesDataset(bad, "test")


def test_resize(tmp_path):
    path = tmp_path / "d.h5"
    _tiny_file(path)
    ds = SpritesDataset(path, "train", image_size=4)
    assert ds.videos.shape[-2:] == (4, 4)
    assert ds[0]["x"].shape == (8, 3, 4, 4)
