import math

import pytest
import torch

from dsvae.errors import DsvaeError
from dsvae.models import build_model
from dsvae.models.base import Posterior, kl_normal, kl_normal_std
from dsvae.models.presets import get_preset

TINY = get_preset("dsvae", "tiny")[0]


@pytest.fixture(params=[("full", 1, 0), ("factorized", 1, 0), ("full", 4, 0), ("full", 1, 2)],
                ids=["full", "factorized", "mixture", "film"])
def model(request):
    torch.manual_seed(0)
    posterior, components, film = request.param
    return build_model("dsvae", {**TINY, "posterior": posterior, "prior_components": components,
                                 "decoder_film_blocks": film})


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
    k, d = model.config.prior_components, model.config.z_dim
    z = torch.randn(2, 6, d)
    log_w, mean, logvar = model.prior_params(z)
    assert log_w.shape == (2, 6, k) and mean.shape == logvar.shape == (2, 6, k, d)
    assert torch.allclose(log_w.exp().sum(-1), torch.ones(2, 6), atol=1e-5)
    # step-by-step LSTM fed with the *given* z (teacher forcing) gives the same parameters
    state, prev, means = None, torch.zeros(2, 1, d), []
    for t in range(6):
        out, state = model.prior_lstm(prev, state)
        means.append(model._prior_out(out)[1])
        prev = z[:, t:t + 1]
    assert torch.allclose(mean, torch.cat(means, 1), atol=1e-5)
    # causal: changing z_3 leaves p(z_t | z_<t) for t <= 3 unchanged and changes t = 4
    z2 = z.clone()
    z2[:, 3] += 1.0
    _, mean2, _ = model.prior_params(z2)
    assert torch.allclose(mean[:, :4], mean2[:, :4])
    assert not torch.allclose(mean[:, 4], mean2[:, 4])


def test_sampling_is_autoregressive(model):
    torch.manual_seed(5)
    samples = model.sample_dynamics(3, 7)
    torch.manual_seed(5)
    means = model.sample_dynamics(3, 7, means=True)
    # the rollout was fed its own samples: re-running the teacher-forced prior on them gives the same
    # means (of a mixture: each step's mean is one of that step's component means)
    _, tf_mean, _ = model.prior_params(samples)
    distance = (tf_mean - means.unsqueeze(2)).abs().amax(-1).amin(-1)
    assert distance.max() < 1e-5
    assert not torch.allclose(samples, means)
    # and different draws give different dynamics
    assert not torch.allclose(model.sample_dynamics(3, 7), samples)


def test_mixture_prior_kl_matches_the_single_gaussian_it_copies():
    """A mixture of K identical copies of a one-component prior is that prior: its Monte Carlo KL
    averages to the closed form, whatever the mixture weights."""
    torch.manual_seed(3)
    one = build_model("dsvae", {**TINY, "prior_components": 1})
    mix = build_model("dsvae", {**TINY, "prior_components": 3})
    mix.prior_lstm.load_state_dict(one.prior_lstm.state_dict())
    d, k = one.config.z_dim, 3
    with torch.no_grad():
        mix.prior_head.weight[:k] = 0.0
        mix.prior_head.bias[:k] = torch.tensor([0.0, 5.0, -2.0])  # unequal weights, identical components
        for i in range(k):
            rows = slice(k + 2 * d * i, k + 2 * d * (i + 1))
            mix.prior_head.weight[rows] = one.prior_head.weight
            mix.prior_head.bias[rows] = one.prior_head.bias
    n, t = 20_000, 3
    z_mean = torch.randn(1, t, d).expand(n, t, d)
    z_logvar = (0.3 * torch.randn(1, t, d)).expand(n, t, d)
    z = z_mean + torch.exp(0.5 * z_logvar) * torch.randn(n, t, d)
    f = torch.zeros(n, one.config.f_dim)
    post = Posterior(f, f, f, z_mean, z_logvar, z)
    with torch.no_grad():
        exact = one.kl_dynamics(post)
        estimate = mix.kl_dynamics(post)
    # the prior is teacher-forced on the sample, so both vary per sample; their averages agree
    assert abs(float(estimate.mean() - exact.mean())) < 0.02 * float(exact.mean())
    assert float((estimate - exact).std()) > 0.1  # the mixture's is a Monte Carlo estimate


