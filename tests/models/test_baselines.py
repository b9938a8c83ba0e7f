"""The image-level baselines: frame API, naive sequence view, losses, checkpoints, CLI."""

import json

import pytest
import torch

import dsvae
from dsvae.cli import main
from dsvae.errors import DsvaeError, NotApplicable
from dsvae.models import build_model
from dsvae.models.baselines import FrameCode, FrameModel, naive_posterior
from dsvae.models.presets import get_preset
from dsvae.training.trainer import train

BASELINES = ["ae", "vae", "cvae", "aae", "aae-sup", "aae-semi"]
DETERMINISTIC = ["ae", "aae", "aae-sup", "aae-semi"]
FAST = dict(preset="tiny", batch_size=8, sample_every=0, progress=False, log_every=5, epochs=100)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train fastest single-threaded (and the test machine's cores are shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(name, **overrides):
    torch.manual_seed(0)
    return build_model(name, {**get_preset(name, "tiny")[0], **overrides})


def labelled_batch(b=3, t=4, size=16):
    g = torch.Generator().manual_seed(1)
    return {
        "x": torch.rand(b, t, 3, size, size, generator=g),
        "index": torch.arange(b),
        "action": torch.randint(0, 9, (b,), generator=g),
        "attributes": torch.randint(0, 6, (b, 4), generator=g),
    }


@pytest.mark.parametrize("name", BASELINES)
def test_shapes_and_losses(name):
    model = tiny(name)
    assert isinstance(model, FrameModel) and not model.has_sequence_prior
    d = model.code_dim
    batch = labelled_batch()
    x = batch["x"]
    post = model.encode(x)
    assert post.f_mean.shape == post.f.shape == (3, d)
    assert post.z_mean.shape == post.z.shape == (3, 4, d)
    out = model.decode(post.f, post.z)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    # the frame API takes any leading shape
    fc = model.encode_frames(x[0])
    assert isinstance(fc, FrameCode) and fc.code.shape == fc.mean.shape == (4, d)
    assert model.decode_frames(fc.code).shape == (4, 3, 16, 16)
    if name == "ae":
        with pytest.raises(NotApplicable):
            model.sample(2)
    else:
        assert model.sample(5).shape == (5, 3, 16, 16)
    for phase in model.phases:
        terms = model(batch, phase=phase)
        assert "loss" in terms and all(t.ndim == 0 and torch.isfinite(t) for t in terms.values())
    if not model.uses_labels:  # a bare tensor gives the (reconstruction) terms, as for the DSVAE
        assert torch.isfinite(model(x)["loss"]) and "recon" in model(x)


@pytest.mark.parametrize("name", BASELINES)
def test_no_sequence_prior(name):
    model = tiny(name)
    with pytest.raises(NotApplicable):
        model.sample_static(2)
    with pytest.raises(NotApplicable):
        model.sample_dynamics(2, 8)


@pytest.mark.parametrize("name", BASELINES)
def test_naive_view(name):
    model = tiny(name).eval()
    x = labelled_batch()["x"]
    with torch.no_grad():
        post = model.encode(x)
        codes = model.encode_frames(x).mean
        # f is the time mean of the frame codes, z_t the residuals
        assert torch.allclose(post.f_mean, codes.mean(1), atol=1e-6)
        assert torch.allclose(post.z_mean.sum(1), torch.zeros_like(post.f_mean), atol=1e-5)
        assert torch.allclose(model.decode(post.f_mean, post.z_mean), model.decode_frames(codes), atol=1e-5)
        if name in DETERMINISTIC:
            assert post.f_logvar is None and post.z_logvar is None
            assert torch.equal(post.f, post.f_mean)
            assert torch.allclose(model.decode(post.f, post.z), model.decode_frames(model.encode_frames(x).code),
                                  atol=1e-5)
        # swapping f: A's mean code + B's residuals changes the output
        swapped = model.decode(post.f_mean.roll(1, 0), post.z_mean)
        assert not torch.allclose(swapped, model.decode(post.f_mean, post.z_mean))
        other_mean = post.f_mean.roll(1, 0)[:, None]
        assert torch.allclose(swapped, model.decode_frames(codes - post.f_mean[:, None] + other_mean), atol=1e-5)


def test_naive_posterior_marginals_match_monte_carlo():
    torch.manual_seed(0)
    mean, logvar = torch.randn(2, 5, 3), torch.randn(2, 5, 3) * 0.5
    n = 100_000
    samples = mean + torch.exp(0.5 * logvar) * torch.randn(n, 2, 5, 3)
    post = naive_posterior(FrameCode(samples.flatten(0, 1), mean.repeat(n, 1, 1), logvar.repeat(n, 1, 1)))
    f, z = post.f.reshape(n, 2, 3), post.z.reshape(n, 2, 5, 3)
    assert torch.allclose(f.var(0).log(), post.f_logvar[:2], atol=0.03)
    assert torch.allclose(z.var(0).log(), post.z_logvar[:2], atol=0.03)
    assert torch.allclose(f.mean(0), post.f_mean[:2], atol=0.02)


def test_vae_samples_are_stochastic_and_means_are_not():
    model = tiny("vae").eval()
    x = labelled_batch()["x"]
    a, b = model.encode(x), model.encode(x)
    assert torch.equal(a.f_mean, b.f_mean) and not torch.equal(a.f, b.f)
    assert a.f_logvar.shape == a.f_mean.shape and a.z_logvar.shape == a.z_mean.shape


def test_cvae_class_part_and_generation():
    model = tiny("cvae", label="hair").eval()
    k, latent = model.label_classes, model.config.latent_dim
    assert k == 6 and model.code_dim == latent + k
    x = labelled_batch()["x"]
    code = model.encode_frames(x).code
    part = code[..., latent:]
    assert torch.equal(part.sum(-1), torch.ones(part.shape[:-1])) and set(part.unique().tolist()) <= {0.0, 1.0}
    torch.manual_seed(3)
    grid = model.generate([0, 2, 2], n_style=4)
    assert grid.shape == (3, 4, 3, 16, 16)
    assert torch.equal(grid[1], grid[2])  # same class, same style samples
    assert not torch.allclose(grid[0], grid[1])  # the class dims change the images
    assert not torch.allclose(grid[1, 0], grid[1, 1])  # columns are different style samples
    with pytest.raises(DsvaeError, match="classes must be in 0..5"):
        model.generate([6], 2)
    soft = tiny("cvae", label="hair", label_mode="soft").eval()
    probs = soft.encode_frames(x).code[..., latent:]
    assert torch.allclose(probs, soft.classify_frames(x).softmax(-1), atol=1e-6)


def test_cvae_straight_through_trains_the_classifier_from_reconstruction():
    model = tiny("cvae")
    batch = labelled_batch()
    fc = model.encode_frames(batch["x"])
    recon, _ = model._recon_terms(model.decode_frames(fc.code), batch["x"])
    recon.backward()
    assert model.classifier[-1].weight.grad is not None and model.classifier[-1].weight.grad.abs().sum() > 0


def test_labelled_models_need_labels():
    for name in ("cvae", "aae-sup"):
        model = tiny(name)
        assert model.uses_labels
        with pytest.raises(DsvaeError, match="no 'attributes' field"):
            model({"x": labelled_batch()["x"]}, phase=model.phases[0])
    action = tiny("cvae", label="action")
    assert action.label_classes == 9 and torch.isfinite(action(labelled_batch())["loss"])


@pytest.mark.parametrize("name, bad, match", [
    ("ae", {"code_dim": 0}, "code_dim must be positive"),
    ("ae", {"widths": (8, 16, 32)}, "image_size is 16"),
    ("ae", {"recon_loss": "l1"}, "recon_loss must be one of"),
    ("vae", {"kl_weight": -1.0}, "kl_weight must be >= 0"),
    ("vae", {"norm": "layer"}, "norm must be one of"),
    ("cvae", {"label": "shoes"}, "label must be one of"),
    ("cvae", {"label_mode": "gumbel"}, "label_mode must be one of"),
    ("aae", {"prior": "laplace"}, "prior must be one of"),
    ("aae", {"prior_std": 0}, "prior_std must be positive"),
    ("aae", {"prior": "mixture", "z_dim": 1}, "needs z_dim >= 2"),
    ("aae", {"adv_beta1": 1.0}, "adv_beta1 must be in"),
    ("aae", {"z_dim": 2.5}, "z_dim must be an integer"),
    ("aae-sup", {"label": "colour"}, "label must be one of"),
    ("aae-semi", {"labeled": 0}, "labeled must be positive"),
    ("aae-semi", {"labeled": 300, "label_pool": 200}, "cannot exceed label_pool"),
    ("aae-semi", {"bogus": 1}, "unknown SemiSupervisedAAEConfig option"),
])
def test_bad_config_values(name, bad, match):
    with pytest.raises(DsvaeError, match=match):
        tiny(name, **bad)


def _lines(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name, key", [("ae", "loss"), ("vae", "loss"), ("cvae", "loss"), ("aae", "recon/loss"),
                                       ("aae-sup", "recon/loss"), ("aae-semi", "recon/loss")])
