"""`baseline_outputs` and `dsvae baseline-outputs`: the figures and numbers of the image-level baselines."""

import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from dsvae.cli import main
from dsvae.errors import DsvaeError
from dsvae.models import build_model
from dsvae.models.presets import get_preset
from dsvae.training.trainer import train
from dsvae.viz.baselines import baseline_outputs, interpolate_codes

COMMON = {"reconstructions.png", "interpolation.gif", "interpolation.png", "summary.json"}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(name, **overrides):
    torch.manual_seed(0)
    return build_model(name, {**get_preset(name, "tiny")[0], **overrides})


@pytest.mark.parametrize("name, extra", [
    ("ae", set()),
    ("vae", {"samples.png"}),
    ("cvae", {"samples.png", "class_grid.png"}),
    ("aae", {"samples.png"}),
    ("aae-sup", {"samples.png", "style_grid.png"}),
    ("aae-semi", {"samples.png", "style_grid.png"}),
])
def test_outputs_of_every_baseline(tmp_path, procedural_h5, name, extra):
    model = tiny(name)
    paths = baseline_outputs(model, procedural_h5, tmp_path / "out", n=4, steps=5, pairs=3, limit=18, scale=2)
    assert set(paths) == COMMON | extra
    assert {p.name for p in (tmp_path / "out").iterdir()} == COMMON | extra
    assert model.training  # the caller's mode is restored
    recon = Image.open(paths["reconstructions.png"])
    assert recon.width > 4 * 16 * 2 and recon.height > 2 * 16 * 2
    # one GIF frame per interpolation step (identical ones merge: an untrained model barely changes), 3 rows;
    # the strip lays the 5 steps of each of the 3 x 3 cells out left to right
    gif = iio.imread(paths["interpolation.gif"], index=None)
    assert 1 <= gif.shape[0] <= 5 and gif.shape[1] > 3 * 16 * 2
    strip = Image.open(paths["interpolation.png"])
    assert strip.width > 5 * 16 * 2 and strip.height > 9 * 16 * 2
    summary = json.loads(paths["summary.json"].read_text())
    assert summary["model_type"] == name and summary["frames"] == 18 * 8
    assert 0 < summary["recon_mse"] < 1
    if model.label_classes:
        assert summary["label"] == "top" and 0 <= summary["classification_error"] <= 1
    else:
        assert "classification_error" not in summary
    if "class_grid.png" in extra:  # one row per class
        assert Image.open(paths["class_grid.png"]).height > 6 * 16 * 2
    if "style_grid.png" in extra:  # a header row of class names + 4 rows of styles, 6 class columns
        img = Image.open(paths["style_grid.png"])
        assert img.width > 6 * 16 * 2 and img.height > 4 * 16 * 2


def test_interpolation_runs_between_the_two_codes():
    model = tiny("aae").eval()
    a, b = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    path = interpolate_codes(model, a, b, 6)
    assert path.shape == (2, 6, 3, 16, 16)
    with torch.no_grad():
        ends = model.decode_frames(model.encode_frames(torch.stack([a, b], 1)).mean)
    assert torch.allclose(path[:, 0], ends[:, 0], atol=1e-5) and torch.allclose(path[:, -1], ends[:, 1], atol=1e-5)
    assert not torch.allclose(path[:, 2], path[:, 3])


def test_cli_outputs_with_latent_grid(tmp_path, procedural_h5, capsys):
    run = train(data=str(procedural_h5), out=str(tmp_path / "run"), model="aae", preset="tiny", limit=32,
                batch_size=8, max_steps=3, sample_every=0, progress=False,
                model_config={"z_dim": 2, "prior_std": 5.0}).run_dir
    out = tmp_path / "figs"
    args = ["baseline-outputs", "--run", str(run), "--data", str(procedural_h5), "--out", str(out), "--grid",
            "--grid-size", "4", "--grid-range", "-8", "8", "-n", "3", "--limit", "9", "--steps", "4"]
    assert main(args) == 0
    assert "recon_mse" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == COMMON | {"samples.png", "latent_grid.png"}
    grid = Image.open(out / "latent_grid.png")
    assert grid.width > 4 * 16 * 2 and grid.height > 4 * 16 * 2
    # existing outputs are refused unless --overwrite, before anything is written
    before = (out / "summary.json").stat().st_mtime_ns
    assert main(args) == 2 and "already exists" in capsys.readouterr().err
    assert (out / "summary.json").stat().st_mtime_ns == before
    assert main(args + ["--overwrite"]) == 0

    # the same grid from `dsvae sample --grid`: identical pixels
    png = tmp_path / "grid.png"
    sample = ["sample", "--run", str(run), "--grid", "--grid-size", "4", "--grid-range", "-8", "8", "--out", str(png)]
    assert main(sample) == 0 and str(png) in capsys.readouterr().out
    assert np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(out / "latent_grid.png")))
    assert main(sample[:-1] + [str(tmp_path / "grid.gif")]) == 2 and ".png" in capsys.readouterr().err
    dsvae_run = train(data=str(procedural_h5), out=str(tmp_path / "dsvae"), preset="tiny", limit=16, batch_size=8,
                      max_steps=1, sample_every=0, progress=False).run_dir
    assert main(["sample", "--run", str(dsvae_run), "--grid", "--out", str(tmp_path / "g2.png")]) == 2
    assert "2-D latent" in capsys.readouterr().err and not (tmp_path / "g2.png").exists()


def test_errors(tmp_path, procedural_h5, capsys):
    with pytest.raises(DsvaeError, match="2-D latent"):
        baseline_outputs(tiny("aae"), procedural_h5, tmp_path / "a", grid=True)
    with pytest.raises(DsvaeError, match="not 'dsvae'"):
        baseline_outputs(tiny("dsvae"), procedural_h5, tmp_path / "b")
    with pytest.raises(DsvaeError, match="n must be a positive integer"):
        baseline_outputs(tiny("ae"), procedural_h5, tmp_path / "c", n=0)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    rc = main(["baseline-outputs", "--run", str(tmp_path / "missing"), "--data", str(procedural_h5),
               "--out", str(tmp_path / "d")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
