import os

import numpy as np
import pytest
import torch
from PIL import Image

from dsvae.errors import DsvaeError
from dsvae.viz.gif import BACKGROUND, make_grid_frames, make_strip_image, to_uint8_frames, write_gif_grid


def read_gif(path):
    """All frames of a GIF as uint8 (n, H, W, 3), and its info dict (duration of the first frame, loop)."""
    with Image.open(path) as im:
        info = dict(im.info)
        frames = []
        for k in range(im.n_frames):
            im.seek(k)
            frames.append(np.asarray(im.convert("RGB")))
    return np.stack(frames), info


def _seqs(n, t=5, h=8, w=8, seed=0):
    """n uint8 sequences (t, h, w, 3) whose frames all differ, with few colours (GIF palettes hold 256)."""
    rng = np.random.default_rng(seed)
    levels = np.array([0, 60, 120, 180, 240], dtype=np.uint8)
    return [levels[rng.integers(0, 5, (t, h, w, 3))] for _ in range(n)]


def test_gif_frames_size_loop_and_duration(tmp_path):
    s = _seqs(6)
    rows = [s[:3], s[3:]]
    out = write_gif_grid(rows, tmp_path / "g.gif", scale=3, pad=2, duration_ms=120)
    assert out == tmp_path / "g.gif"
    frames, info = read_gif(out)
    assert frames.shape == (5, 2 + 2 * (24 + 2), 2 + 3 * (24 + 2), 3)
    assert info["loop"] == 0
    assert info["duration"] == 120
    with Image.open(out) as im:
        assert im.n_frames == 5


def test_label_column_width_and_text(tmp_path):
    s = _seqs(2)
    plain = make_grid_frames([[s[0]], [s[1]]], scale=2)
    fixed = make_grid_frames([[s[0]], [s[1]]], labels=["walk-front", "slash-left"], scale=2, label_width=40)
    assert fixed.shape[2] == plain.shape[2] + 40
    auto = make_grid_frames([[s[0]], [s[1]]], labels=["walk-front\nred tee", None], scale=2)
    lw = auto.shape[2] - plain.shape[2]
    assert lw > 20
    column = auto[:, :, :lw]
    assert (column == 255).all(-1).any()  # white text
    assert (column == column[0]).all()  # the same in every frame
    # the cells themselves are where the unlabelled grid has them
    assert np.array_equal(auto[:, :, lw:], plain)
    frames, _ = read_gif(write_gif_grid([[s[0]], [s[1]]], tmp_path / "l.gif", labels=["a", "b"], scale=2))
    assert frames.shape[2] > plain.shape[2]


def test_nearest_upscaling_keeps_exact_colours(tmp_path):
    s = _seqs(2, t=3, h=4, w=5)
    scale, pad = 4, 2
    frames, _ = read_gif(write_gif_grid([[s[0], s[1]]], tmp_path / "n.gif", scale=scale, pad=pad))
    for c, seq in enumerate(s):
        y, x = pad, pad + c * (5 * scale + pad)
        cell = frames[:, y:y + 4 * scale, x:x + 5 * scale]
        assert np.array_equal(cell, seq.repeat(scale, axis=1).repeat(scale, axis=2))
    assert (frames[:, 0, :] == BACKGROUND).all()  # border


def test_float_and_uint8_inputs_give_the_same_output(tmp_path):
    s = _seqs(2)
    as_float_last = [x.astype(np.float32) / 255.0 for x in s]
    as_float_first = [np.ascontiguousarray(x.transpose(0, 3, 1, 2)) for x in as_float_last]
    as_torch = [torch.from_numpy(x) for x in as_float_first]
    as_torch_uint8 = [torch.from_numpy(x).permute(0, 3, 1, 2) for x in s]
    ref = make_grid_frames([s], labels=["x"], scale=2)
    for variant in (as_float_last, as_float_first, as_torch, as_torch_uint8):
        assert np.array_equal(make_grid_frames([variant], labels=["x"], scale=2), ref)
    a = write_gif_grid([s], tmp_path / "a.gif")
    b = write_gif_grid([as_torch], tmp_path / "b.gif")
    assert a.read_bytes() == b.read_bytes()


def test_to_uint8_frames():
    x = torch.rand(3, 3, 4, 4, dtype=torch.float64) * 1.4 - 0.2  # out of range is clipped
    u = to_uint8_frames(x)
    assert u.shape == (3, 4, 4, 3) and u.dtype == np.uint8
    assert u.min() == 0 and u.max() == 255
    grey = to_uint8_frames(np.full((2, 4, 4, 1), 0.5))
    assert grey.shape == (2, 4, 4, 3) and (grey == 128).all()
    with pytest.raises(ValueError):
        to_uint8_frames(np.zeros((4, 4, 3)))
    with pytest.raises(ValueError):
        to_uint8_frames(np.zeros((2, 4, 4, 5)))


