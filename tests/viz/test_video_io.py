import importlib.util
import warnings

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from dsvae.data.dataset import resize_videos
from dsvae.errors import DsvaeError
from dsvae.viz import video_io
from dsvae.viz.video_io import FramesDropped, fit_frames, read_frames, read_sequence

LEVELS = np.array([0, 60, 120, 180, 240], dtype=np.uint8)


def _frames(n, h=16, w=None, seed=0):
    """n distinct uint8 RGB frames (n, h, w, 3) with few colours (exact through a GIF palette)."""
    rng = np.random.default_rng(seed)
    return LEVELS[rng.integers(0, len(LEVELS), (n, h, w or h, 3))]


def _as_model_input(frames, size):
    """What read_sequence should give for RGB frames (n, h, w, 3): the data set loader's resize, as floats."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2)[None]
    return resize_videos(x, size)[0].float() / 255.0


def _write_gif(path, frames, duration=100):
    iio.imwrite(path, frames, extension=".gif", is_batch=True, duration=duration, loop=0)
    return path


def test_gif_read_exactly(tmp_path):
    frames = _frames(8)
    path = _write_gif(tmp_path / "walk.gif", frames)
    assert np.array_equal(read_frames(path), frames)
    x = read_sequence(path, image_size=16, frames=8)
    assert x.shape == (8, 3, 16, 16) and x.dtype == torch.float32
    assert torch.equal(x, _as_model_input(frames, 16))


def test_resized_to_the_model_size(tmp_path):
    frames = _frames(8, h=32)
    down = read_sequence(_write_gif(tmp_path / "big.gif", frames), image_size=16, frames=8)
    assert down.shape == (8, 3, 16, 16)
    # area average of 2x2 blocks
    block = frames[:, :2, :2].reshape(8, 4, 3).astype(np.float64).mean(1)
    assert torch.allclose(down[:, :, 0, 0] * 255, torch.from_numpy(np.rint(block)).float())
    small = _frames(8, h=8)
    up = read_sequence(_write_gif(tmp_path / "small.gif", small), image_size=16, frames=8)
    assert up.shape == (8, 3, 16, 16)
    assert torch.equal(up[:, :, ::2, ::2] * 255, torch.from_numpy(small).permute(0, 3, 1, 2).float())  # nearest


def test_more_frames_uses_the_first_and_warns(tmp_path):
    frames = _frames(11)
    path = _write_gif(tmp_path / "long.gif", frames)
    with pytest.warns(FramesDropped, match=r"long\.gif has 11 frames; using the first 8"):
        x = read_sequence(path, image_size=16, frames=8)
    assert torch.equal(x, _as_model_input(frames[:8], 16))


def test_merged_gif_frames_come_back(tmp_path):
    """GIF writers merge identical consecutive frames into one longer frame; the reader splits them again."""
    frames = _frames(8)
    frames[4] = frames[3]
    path = _write_gif(tmp_path / "hold.gif", frames)
    with Image.open(path) as im:
        assert im.n_frames == 7
    assert np.array_equal(read_frames(path), frames)


def test_png_strip(tmp_path):
    frames = _frames(8)
    strip = np.concatenate(list(frames), axis=1)  # (16, 8 * 16, 3)
    Image.fromarray(strip).save(tmp_path / "strip.png")
    x = read_sequence(tmp_path / "strip.png", image_size=16, frames=8)
    assert x.shape == (8, 3, 16, 16)
    assert torch.equal(x, _as_model_input(frames, 16))
    Image.fromarray(strip[:, :-3]).save(tmp_path / "ragged.png")
    with pytest.raises(DsvaeError, match=r"ragged\.png.*width 125 is not a multiple of its height 16"):
        read_frames(tmp_path / "ragged.png")


def test_folder_of_frames_in_natural_order(tmp_path):
    frames = _frames(10)
    folder = tmp_path / "frames"
    folder.mkdir()
    for k, frame in enumerate(frames):  # frame_1 ... frame_10: plain sorting would put frame_10 second
        Image.fromarray(frame).save(folder / f"frame_{k + 1}.png")
    (folder / "notes.txt").write_text("not a frame")
    (folder / ".DS_Store").write_bytes(b"\0\1")
    assert np.array_equal(read_frames(folder), frames)
    with pytest.warns(FramesDropped):
        x = read_sequence(folder, image_size=16, frames=8)
    assert torch.equal(x, _as_model_input(frames[:8], 16))


def test_folder_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DsvaeError, match="has no frame images"):
        read_frames(empty)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(_frames(1)[0]).save(mixed / "0.png")
    Image.fromarray(_frames(1, h=8)[0]).save(mixed / "1.png")
    with pytest.raises(DsvaeError, match="different sizes"):
        read_frames(mixed)
    (mixed / "1.png").write_bytes(b"garbage")
    with pytest.raises(DsvaeError, match=r"cannot read frame .*1\.png"):
        read_frames(mixed)


def test_rgba_composited_over_black(tmp_path):
    rgb = _frames(8)
    alpha = np.zeros((8, 16, 16, 1), dtype=np.uint8)
    alpha[:, :8] = 255
    alpha[:, 8:12] = 128  # half transparent; the rest fully transparent
    rgba = np.concatenate([rgb, alpha], axis=-1)
    Image.fromarray(np.concatenate(list(rgba), axis=1), "RGBA").save(tmp_path / "rgba.png")
    got = read_frames(tmp_path / "rgba.png")
    assert got.shape == (8, 16, 16, 3)
    assert np.array_equal(got[:, :8], rgb[:, :8])
    expected = (rgb[:, 8:12].astype(np.uint32) * 128 + 127) // 255
    assert np.array_equal(got[:, 8:12], expected.astype(np.uint8))
    assert (got[:, 12:] == 0).all()
    assert read_sequence(tmp_path / "rgba.png", image_size=16, frames=8).shape == (8, 3, 16, 16)


def test_transparent_gif_background_is_black(tmp_path):
    rgb = _frames(8)
    alpha = np.full((8, 16, 16, 1), 255, dtype=np.uint8)
    alpha[:, :, :4] = 0
    imgs = [Image.fromarray(np.concatenate([f, a], -1), "RGBA") for f, a in zip(rgb, alpha)]
    imgs[0].save(tmp_path / "t.gif", save_all=True, append_images=imgs[1:], duration=100, disposal=2, loop=0)
    got = read_frames(tmp_path / "t.gif")
    assert got.shape == (8, 16, 16, 3)
    assert (got[:, :, :4] == 0).all()
    assert np.array_equal(got[:, :, 4:], rgb[:, :, 4:])


def test_non_square_frames_are_padded_to_a_centred_square():
    frames = np.full((8, 8, 16, 3), 200, dtype=np.uint8)  # 8 high, 16 wide
    x = fit_frames(frames, 16)
    assert x.shape == (8, 3, 16, 16)
    assert (x[:, :, 4:12] == 200).all()
    assert (x[:, :, :4] == 0).all() and (x[:, :, 12:] == 0).all()


@pytest.mark.parametrize("mode, channels", [("L", "1 channel"), ("LA", "2 channels")])
def test_greyscale_refused(tmp_path, mode, channels):
    grey = np.concatenate(list(_frames(8)[..., 0]), axis=1)
    img = Image.fromarray(grey) if mode == "L" else Image.fromarray(np.stack([grey, grey], -1), "LA")
    path = tmp_path / f"grey_{mode}.png"
    img.save(path)
    with pytest.raises(DsvaeError, match=rf"grey_{mode}\.png is greyscale.*\({channels}\)"):
        read_sequence(path, image_size=16, frames=8)


def test_too_few_frames(tmp_path):
    path = _write_gif(tmp_path / "short.gif", _frames(5))
    with pytest.raises(DsvaeError, match=r"short\.gif has 5 frames; the model needs 8"):
        read_sequence(path, image_size=16, frames=8)


def test_unreadable_and_missing_files(tmp_path):
    bad = tmp_path / "bad.gif"
    bad.write_bytes(b"this is not a gif")
    with pytest.raises(DsvaeError, match=r"cannot read .*bad\.gif"):
        read_sequence(bad, image_size=16, frames=8)
    data = _write_gif(tmp_path / "ok.gif", _frames(8)).read_bytes()
    truncated = tmp_path / "truncated.gif"
    for end in (200, len(data) // 2, len(data) - 10):  # Pillow fails differently at each
        truncated.write_bytes(data[:end])
        with pytest.raises(DsvaeError, match=r"cannot read .*truncated\.gif"):
            read_sequence(truncated, image_size=16, frames=8)
    with pytest.raises(DsvaeError, match="does not exist"):
        read_sequence(tmp_path / "missing.gif", image_size=16, frames=8)


def test_video_without_a_plugin_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(video_io, "video_backend_available", lambda: False)
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"\0" * 64)
    with pytest.raises(DsvaeError, match=r"clip\.mp4.*pip install av"):
        read_sequence(path, image_size=16, frames=8)


@pytest.mark.skipif(importlib.util.find_spec("av") is None,
                    reason="writing the MP4 fixture needs PyAV (pip install av; part of the test extra)")
def test_mp4(tmp_path):
    frames = np.repeat(np.repeat(_frames(10), 4, axis=1), 4, axis=2)  # 64x64, big flat blocks survive H.264 well
    path = tmp_path / "clip.mp4"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        iio.imwrite(path, frames, plugin="pyav", codec="libx264", fps=10)
    with pytest.warns(FramesDropped):
        x = read_sequence(path, image_size=16, frames=8)
    assert x.shape == (8, 3, 16, 16)
    assert (x - _as_model_input(frames[:8], 16)).abs().mean() < 0.1  # lossy codec
