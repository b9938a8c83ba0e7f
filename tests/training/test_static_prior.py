"""The fitted static prior: the EM estimator against known mixtures, the model's draws before and after a fit,
the run write-back, the trainer's fit at the end of training, eval's record and the CLI."""

import math

import pytest
import torch

import dsvae
from dsvae.cli import main
from dsvae.data.dataset import SpritesDataset
from dsvae.errors import DsvaeError
from dsvae.models import build_model
from dsvae.training.checkpoint import load_checkpoint
from dsvae.training.polish import posterior_means
from dsvae.training.static_prior import (
    BUFFERS,
    fit_gaussian_mixture,
    fit_static_prior,
    fit_static_prior_run,
    reset_static_prior,
)
from dsvae.training.trainer import train

TINY = {"image_size": 16, "widths": (8, 16), "feature_dim": 16, "hidden_dim": 16, "prior_hidden_dim": 16,
        "f_dim": 8, "z_dim": 4}
FAST = dict(preset="tiny", limit=64, batch_size=8, sample_every=0, progress=False, log_every=5)


def _three_clusters(n=(600, 300, 100), seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0], [8.0, -8.0, 0.0, 8.0, 0.0], [-8.0, 8.0, 8.0, 0.0, -8.0]])
    scales = torch.tensor([0.5, 1.0, 0.2])
    x = torch.cat([c + s * torch.randn(k, 5, generator=g) for c, s, k in zip(centres, scales, n)])
    return x, centres, scales, torch.tensor(n, dtype=torch.float) / sum(n)


def test_em_recovers_a_known_mixture():
    x, centres, scales, weights = _three_clusters()
    mix = fit_gaussian_mixture(x, 3, seed=1)
    assert mix.converged and mix.iterations < 200
    match = torch.cdist(centres, mix.means).argmin(1)  # the fitted component nearest each true centre
    assert sorted(match.tolist()) == [0, 1, 2]
    assert torch.allclose(mix.means[match], centres, atol=0.2)
    assert torch.allclose(mix.log_weights[match].exp(), weights, atol=0.01)
    assert torch.allclose((0.5 * mix.logvars[match]).exp().mean(1), scales, rtol=0.15)
    # more than one component fits these points far better than one Gaussian
    assert mix.log_likelihood > fit_gaussian_mixture(x, 1).log_likelihood + 1.0


def test_em_refuses_bad_input():
    x = torch.randn(10, 3)
    for bad in (0, 11, 2.5, True):
        with pytest.raises(DsvaeError):
            fit_gaussian_mixture(x, bad)
    with pytest.raises(DsvaeError):
        fit_gaussian_mixture(torch.randn(10), 2)
    with pytest.raises(DsvaeError, match="NaN"):
        fit_gaussian_mixture(torch.full((10, 3), float("nan")), 2)


def test_the_paper_model_has_no_mixture_and_an_unfitted_one_draws_from_the_standard_normal():
    assert not any(k in BUFFERS for k in build_model("dsvae", TINY).state_dict())
    with pytest.raises(DsvaeError, match="static_prior_components"):
        build_model("dsvae", {**TINY, "static_prior_components": -1})
    model = build_model("dsvae", {**TINY, "static_prior_components": 5})
    assert int(model.static_prior_fitted) == 0
    torch.manual_seed(0)
    draws = model.sample_static(4000)
    assert draws.shape == (4000, 8)
    assert draws.mean().abs() < 0.05 and (draws.std() - 1).abs() < 0.05


def test_draws_follow_the_mixture():
    model = build_model("dsvae", {**TINY, "static_prior_components": 2})
    with torch.no_grad():
        model.static_prior_logits.copy_(torch.tensor([math.log(0.75), math.log(0.25)]))
        model.static_prior_mean.copy_(torch.stack([torch.full((8,), 10.0), torch.full((8,), -10.0)]))
        model.static_prior_logvar.fill_(math.log(0.01))
    torch.manual_seed(0)
    draws = model.sample_static(2000)
    high = draws.mean(1) > 0
    assert abs(float(high.float().mean()) - 0.75) < 0.04
    assert (draws[high] - 10).abs().max() < 0.6 and (draws[~high] + 10).abs().max() < 0.6
    reset_static_prior(model.state_dict())  # back to N(0, I)
    assert model.sample_static(2000).abs().mean() < 1.0


@pytest.fixture
def tiny_data(procedural_h5):
    ds = SpritesDataset(procedural_h5, "train", image_size=16, limit=64)
    yield ds
    ds.close()


