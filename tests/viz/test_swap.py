import contextlib
import re
from dataclasses import dataclass

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import dsvae
from dsvae.cli import main
from dsvae.data.dataset import SpritesDataset
from dsvae.errors import DsvaeError, NotApplicable
from dsvae.models.base import ModelConfig, Posterior, SequenceModel
from dsvae.training.checkpoint import save_checkpoint
from dsvae.training.trainer import train
from dsvae.viz.gif import make_grid_frames, make_strip_image
from dsvae.viz.swap import (
    SWAP_KEYS,
    interpolate,
    interpolate_codes,
    sample,
    sample_codes,
    swap,
    swap_codes,
)
from dsvae.viz.video_io import FramesDropped

SIZE, T, PAD = 16, 8, 2  # the tiny preset's frames, the data set's length, the writer's default padding
A, B = 3, 40


@contextlib.contextmanager
def one_thread():
    """Tiny models run fastest on one thread: on a busy machine, OpenMP's thread sync makes a tiny LSTM
    call take ~0.3 s with 2 threads instead of ~0.2 ms with one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module", autouse=True)
def _single_threaded():
    with one_thread():
        yield


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, procedural_h5):
    """One tiny trained DSVAE run folder for every test here."""
    out = tmp_path_factory.mktemp("swap") / "run"
    with one_thread():
        train(data=str(procedural_h5), out=str(out), preset="tiny", max_steps=20, limit=100, batch_size=8,
              sample_every=0, progress=False)
    return out


@pytest.fixture(scope="session")
def model(tiny_run):
    return dsvae.load(tiny_run)


@pytest.fixture(scope="session")
def videos(procedural_h5):
    """Test-split sequences A and B (and a few more) at the model's size, float (n, T, 3, 16, 16)."""
    ds = SpritesDataset(procedural_h5, "test", image_size=SIZE, indices=[A, B, 7, 9])
    return ds.batch([0, 1, 2, 3])["x"]


def read_gif(path):
    with Image.open(path) as im:
        info = dict(im.info)
        frames = []
        for k in range(im.n_frames):
            im.seek(k)
            frames.append(np.asarray(im.convert("RGB")))
    return np.stack(frames), info


def read_png(path):
    return np.asarray(Image.open(path).convert("RGB"))


def grid_height(rows, scale, header=0):
    return header + PAD + rows * (SIZE * scale + PAD)


def cells_width(cols, scale):
    return PAD + cols * (SIZE * scale + PAD)


def strip_cells(png, scale):
    """The PNG strip without its label column (the writer puts cells at the right)."""
    return png[:, png.shape[1] - (PAD + T * (SIZE * scale + PAD)):]


def as_rows(*seqs):
    return [[s] for s in seqs]