def test_mixture_rollout_draws_distinct_modes():
    torch.manual_seed(4)
    model = build_model("dsvae", {**TINY, "prior_components": 2})
    d = model.config.z_dim
    with torch.no_grad():
        model.prior_head.weight.zero_()
        bias = torch.full((2 + 4 * d,), -12.0)  # tiny variances
        bias[:2] = 0.0  # equal weights
        bias[2:2 + d], bias[2 + 2 * d:2 + 3 * d] = 3.0, -3.0  # component means +3 and -3
        model.prior_head.bias.copy_(bias)
    means = model.sample_dynamics(400, 2, means=True)
    assert set(means.unique().tolist()) == {-3.0, 3.0}  # a component's mean, never their average 0
    share = (means[:, 0, 0] > 0).float().mean()
    assert 0.4 < float(share) < 0.6


@pytest.mark.parametrize("components", [1, 2])
def test_fitted_prior_rollout_on_two_modes(components):
    """Posterior codes sit on two modes (+2 or -2 in every dimension): the fitted single Gaussian's
    rollout mean is their blend (near 0), the fitted mixture's lands on a mode."""
    torch.manual_seed(6)
    model = build_model("dsvae", {**TINY, "prior_components": components})
    d, n, t = model.config.z_dim, 256, 2
    params = list(model.prior_lstm.parameters()) + list(model.prior_head.parameters())
    opt = torch.optim.Adam(params, lr=2e-2)
    for _ in range(300):
        sign = torch.randint(0, 2, (n, 1, 1)).float() * 2 - 1
        z_mean = (2.0 * sign).expand(n, t, d)
        z_logvar = torch.full((n, t, d), -6.0)
        z = z_mean + 0.05 * torch.randn(n, t, d)
        f = torch.zeros(n, model.config.f_dim)
        loss = model.kl_dynamics(Posterior(f, f, f, z_mean, z_logvar, z)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    first = model.sample_dynamics(500, t, means=True)[:, 0]
    distance_to_mode = (first.abs() - 2.0).abs().mean()
    if components == 1:
        assert first.abs().mean() < 0.5  # the blend of the two modes
    else:
        assert distance_to_mode < 0.2
        assert 0.3 < float((first[:, 0] > 0).float().mean()) < 0.7  # both modes drawn


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
    ({"decoder_film_blocks": 3}, "decoder_film_blocks must be an integer in"),
    ({"decoder_film_blocks": True}, "decoder_film_blocks must be an integer in"),
])
def test_bad_config_values(bad, match):
    with pytest.raises(DsvaeError, match=match):
        build_model("dsvae", {**TINY, **bad})


@pytest.mark.parametrize("blocks", [1, 2])
def test_film_decoder_starts_as_the_plain_one_and_lets_f_modulate(blocks):
    torch.manual_seed(0)
    plain = build_model("dsvae", TINY).eval()
    film = build_model("dsvae", {**TINY, "decoder_film_blocks": blocks}).eval()
    assert len(film.decoder.film) == blocks
    # the finest blocks are the modulated ones: the last FiLM layer has the first width's channels
    assert film.decoder.film[-1].out_features == 2 * TINY["widths"][0]
    # the plain decoder's weights load into the conditioned one (extra FiLM layers zero-initialised)
    missing, unexpected = film.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and missing and all(k.startswith("decoder.film.") for k in missing)
    c = plain.config
    f, z = torch.randn(2, c.f_dim), torch.randn(2, 3, c.z_dim)
    assert torch.allclose(film.decode(f, z), plain.decode(f, z))
    # once the modulation is trained, f reaches the hidden blocks and changes the frames
    with torch.no_grad():
        for lin in film.decoder.film:
            lin.weight.normal_(0, 0.5)
    assert not torch.allclose(film.decode(f, z), plain.decode(f, z), atol=1e-3)
    # and the FiLM layers are trained by the ELBO
    film.train()
    film(torch.rand(2, 3, 3, c.image_size, c.image_size))["loss"].backward()
    assert all(lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0 for lin in film.decoder.film)


def test_unknown_model():
    with pytest.raises(DsvaeError, match="unknown model"):
        build_model("transformer-xl")