def test_loss_falls_and_checkpoint_round_trips(tmp_path, procedural_h5, name, key):
    overrides = {"label_pool": 200} if name == "aae-semi" else {}
    res = train(data=str(procedural_h5), out=str(tmp_path / name), model=name, limit=200, max_steps=40, lr=3e-3,
                model_config=overrides, **FAST)
    lines = _lines(res.run_dir)
    assert lines[-1][key] < 0.6 * lines[0][key]
    if name == "cvae":
        assert lines[-1]["ce"] < lines[0]["ce"]
    cfg = json.loads((res.run_dir / "config.json").read_text())
    assert cfg["model_type"] == name
    loaded = dsvae.load(res.run_dir)
    assert type(loaded) is type(res.model) and not loaded.training
    model = res.model.eval()
    x = torch.rand(2, 3, 3, 16, 16)
    with torch.no_grad():
        a, b = model.encode(x), loaded.encode(x)
        assert torch.equal(a.f_mean, b.f_mean) and torch.equal(a.z_mean, b.z_mean)
        assert torch.equal(model.decode(a.f_mean, a.z_mean), loaded.decode(b.f_mean, b.z_mean))
    ckpt = torch.load(res.run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert set(ckpt["optimizers"]) == set(model.phases)


@pytest.mark.parametrize("name", BASELINES)
def test_cli_train_smoke(tmp_path, procedural_h5, capsys, name):
    out = tmp_path / name
    extra = ["--label", "hair"] if name in ("cvae", "aae-sup", "aae-semi") else []
    extra += ["--set", "label_pool=64", "--labeled", "20"] if name == "aae-semi" else []
    rc = main(["train", "--model", name, "--data", str(procedural_h5), "--out", str(out), "--preset", "tiny",
               "--max-steps", "3", "--limit", "64", "--batch-size", "8", "--sample-every", "0", "--quiet", *extra])
    assert rc == 0 and (out / "checkpoints" / "last.pt").exists()
    assert "trained 3 steps" in capsys.readouterr().out
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == name
    if extra:
        assert cfg["model_config"]["label"] == "hair"
    if name == "aae-semi":
        assert cfg["model_config"]["labeled"] == 20


def test_cli_label_on_a_model_without_labels(tmp_path, procedural_h5, capsys):
    rc = main(["train", "--model", "vae", "--label", "top", "--data", str(procedural_h5), "--out",
               str(tmp_path / "bad"), "--preset", "tiny", "--quiet"])
    assert rc == 2 and "unknown VAEConfig option(s) label" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
