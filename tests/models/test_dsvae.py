import math

import pytest
import torch

from dsvae.errors import DsvaeError
from dsvae.models import build_model
from dsvae.models.base import kl_normal, kl_normal_std
from dsvae.models.presets import get_preset

TINY = get_preset("dsvae", "tiny")[0]


@pytest.fixture(params=["full", "factorized"])
def model(request):
    torch.manual_seed(0)
    return build_model("dsvae", {**TINY, "posterior": request.param})


def test_shapes(model):
    c = model.config
    x = torch.rand(3, 5, 3, c.image_size, c.image_size)
    post = model.encode(x)
    for name in ("f_mean", "f_logvar", "f"):
        assert getattr(post, name).shape == (3, c.f_dim)
    for name in ("z_mean", "z_logvar", "z"):
        assert getattr(post, name).shape == (3, 5, c.z_dim)
    out = model.decode(post.f, post.z)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert model.sample_static(4).shape == (4, c.f_dim)
    assert model.sample_dynamics(4, 6).shape == (4, 6, c.z_dim)
    terms = model(x)
    assert set(terms) == {"loss", "recon", "kl_f", "kl_z"}
    assert all(t.ndim == 0 and torch.isfinite(t) for t in terms.values())
    expect = terms["recon"] + terms["kl_f"] + terms["kl_z"]
    assert torch.allclose(terms["loss"], expect)


def test_paper_preset_size():
    m = build_model("dsvae", get_preset("dsvae", "paper")[0])
    c = m.config
    assert (c.f_dim, c.z_dim, c.hidden_dim, tuple(c.widths)) == (256, 32, 256, (64, 128, 256, 512))
    assert 10e6 < m.num_parameters() < 13e6


def test_kl_matches_monte_carlo():
    torch.manual_seed(1)
    mq, lq = torch.randn(2, 6), torch.randn(2, 6) * 0.5
    mp, lp = torch.randn(2, 6), torch.randn(2, 6) * 0.5
    n = 200_000
    s = mq + torch.exp(0.5 * lq) * torch.randn(n, 2, 6)

    def logn(v, m, lv):
        return (-0.5 * (math.log(2 * math.pi) + lv + (v - m) ** 2 / lv.exp())).sum(-1)

    mc_std = (logn(s, mq, lq) - logn(s, torch.zeros_like(mq), torch.zeros_like(lq))).mean(0)
    mc = (logn(s, mq, lq) - logn(s, mp, lp)).mean(0)
    assert torch.allclose(kl_normal_std(mq, lq), mc_std, rtol=0.03, atol=0.03)
    assert torch.allclose(kl_normal(mq, lq, mp, lp), mc, rtol=0.03, atol=0.03)
    assert torch.allclose(kl_normal(mq, lq, mq, lq), torch.zeros(2), atol=1e-6)


def test_prior_is_teacher_forced_and_causal(model):
    z = torch.randn(2, 6, model.config.z_dim)
    mean, logvar = model.prior_params(z)
    # step-by-step LSTM fed with the *given* z (teacher forcing) gives the same parameters
    state, prev, means = None, torch.zeros(2, 1, model.config.z_dim), []
    for t in range(6):
        out, state = model.prior_lstm(prev, state)
        means.append(model.prior_head(out).chunk(2, -1)[0])
        prev = z[:, t:t + 1]
    assert torch.allclose(mean, torch.cat(means, 1), atol=1e-5)
    # causal: changing z_3 leaves p(z_t | z_<t) for t <= 3 unchanged and changes t = 4
    z2 = z.clone()
    z2[:, 3] += 1.0
    mean2, _ = model.prior_params(z2)
    assert torch.allclose(mean[:, :4], mean2[:, :4])
    assert not torch.allclose(mean[:, 4], mean2[:, 4])


def test_sampling_is_autoregressive(model):
    torch.manual_seed(5)
    samples = model.sample_dynamics(3, 7)
    torch.manual_seed(5)
    means = model.sample_dynamics(3, 7, means=True)
    # the rollout was fed its own samples: re-running the teacher-forced prior on them gives the same means
    tf_mean, _ = model.prior_params(samples)
    assert torch.allclose(tf_mean, means, atol=1e-5)
    assert not torch.allclose(samples, means)
    # and different draws give different dynamics
    assert not torch.allclose(model.sample_dynamics(3, 7), samples)


def test_loss_uses_the_learned_prior(model):
    x = torch.rand(2, 4, 3, model.config.image_size, model.config.image_size)
    torch.manual_seed(0)
    before = model(x)["kl_z"]
    with torch.no_grad():
        model.prior_head.bias.add_(3.0)
    torch.manual_seed(0)
    after = model(x)["kl_z"]
    assert after > before


def test_eval_encoding_is_deterministic_in_means(model):
    model.eval()
    x = torch.rand(2, 4, 3, model.config.image_size, model.config.image_size)
    a, b = model.encode(x), model.encode(x)
    assert torch.equal(a.f_mean, b.f_mean) and torch.equal(a.z_mean, b.z_mean)
    assert not torch.equal(a.z, b.z)


@pytest.mark.parametrize("bad, match", [
    ({"z_dim": -1}, "z_dim must be positive"),
    ({"widths": []}, "widths must be positive"),
    ({"posterior": "magic"}, "posterior must be one of"),
    ({"norm": "layer"}, "norm must be one of"),
    ({"image_size": 64}, "image_size is 64"),
    ({"kl_f_weight": -1.0}, "kl_f_weight must be >= 0"),
    ({"bogus": 1}, "unknown DSVAEConfig option"),
])
def test_bad_config_values(bad, match):
    with pytest.raises(DsvaeError, match=match):
        build_model("dsvae", {**TINY, **bad})


def test_unknown_model():
    with pytest.raises(DsvaeError, match="unknown model"):
        build_model("transformer-xl")