def write_video_gif(path, x):
    """Write float (T, 3, H, W) as a GIF (sprites have few colours: exact through the palette)."""
    frames = (x.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
    iio.imwrite(path, frames, extension=".gif", is_batch=True, duration=100, loop=0)
    return path


# ----------------------------------------------------------------------------------
# tensors
# ----------------------------------------------------------------------------------
def test_swap_codes_are_exact_decodes_of_posterior_means(model, videos):
    xa, xb = videos[:2], videos[2:4]  # two pairs at once: (3, 7) and (40, 9)
    res = swap_codes(model, xa, xb)
    with torch.no_grad():  # as the library runs the model (autograd may pick other LSTM kernels)
        pa, pb = model.encode(xa), model.encode(xb)
        assert torch.equal(res["f_a"], pa.f_mean) and torch.equal(res["z_b"], pb.z_mean)
        assert torch.equal(res["a_static_b_dynamics"], model.decode(pa.f_mean, pb.z_mean))
        assert torch.equal(res["b_static_a_dynamics"], model.decode(pb.f_mean, pa.z_mean))
        assert torch.equal(res["recon_a"], model.decode(pa.f_mean, pa.z_mean))
        assert torch.equal(res["recon_b"], model.decode(pb.f_mean, pb.z_mean))
    assert torch.equal(res["a"], xa) and torch.equal(res["b"], xb)
    swapped = res["a_static_b_dynamics"]
    assert swapped.shape == xa.shape
    assert not torch.equal(swapped, res["recon_a"]) and not torch.equal(swapped, res["recon_b"])
    assert not torch.equal(res["b_static_a_dynamics"], res["recon_b"])


def test_swap_codes_restore_training_mode(model, videos):
    model.train()
    try:
        swap_codes(model, videos[:1], videos[1:2])
        assert model.training
    finally:
        model.eval()
    eval_res = swap_codes(model, videos[:1], videos[1:2])
    assert torch.equal(eval_res["recon_a"], swap_codes(model, videos[:1], videos[1:2])["recon_a"])


def test_sample_codes_static_fixed(model, videos):
    state = torch.get_rng_state()
    res = sample_codes(model, videos[0], fix="static", n=3, seed=5)
    assert torch.equal(torch.get_rng_state(), state)  # the global random state is untouched
    with torch.no_grad():
        post = model.encode(videos[:1])
    assert res["x"].shape == (3, T, 3, SIZE, SIZE)
    assert all(torch.equal(f, post.f_mean[0]) for f in res["f"])  # the same static code
    assert not torch.equal(res["z"][0], res["z"][1]) and not torch.equal(res["z"][1], res["z"][2])
    with torch.no_grad():
        for k in range(3):
            assert torch.equal(res["x"][k:k + 1], model.decode(post.f_mean, res["z"][k:k + 1]))
    assert not torch.equal(res["x"][0], res["x"][1])
    again = sample_codes(model, videos[0], fix="static", n=3, seed=5)
    assert torch.equal(again["z"], res["z"])  # seeded
    assert not torch.equal(sample_codes(model, videos[0], fix="static", n=3, seed=6)["z"], res["z"])
    samples = sample_codes(model, videos[0], fix="static", n=3, seed=5, prior_means=False)
    assert not torch.equal(samples["z"], res["z"])


def test_sample_codes_dynamic_fixed(model, videos):
    res = sample_codes(model, videos[0], fix="dynamic", n=3, seed=0)
    with torch.no_grad():
        post = model.encode(videos[:1])
    assert all(torch.equal(z, post.z_mean[0]) for z in res["z"])  # the same dynamics
    assert not torch.equal(res["f"][0], res["f"][1])
    with torch.no_grad():
        assert torch.equal(res["x"][2:3], model.decode(res["f"][2:3], post.z_mean))


@pytest.mark.parametrize("part", ["static", "dynamic"])
def test_interpolation_ends_are_the_codes_of_a_and_b(model, videos, part):
    xa, xb = videos[0], videos[1]
    res = interpolate_codes(model, xa, xb, steps=4, part=part)
    assert res["weights"].tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])
    with torch.no_grad():
        pa, pb = model.encode(xa[None]), model.encode(xb[None])
        first = model.decode(pa.f_mean, pa.z_mean)
        last = model.decode(pb.f_mean, pa.z_mean) if part == "static" else model.decode(pa.f_mean, pb.z_mean)
    assert torch.equal(res["x"][:1], first) and torch.equal(res["x"][-1:], last)
    kept, walked = ("z", "f") if part == "static" else ("f", "z")
    assert all(torch.equal(c, res[kept][0]) for c in res[kept])
    assert not torch.equal(res[walked][1], res[walked][0]) and not torch.equal(res[walked][1], res[walked][-1])