def test_fitted_draws_lie_near_the_training_codes(tiny_data):
    torch.manual_seed(0)
    model = build_model("cdsvae", {**TINY, "static_prior_components": 4}).eval()
    codes, _ = posterior_means(model, tiny_data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit = fit_static_prior(model, tiny_data, seed=0)
    assert fit.components == 4 and fit.sequences == 64 and int(model.static_prior_fitted) == 64
    assert fit.log_likelihood > fit.standard_log_likelihood
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == set(BUFFERS)  # nothing but the mixture changes

    def nearest(draws):  # mean distance of each draw to its nearest training code
        return float(torch.cdist(draws, codes).min(1).values.mean())

    torch.manual_seed(1)
    fitted = model.sample_static(500)
    standard = torch.randn(500, 8)
    assert nearest(fitted) < 0.5 * nearest(standard)
    with pytest.raises(DsvaeError, match="no static prior"):
        fit_static_prior(build_model("dsvae", TINY), tiny_data)


def test_fit_run_writes_both_weight_sets_and_eval_records_it(tmp_path, procedural_h5, tiny_judge):
    from dsvae.evaluation.protocol import evaluate

    run = train(data=str(procedural_h5), out=str(tmp_path / "run"), max_steps=6, ema_decay=0.9, **FAST).run_dir
    before = load_checkpoint(run)
    done = fit_static_prior_run(run, procedural_h5, components=3, progress=False)
    assert set(done) == {"raw", "ema", "checkpoint"} and done["ema"]["components"] == 3
    after = load_checkpoint(run)
    assert after["model_config"]["static_prior_components"] == 3 and after["static_prior"]["raw"]["step"] == 6
    for key in ("model",):
        assert all(torch.equal(v, before[key][k]) for k, v in after[key].items() if k not in BUFFERS)
    # each weight set has its own encoder, hence its own mixture
    assert not torch.equal(after["model"]["static_prior_mean"], after["ema"]["weights"]["static_prior_mean"])
    loaded = dsvae.load(run)
    assert loaded.config.static_prior_components == 3 and int(loaded.static_prior_fitted) > 0
    assert torch.equal(loaded.static_prior_mean, after["ema"]["weights"]["static_prior_mean"])
    # the periodic checkpoint keeps the run as it was trained
    assert "static_prior" not in load_checkpoint(run / "checkpoints" / "step_0000006.pt")
    result = evaluate(run, tiny_judge.path, procedural_h5, repeats=1, limit=20, progress=False)
    assert result["model"]["static_prior"]["components"] == 3 and result["dynamic"]["status"] == "ok"
    assert not any("never fitted" in w for w in result["warnings"])
    # fitting again replaces the mixture (another size)
    fit_static_prior_run(run, procedural_h5, components=2, progress=False)
    assert load_checkpoint(run)["model"]["static_prior_mean"].shape == (2, 8)  # the tiny preset: f_dim 8
    # the run still resumes
    more = train(data=str(procedural_h5), out=str(run), resume=True, max_steps=8, ema_decay=0.9, **FAST)
    assert more.step == 8


def test_fit_run_keeps_a_periodic_checkpoint_and_writes_its_fit_elsewhere(tmp_path, procedural_h5):
    run = train(data=str(procedural_h5), out=str(tmp_path / "run"), max_steps=6, ema_decay=0.9, **FAST).run_dir
    step = run / "checkpoints" / "step_0000006.pt"
    before, last = step.read_bytes(), (run / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(DsvaeError, match="periodic checkpoint"):
        fit_static_prior_run(step, procedural_h5, components=2, progress=False)
    assert step.read_bytes() == before
    # to a new run folder: its last.pt, the source run's config.json beside it; the sources stay as they were
    copy = tmp_path / "fitted"
    done = fit_static_prior_run(step, procedural_h5, components=2, out=copy, progress=False)
    assert done["checkpoint"] == str(copy / "checkpoints" / "last.pt") and done["ema"]["components"] == 2
    assert (copy / "config.json").read_text() == (run / "config.json").read_text()
    assert step.read_bytes() == before and (run / "checkpoints" / "last.pt").read_bytes() == last
    fitted = load_checkpoint(copy)
    assert fitted["model_config"]["static_prior_components"] == 2 and int(fitted["model"]["static_prior_fitted"]) > 0
    source = load_checkpoint(step)
    assert all(torch.equal(v, source["model"][k]) for k, v in fitted["model"].items() if k not in BUFFERS)
    assert dsvae.load(copy).config.static_prior_components == 2
    # to a checkpoint file; an existing target is refused before any work
    file = tmp_path / "alone.pt"
    fit_static_prior_run(run, procedural_h5, components=3, out=file, progress=False)
    assert load_checkpoint(file)["static_prior"]["raw"]["components"] == 3 and "static_prior" not in load_checkpoint(run)
    for target in (copy, file, run):
        with pytest.raises(DsvaeError, match="already"):
            fit_static_prior_run(step, procedural_h5, components=2, out=target, progress=False)
    assert load_checkpoint(file)["static_prior"]["raw"]["components"] == 3


def test_fit_run_refuses_models_without_a_static_prior(tmp_path, procedural_h5):
    run = train(model="vae", data=str(procedural_h5), out=str(tmp_path / "vae"), max_steps=2, **FAST).run_dir
    with pytest.raises(DsvaeError, match="no static prior"):
        fit_static_prior_run(run, procedural_h5, components=2, progress=False)
    with pytest.raises(DsvaeError, match="does not exist"):
        fit_static_prior_run(tmp_path / "missing", procedural_h5, progress=False)


def test_trainer_fits_at_the_end_and_resets_while_training_on(tmp_path, procedural_h5, tiny_judge):
    from dsvae.evaluation.protocol import evaluate

    kw = dict(data=str(procedural_h5), out=str(tmp_path / "run"), ema_decay=0.9,
              model_config={"static_prior_components": 3}, **FAST)
    result = train(max_steps=6, **kw)
    assert set(result.static_prior) == {"raw", "ema"} and result.static_prior["raw"]["step"] == 6
    ckpt = load_checkpoint(result.run_dir)
    assert ckpt["static_prior"]["ema"]["sequences"] == 64 and int(ckpt["ema"]["weights"]["static_prior_fitted"]) == 64
    periodic = load_checkpoint(result.run_dir / "checkpoints" / "step_0000006.pt")
    assert "static_prior" not in periodic and int(periodic["model"]["static_prior_fitted"]) == 0
    unfitted = evaluate(result.run_dir / "checkpoints" / "step_0000006.pt", tiny_judge.path, procedural_h5,
                        repeats=1, limit=20, progress=False)
    assert any("never fitted" in w for w in unfitted["warnings"])
    # resumed for more steps: the mixture is N(0, I) while training, then refitted at the end
    more = train(resume=True, max_steps=8, keep_checkpoints=5, **kw)
    assert more.static_prior["ema"]["step"] == 8
    assert int(load_checkpoint(result.run_dir / "checkpoints" / "step_0000008.pt")["model"]["static_prior_fitted"]) == 0
    assert int(load_checkpoint(result.run_dir)["model"]["static_prior_fitted"]) == 64


def test_cli_fit_prior(tmp_path, procedural_h5, capsys):
    run = train(data=str(procedural_h5), out=str(tmp_path / "run"), max_steps=4, ema_decay=0.9, **FAST).run_dir
    assert main(["fit-prior", "--run", str(run), "--data", str(procedural_h5), "--components", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "weight average: 2 components fitted to 9000 codes" in out and "trained weights: 2 components" in out
    assert main(["fit-prior", "--run", str(run), "--data", str(procedural_h5), "--components", "0", "--quiet"]) == 2
    assert "static_prior_components" in capsys.readouterr().err
    assert main(["fit-prior", "--run", str(tmp_path / "missing"), "--data", str(procedural_h5), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
    step = run / "checkpoints" / "step_0000004.pt"
    assert main(["fit-prior", "--run", str(step), "--data", str(procedural_h5), "--components", "2", "--quiet"]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["fit-prior", "--run", str(step), "--data", str(procedural_h5), "--components", "2",
                 "--out", str(tmp_path / "copy"), "--quiet"]) == 0
    assert f"written to {tmp_path / 'copy' / 'checkpoints' / 'last.pt'}" in capsys.readouterr().out


def test_cli_train_fits_the_static_prior_at_the_end(tmp_path, procedural_h5, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "cdsvae", "--preset", "tiny", "--data", str(procedural_h5), "--out", str(out),
                 "--max-steps", "3", "--limit", "32", "--batch-size", "8", "--sample-every", "0", "--ema-decay", "0.9",
                 "--set", "static_prior_components=2", "--quiet"]) == 0
    assert "; static prior fitted (2 components, trained weights and weight average)" in capsys.readouterr().out
    assert set(load_checkpoint(out)["static_prior"]) == {"raw", "ema"}