def test_inconsistent_sequences_refused():
    s = _seqs(2)
    with pytest.raises(ValueError, match="number of frames"):
        make_grid_frames([[s[0], s[1][:3]]])
    with pytest.raises(ValueError, match="frame size"):
        make_grid_frames([[s[0], s[1][:, :4]]])
    with pytest.raises(ValueError, match="labels"):
        make_grid_frames([[s[0]]], labels=["a", "b"])
    with pytest.raises(ValueError):
        make_grid_frames([])
    with pytest.raises(DsvaeError, match="scale"):
        make_grid_frames([[s[0]]], scale=0)


def test_ragged_rows_and_column_labels():
    s = _seqs(3)
    g = make_grid_frames([[s[0], s[1]], [s[2]]], scale=1, pad=1)
    assert g.shape == (5, 1 + 2 * 9, 1 + 2 * 9, 3)
    assert (g[:, 10:18, 10:18] == BACKGROUND).all()  # the missing cell
    h = make_grid_frames([[s[0], s[1]], [s[2]]], scale=1, pad=1, col_labels=["original", "swapped"])
    header = h.shape[1] - g.shape[1]
    assert header > 5
    assert np.array_equal(h[:, header:], g)


def test_png_strip(tmp_path):
    s = _seqs(2, t=4, h=6, w=6)
    out = write_gif_grid([[s[0]], [s[1]]], tmp_path / "p.gif", scale=2, pad=1, png=True)
    png = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))
    assert png.shape == (1 + 2 * 13, 1 + 4 * 13, 3)
    for r in range(2):
        for t in range(4):
            cell = png[1 + r * 13:1 + r * 13 + 12, 1 + t * 13:1 + t * 13 + 12]
            assert np.array_equal(cell, s[r][t].repeat(2, 0).repeat(2, 1))
    assert out.exists()
    assert np.array_equal(make_strip_image([[s[0]], [s[1]]], scale=2, pad=1), png)


def test_existing_output_refused_unless_overwrite(tmp_path):
    s = _seqs(1)
    out = tmp_path / "o.gif"
    out.write_bytes(b"old")
    with pytest.raises(DsvaeError, match="already exists"):
        write_gif_grid([s], out)
    assert out.read_bytes() == b"old"
    write_gif_grid([s], out, overwrite=True)
    assert read_gif(out)[0].shape[0] == 5
    (tmp_path / "q.png").write_bytes(b"old")
    with pytest.raises(DsvaeError, match="already exists"):
        write_gif_grid([s], tmp_path / "q.gif", png=True)
    assert not (tmp_path / "q.gif").exists()


def test_missing_folder_created_unwritable_refused(tmp_path):
    s = _seqs(1)
    out = write_gif_grid([s], tmp_path / "new" / "dir" / "x.gif")
    assert out.exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DsvaeError, match="cannot create folder"):
        write_gif_grid([s], blocker / "sub" / "x.gif")
    with pytest.raises(DsvaeError, match="is a directory"):
        write_gif_grid([s], tmp_path)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_folder_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(DsvaeError, match="not writable"):
            write_gif_grid([_seqs(1)], ro / "x.gif")
    finally:
        ro.chmod(0o700)


def test_failure_mid_write_leaves_no_file(tmp_path, monkeypatch):
    import imageio.v3 as iio

    real = iio.imwrite

    def broken(path, *args, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"GIF89a partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(iio, "imwrite", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_gif_grid([_seqs(1)], tmp_path / "x.gif")
    assert list(tmp_path.iterdir()) == []

    def png_fails(path, image, extension, **kwargs):
        if extension == ".png":
            raise RuntimeError("png failed")
        return real(path, image, extension=extension, **kwargs)

    monkeypatch.setattr(iio, "imwrite", png_fails)
    with pytest.raises(RuntimeError, match="png failed"):
        write_gif_grid([_seqs(1)], tmp_path / "y.gif", png=True)
    assert list(tmp_path.iterdir()) == []


def test_bad_duration(tmp_path):
    with pytest.raises(DsvaeError, match="duration"):
        write_gif_grid([_seqs(1)], tmp_path / "x.gif", duration_ms=0)
    assert not (tmp_path / "x.gif").exists()