# ----------------------------------------------------------------------------------
# GIFs
# ----------------------------------------------------------------------------------
def test_swap_gif_layout_and_content(tmp_path, tiny_run, procedural_h5, model, videos):
    out = swap(tiny_run, procedural_h5, pair=(A, B), out=tmp_path / "s.gif", png=True, scale=2, duration_ms=90)
    assert out == tmp_path / "s.gif"
    frames, info = read_gif(out)
    assert frames.shape[0] == T and info["loop"] == 0 and info["duration"] == 90
    with Image.open(out) as im:
        assert im.n_frames == T
    assert frames.shape[1] == grid_height(6, scale=2)
    label_width = frames.shape[2] - cells_width(1, scale=2)
    assert label_width > 20 and (frames[:, :, :label_width] == 255).all(-1).any()  # a label column with text
    res = swap_codes(model, videos[:1], videos[1:2])
    rows = as_rows(*(res[key][0] for key in SWAP_KEYS))
    # the lossless PNG strip holds exactly the expected pixels, row by row in SWAP_KEYS order
    png = read_png(tmp_path / "s.png")
    assert np.array_equal(strip_cells(png, 2), make_strip_image(rows, scale=2))
    # the GIF's cells match up to its palette
    cells = frames[:, :, label_width:].astype(int)
    assert np.abs(cells - make_grid_frames(rows, scale=2)).mean() < 3


def test_swap_random_pairs(tmp_path, tiny_run, procedural_h5):
    out = swap(tiny_run, procedural_h5, random_pairs=3, seed=1, out=tmp_path / "r.gif", png=True, scale=1)
    frames, _ = read_gif(out)
    assert frames.shape[0] == T
    header = frames.shape[1] - grid_height(3, scale=1)
    assert header > 0  # column labels
    assert frames.shape[2] > cells_width(6, scale=1)
    assert read_png(tmp_path / "r.png").shape[0] == grid_height(3 * 6, scale=1)  # one strip line per sequence
    same = swap(tiny_run, procedural_h5, random_pairs=3, seed=1, out=tmp_path / "r2.gif", scale=1)
    other = swap(tiny_run, procedural_h5, random_pairs=3, seed=2, out=tmp_path / "r3.gif", scale=1)
    assert same.read_bytes() == out.read_bytes() and other.read_bytes() != out.read_bytes()


def test_swap_own_files_match_data_set_indices(tmp_path, tiny_run, procedural_h5):
    # A as a GIF at the stored 64x64 size: read back and shrunk exactly like the data set loader does
    big = SpritesDataset(procedural_h5, "test", indices=[A]).batch([0])["x"][0]
    gif = write_video_gif(tmp_path / "a.gif", big)
    by_index = swap(tiny_run, procedural_h5, pair=(A, B), out=tmp_path / "i.gif", png=True)
    with_file = swap(tiny_run, procedural_h5, pair=B, a=gif, out=tmp_path / "f.gif", png=True)
    ref, got = read_png(by_index.with_suffix(".png")), read_png(with_file.with_suffix(".png"))
    assert np.array_equal(strip_cells(ref, 4), strip_cells(got, 4))
    # both files, no data set: the default 8 frames
    gif_b = write_video_gif(tmp_path / "b.gif", SpritesDataset(procedural_h5, "test", indices=[B]).batch([0])["x"][0])
    both = swap(tiny_run, a=gif, b=gif_b, out=tmp_path / "both.gif", png=True)
    assert np.array_equal(strip_cells(read_png(both.with_suffix(".png")), 4), strip_cells(ref, 4))


def test_swap_frames_option_and_long_inputs(tmp_path, tiny_run, procedural_h5, videos):
    out = swap(tiny_run, procedural_h5, pair=(A, B), frames=4, out=tmp_path / "four.gif")
    assert read_gif(out)[0].shape[0] == 4
    long = torch.cat([videos[0], videos[0][:3]])  # 11 frames
    gif = write_video_gif(tmp_path / "long.gif", long)
    with pytest.warns(FramesDropped, match="using the first 8"):
        out = swap(tiny_run, procedural_h5, pair=B, a=gif, out=tmp_path / "long_swap.gif")
    assert read_gif(out)[0].shape[0] == T


@pytest.mark.parametrize("fix", ["static", "dynamic"])
def test_sample_gif(tmp_path, tiny_run, procedural_h5, fix):
    out = sample(tiny_run, procedural_h5, fix=fix, index=A, n=3, out=tmp_path / "s.gif", scale=1, duration_ms=70)
    frames, info = read_gif(out)
    assert frames.shape[:2] == (T, grid_height(2 + 3, scale=1)) and info["duration"] == 70 and info["loop"] == 0


@pytest.mark.parametrize("part", ["static", "dynamic"])
def test_interpolate_gif(tmp_path, tiny_run, procedural_h5, model, videos, part):
    out = interpolate(tiny_run, procedural_h5, pair=(A, B), steps=4, part=part, out=tmp_path / "i.gif", png=True,
                      scale=1)
    frames, _ = read_gif(out)
    assert frames.shape[:2] == (T, grid_height(2 + 4, scale=1))
    res = interpolate_codes(model, videos[0], videos[1], steps=4, part=part)
    rows = as_rows(videos[0], videos[1], *res["x"])
    assert np.array_equal(strip_cells(read_png(tmp_path / "i.png"), 1), make_strip_image(rows, scale=1))


# ----------------------------------------------------------------------------------
# any model of the protocol
# ----------------------------------------------------------------------------------
@dataclass
class ToyConfig(ModelConfig):
    image_size: int = SIZE
    code_dim: int = 6


class NaiveToy(SequenceModel):
    """A linear frame autoencoder with the naive sequence view (f = time mean, z = residuals) and no prior."""

    model_type = "toy"
    config_class = ToyConfig

    def __init__(self, config=None, **kwargs):
        super().__init__(config, **kwargs)
        pixels = 3 * SIZE * SIZE
        self.enc = nn.Linear(pixels, self.config.code_dim)
        self.dec = nn.Linear(self.config.code_dim, pixels)

    def encode(self, x):
        c = self.enc(x.flatten(2))
        f = c.mean(1)
        z = c - f[:, None]
        return Posterior(f, None, f, z, None, z)

    def decode(self, f, z):
        b, t, _ = z.shape
        return torch.sigmoid(self.dec(f[:, None] + z)).reshape(b, t, 3, SIZE, SIZE)


def test_any_protocol_model_swaps_and_interpolates(tmp_path, procedural_h5, videos):
    torch.manual_seed(0)
    toy = NaiveToy().eval()
    res = swap_codes(toy, videos[:1], videos[1:2])
    with torch.no_grad():
        pa, pb = toy.encode(videos[:1]), toy.encode(videos[1:2])
        assert torch.equal(res["a_static_b_dynamics"], toy.decode(pa.f_mean, pb.z_mean))
    assert swap(toy, procedural_h5, pair=(A, B), out=tmp_path / "t.gif").exists()
    assert interpolate(toy, procedural_h5, pair=(A, B), steps=3, out=tmp_path / "ti.gif").exists()
    with pytest.raises(NotApplicable, match="toy has no prior over dynamics"):
        sample(toy, procedural_h5, fix="static", index=A, out=tmp_path / "ts.gif")
    with pytest.raises(NotApplicable, match="toy has no prior over static codes"):
        sample(toy, procedural_h5, fix="dynamic", index=A, out=tmp_path / "ts.gif")
    assert not (tmp_path / "ts.gif").exists()


def test_cli_sample_without_a_sequence_prior(tmp_path, procedural_h5, capsys):
    from dsvae.models import build_model
    from dsvae.models.presets import get_preset

    try:
        ae = build_model("ae", get_preset("ae", "tiny")[0])
    except DsvaeError as exc:
        pytest.skip(f"the ae baseline is not available: {exc}")
    save_checkpoint(tmp_path / "ae.pt", {"model_type": "ae", "model_config": ae.config.to_dict(),
                                          "model": ae.state_dict()})
    out = tmp_path / "ae.gif"
    rc = main(["sample", "--run", str(tmp_path / "ae.pt"), "--data", str(procedural_h5), "--index", "3",
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "no prior over dynamics" in err
    assert not out.exists()
    assert main(["swap", "--run", str(tmp_path / "ae.pt"), "--data", str(procedural_h5), "--pair", "3", "40",
                 "--out", str(out)]) == 0
    assert out.exists()


# ----------------------------------------------------------------------------------
# bad input: one-line errors, nothing written
# ----------------------------------------------------------------------------------
def _bad_inputs(tmp_path, tiny_run, data):
    """name -> (library call, CLI argv, message pattern, output path that must not appear)."""
    out = tmp_path / "out.gif"
    garbage = tmp_path / "garbage.gif"
    garbage.write_bytes(b"not a gif at all")
    grey = tmp_path / "grey.png"
    Image.fromarray(np.zeros((SIZE, T * SIZE), dtype=np.uint8)).save(grey)
    short = tmp_path / "short.gif"
    iio.imwrite(short, (np.arange(5)[:, None, None, None] * 40 * np.ones((5, 8, 8, 3))).astype(np.uint8),
                extension=".gif", is_batch=True, duration=100, loop=0)
    no_ckpt = tmp_path / "empty_run"
    no_ckpt.mkdir(exist_ok=True)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    unwritable = blocker / "out.gif"  # its folder is a file
    existing = tmp_path / "existing.gif"
    existing.write_bytes(b"keep me")
    png_exists = tmp_path / "pngexists.png"
    png_exists.write_bytes(b"keep me")
    run, d = str(tiny_run), str(data)
    base = ["swap", "--run", run, "--data", d, "--pair"]
    return {
        "unreadable": (dict(run=run, data=d, pair=B, a=garbage, out=out), base + [str(B), "--a", str(garbage),
                       "--out", str(out)], r"cannot read .*garbage\.gif", out),
        "greyscale": (dict(run=run, data=d, pair=A, b=grey, out=out), base + [str(A), "--b", str(grey), "--out",
                      str(out)], r"grey\.png is greyscale \(1 channel\)", out),
        "too_few_frames": (dict(run=run, data=d, pair=B, a=short, out=out), base + [str(B), "--a", str(short),
                           "--out", str(out)], r"short\.gif has 5 frames; the model needs 8", out),
        "no_checkpoint": (dict(run=no_ckpt, data=d, pair=(A, B), out=out),
                          ["swap", "--run", str(no_ckpt), "--data", d, "--pair", "3", "40", "--out", str(out)],
                          "has no checkpoint", out),
        "index_out_of_range": (dict(run=run, data=d, pair=(A, 99999), out=out), base + ["3", "99999", "--out",
                               str(out)], r"index 99999 out of range: split 'test' .* has 2664 sequences", out),
        "unwritable_output": (dict(run=run, data=d, pair=(A, B), out=unwritable), base + ["3", "40", "--out",
                              str(unwritable)], "cannot (write|create folder)", unwritable),
        "existing_output": (dict(run=run, data=d, pair=(A, B), out=existing), base + ["3", "40", "--out",
                            str(existing)], "already exists", None),
        "existing_png": (dict(run=run, data=d, pair=(A, B), out=tmp_path / "pngexists.gif", png=True),
                         base + ["3", "40", "--png", "--out", str(tmp_path / "pngexists.gif")], "already exists",
                         tmp_path / "pngexists.gif"),
    }


BAD = ["unreadable", "greyscale", "too_few_frames", "no_checkpoint", "index_out_of_range", "unwritable_output",
       "existing_output", "existing_png"]


def _assert_nothing_written(tmp_path, not_there):
    if not_there is not None:
        assert not not_there.exists()
    assert (tmp_path / "existing.gif").read_bytes() == b"keep me"
    assert (tmp_path / "pngexists.png").read_bytes() == b"keep me"
    assert not list(tmp_path.glob(".*.partial"))


@pytest.mark.parametrize("name", BAD)
def test_bad_input_library(tmp_path, tiny_run, procedural_h5, name):
    kwargs, _, pattern, not_there = _bad_inputs(tmp_path, tiny_run, procedural_h5)[name]
    with pytest.raises(DsvaeError, match=pattern):
        swap(**kwargs)
    _assert_nothing_written(tmp_path, not_there)


@pytest.mark.parametrize("name", BAD)
def test_bad_input_cli(tmp_path, tiny_run, procedural_h5, capsys, name):
    _, argv, pattern, not_there = _bad_inputs(tmp_path, tiny_run, procedural_h5)[name]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dsvae: error: ")
    assert re.search(pattern, lines[0])
    _assert_nothing_written(tmp_path, not_there)


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(pair=(A, B), random_pairs=2), "--random draws its own pairs"),
    (dict(pair=None), "say which sequences to swap"),
    (dict(pair=(A, B, 5)), "two indices"),
    (dict(pair=(A, B), scale=0), "scale must be"),
    (dict(pair=(A, B), duration_ms=0), "duration"),
    (dict(pair=(A, B), frames=9), "have 8 frames; cannot use 9"),
    (dict(pair=(A, B), split="valid"), "no 'valid' split"),
])
def test_bad_options(tmp_path, tiny_run, procedural_h5, kwargs, pattern):
    with pytest.raises(DsvaeError, match=pattern):
        swap(tiny_run, procedural_h5, out=tmp_path / "o.gif", **kwargs)
    assert not (tmp_path / "o.gif").exists()


def test_index_needs_a_data_set(tmp_path, tiny_run, videos):
    gif = write_video_gif(tmp_path / "a.gif", videos[0])
    with pytest.raises(DsvaeError, match="need a data set"):
        swap(tiny_run, pair=B, a=gif, out=tmp_path / "o.gif")
    with pytest.raises(DsvaeError, match="need a data set"):
        sample(tiny_run, index=A, out=tmp_path / "o.gif")
    with pytest.raises(DsvaeError, match="number of interpolation steps must be an integer >= 2"):
        interpolate(tiny_run, pair=(A, B), steps=1, out=tmp_path / "o.gif")
    assert not (tmp_path / "o.gif").exists()


# ----------------------------------------------------------------------------------
# CLI smoke tests
# ----------------------------------------------------------------------------------
def test_cli_every_command(tmp_path, tiny_run, procedural_h5, capsys, videos):
    run, data = str(tiny_run), str(procedural_h5)
    gif_a = write_video_gif(tmp_path / "mine_a.gif", videos[0])
    strip = tmp_path / "mine_b.png"  # B as a PNG strip
    Image.fromarray(np.concatenate(list((videos[1].permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)),
                                   axis=1)).save(strip)
    calls = {
        "pair": ["swap", "--run", run, "--data", data, "--pair", "3", "40", "--png"],
        "random": ["swap", "--run", run, "--data", data, "--random", "2", "--seed", "4"],
        "files": ["swap", "--run", run, "--a", str(gif_a), "--b", str(strip), "--png"],
        "sample_static": ["sample", "--run", run, "--data", data, "--fix", "static", "--index", "3", "--n", "2"],
        "sample_dynamic": ["sample", "--run", run, "--data", data, "--fix", "dynamic", "--index", "3", "--n", "2",
                           "--png"],
        "sample_input": ["sample", "--run", run, "--input", str(gif_a), "--n", "2", "--prior-samples"],
        "interp_static": ["interpolate", "--run", run, "--data", data, "--pair", "3", "40", "--steps", "3"],
        "interp_dynamic": ["interpolate", "--run", run, "--data", data, "--pair", "3", "40", "--steps", "3",
                           "--part", "dynamic", "--png"],
    }
    for name, argv in calls.items():
        out = tmp_path / f"{name}.gif"
        assert main(argv + ["--out", str(out), "--scale", "1", "--duration", "80"]) == 0, name
        captured = capsys.readouterr()
        png = "--png" in argv
        expected = f"wrote {out}\n" + (f"wrote {out.with_suffix('.png')}\n" if png else "")
        assert captured.out == expected and captured.err == ""
        frames, info = read_gif(out)
        assert frames.shape[0] == T and info["duration"] == 80, name
        assert out.with_suffix(".png").exists() == png


def test_cli_notes_dropped_frames(tmp_path, tiny_run, procedural_h5, capsys, videos):
    gif = write_video_gif(tmp_path / "long.gif", torch.cat([videos[0], videos[0][:2]]))
    out = tmp_path / "o.gif"
    assert main(["swap", "--run", str(tiny_run), "--data", str(procedural_h5), "--pair", "40", "--a", str(gif),
                 "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.err == f"dsvae: note: {gif} has 10 frames; using the first 8\n"
    assert captured.out == f"wrote {out}\n"
