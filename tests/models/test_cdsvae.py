import math

import pytest
import torch

import dsvae
from dsvae.errors import DsvaeError
from dsvae.models import build_model
from dsvae.models.base import Posterior
from dsvae.models.cdsvae import (
    CDSVAE,
    colour_augment,
    info_nce,
    motion_order,
    motion_view,
    mws_mutual_information,
    palette_distance,
    reorder_frames,
    sequence_palettes,
)
from dsvae.models.presets import get_preset
from dsvae.training.trainer import train

TINY = get_preset("cdsvae", "tiny")[0]
OFF = {"static_contrast_weight": 0.0, "dynamic_contrast_weight": 0.0, "mi_weight": 0.0, "prior_swap_weight": 0.0,
       "palette_weight": 0.0}
#: ingredient weight -> the loss term it adds
INGREDIENTS = {"static_contrast_weight": "static_nce", "dynamic_contrast_weight": "dynamic_nce",
               "mi_weight": "mi_fz", "prior_swap_weight": "prior_nce", "palette_weight": "palette"}
ELBO = ("recon", "kl_f", "kl_z")


def _pair(**overrides):
    """A DSVAE and a CDSVAE (config overrides) with identical weights."""
    torch.manual_seed(0)
    plain = build_model("dsvae", get_preset("dsvae", "tiny")[0])
    torch.manual_seed(0)
    model = build_model("cdsvae", {**TINY, **overrides})
    missing = model.load_state_dict(plain.state_dict(), strict=False)
    assert missing.missing_keys == ["train_step"] and not missing.unexpected_keys
    return plain.train(), model.train()


def _videos(b=4, t=6, size=16, seed=0):
    """Sprites-like videos: a coloured square moving over black, its position changing every frame."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(b, t, 3, size, size)
    colours = 0.2 + 0.8 * torch.rand(b, 3, generator=g)
    start = torch.randint(0, size - 5, (b, 2), generator=g)
    for i in range(b):
        for k in range(t):
            r, c = (int(start[i, 0]) + k) % (size - 4), (int(start[i, 1]) + 2 * k) % (size - 4)
            x[i, k, :, r:r + 4, c:c + 4] = colours[i, :, None, None]
    return x


def _terms(model, x, seed=0):
    torch.manual_seed(seed)
    return model({"x": x})


def test_shapes_and_named_terms():
    torch.manual_seed(0)
    model = build_model("cdsvae", {**TINY, "prior_swap_weight": 0.5, "palette_weight": 0.5, "kl_anneal_steps": 10})
    assert isinstance(model, CDSVAE) and model.model_type == "cdsvae"
    c = model.config
    x = torch.rand(3, 5, 3, c.image_size, c.image_size)
    post = model.encode(x)
    assert post.f_mean.shape == (3, c.f_dim) and post.z.shape == (3, 5, c.z_dim)
    assert model.decode(post.f, post.z).shape == x.shape
    assert model.sample_static(4).shape == (4, c.f_dim) and model.sample_dynamics(4, 6).shape == (4, 6, c.z_dim)
    terms = model(x)
    assert set(terms) == {"loss", *ELBO, "kl_beta", *INGREDIENTS.values()}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in terms.values())
    beta = float(terms["kl_beta"])
    expect = terms["recon"] + beta * (terms["kl_f"] + terms["kl_z"]) + sum(
        getattr(c, w) * terms[name] for w, name in INGREDIENTS.items())
    assert torch.allclose(terms["loss"], expect)


def test_all_ingredients_off_is_the_dsvae():
    plain, model = _pair(**OFF)
    x = _videos()
    a, b = _terms(plain, x), _terms(model, x)
    assert set(b) == set(a) == {"loss", *ELBO}
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("weight", list(INGREDIENTS))
def test_each_ingredient_adds_only_its_term(weight):
    plain, model = _pair(**{**OFF, weight: 2.5})
    x = _videos()
    a, b = _terms(plain, x), _terms(model, x)
    name = INGREDIENTS[weight]
    assert set(b) == {"loss", *ELBO, name}
    for k in ELBO:  # the ingredient's noise is drawn after the ELBO's
        assert torch.equal(a[k], b[k]), k
    assert b[name] > 0
    assert torch.allclose(b["loss"], a["loss"] + 2.5 * b[name])
    # and it trains: its gradient reaches the encoder
    model.zero_grad()
    b[name].backward()
    assert model.encoder.net[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("weight", ["prior_swap_weight", "palette_weight"])
def test_prior_terms_reach_the_decoder(weight):
    _, model = _pair(**{**OFF, weight: 1.0})
    _terms(model, _videos())[INGREDIENTS[weight]].backward()
    assert model.decoder.net[0].weight.grad.abs().sum() > 0


def test_sequence_palettes_are_the_most_frequent_colours():
    x = torch.zeros(2, 2, 3, 4, 4)  # video 0: black (24 px), red (6 px), blue (2 px); video 1: all grey
    x[0, 0, 0, :, :2] = 1.0
    x[0, 1, 0, 0, :2] = 1.0
    x[0, 1, 2, 3, :2] = 1.0
    x[1] = 128 / 255
    pal = sequence_palettes(x, 4)
    assert pal.shape == (2, 4, 3)
    assert pal[0].tolist() == [[0, 0, 0], [1, 0, 0], [0, 0, 1], [0, 0, 0]]  # padded with the most frequent
    assert torch.allclose(pal[1], torch.full((4, 3), 128 / 255))
    assert sequence_palettes(x, 2)[0].tolist() == [[0, 0, 0], [1, 0, 0]]


def test_palette_distance_is_zero_on_palette_colours_only():
    x = (_videos(b=3, t=4, size=16) * 255).round() / 255  # 8-bit colours, as the data set's
    pal = sequence_palettes(x, 8)
    assert torch.allclose(palette_distance(x, pal), torch.zeros(3), atol=1e-4)
    assert torch.allclose(palette_distance(x, pal, offset=1), torch.zeros(3), atol=1e-4)
    # one colour off the palette: a uniform grey video scores its distance to the nearest colour, summed over pixels
    grey = torch.full((1, 4, 3, 16, 16), 0.5)
    black_white = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]])
    assert palette_distance(grey, black_white).item() == pytest.approx(3 * 0.25 * 4 * 16 * 16, rel=1e-5)
    # another video's palette does not fit: the colours of the other squares are far
    assert (palette_distance(x, pal.roll(1, 0)) > 1.0).all()


def test_kl_annealing_counts_training_steps():
    _, model = _pair(**OFF, kl_anneal_steps=4, kl_anneal_start=0.2)
    x = _videos()
    betas = []
    for _ in range(6):
        terms = _terms(model, x)
        betas.append(float(terms["kl_beta"]))
        assert torch.allclose(terms["loss"], terms["recon"] + betas[-1] * (terms["kl_f"] + terms["kl_z"]))
    assert betas == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])
    model.eval()
    _terms(model, x)
    assert int(model.train_step) == 6  # evaluation does not advance the schedule


def test_motion_orders_are_permutations():
    torch.manual_seed(0)
    noise = torch.randn(64, 9)
    shuffled = motion_order(noise, "shuffle")
    assert torch.equal(shuffled.sort(1).values, torch.arange(8).expand(64, 8))
    assert not torch.equal(shuffled, torch.arange(8).expand(64, 8))
    assert torch.equal(motion_order(noise, "reverse"), torch.arange(7, -1, -1).expand(64, 8))
    mixed = motion_order(noise, "mixed")
    is_reversed = (mixed == torch.arange(7, -1, -1)).all(1)
    assert 10 < int(is_reversed.sum()) < 54
    assert torch.equal(mixed[~is_reversed], shuffled[~is_reversed])


def test_shuffled_view_has_the_same_frames_and_features():
    x = _videos(b=3, t=6)
    order = motion_order(torch.randn(3, 7), "shuffle")
    view = reorder_frames(x, order)
    for i in range(3):
        # the same frames as a set, in the new order
        assert torch.equal(view[i], x[i, order[i]])
        assert sorted(map(tuple, view[i].flatten(1).tolist())) == sorted(map(tuple, x[i].flatten(1).tolist()))
    # per-frame encoding commutes with the reordering (also in train mode: the batch holds the same frames),
    # which is why the loss reorders features instead of re-encoding frames
    _, model = _pair()
    for mode in (True, False):
        model.train(mode)
        a = reorder_frames(model.encoder.frames(x), order)
        b = model.encoder.frames(view)
        assert torch.allclose(a, b, atol=1e-5)


def test_mirrored_view():
    x = _videos(b=4, t=5)
    order = motion_order(torch.randn(4, 6), "mixed")
    flip = torch.tensor([True, False, True, False])
    view = motion_view(x, order, flip)
    for i in range(4):
        frames = x[i].flip(-1) if flip[i] else x[i]
        assert torch.equal(view[i], frames[order[i]])
    # mirroring moves the square: the motion changes, the colours (content) do not
    assert not torch.equal(view[0].sum(2) > 0, reorder_frames(x, order)[0].sum(2) > 0)
    assert torch.equal(view[0].flatten(1).sort(1).values, reorder_frames(x, order)[0].flatten(1).sort(1).values)


@pytest.mark.parametrize("flip", [0.0, 0.5, 1.0])
def test_static_view_encodes_the_augmented_frames(flip):
    """The view's frame features are those of the whole mirrored-and-reordered video, although only
    the mirrored sequences' frames are encoded again (eval mode: batch norm does not depend on the batch)."""
    _, model = _pair(**{**OFF, "static_contrast_weight": 1.0, "motion_flip": flip, "motion_augment": "shuffle"})
    model.eval()
    seen = []  # what the f-LSTM reads: the video's features, then the view's
    model.f_lstm.register_forward_hook(lambda module, args, out: seen.append(args[0].detach()))
    encoded = []  # frames per encoder call
    model.encoder.register_forward_hook(lambda module, args, out: encoded.append(args[0].shape[0]))
    x = _videos(b=8)
    torch.manual_seed(3)
    term = model({"x": x})["static_nce"]
    assert len(seen) == 2
    view_feats, frames_encoded = seen[1], list(encoded)
    # the same draws by hand: ELBO noise (f, z), then the view's
    b, t = x.shape[:2]
    torch.manual_seed(3)
    post = model.encode(x)
    noise = torch.randn(b, t + 2)
    order = motion_order(noise[:, :t + 1], "shuffle")
    mirrored = torch.special.ndtr(noise[:, t + 1]) < flip
    if flip == 0.5:  # this seed mirrors some sequences and not others
        assert 0 < int(mirrored.sum()) < b
    # the video's frames, then only the mirrored sequences' frames (none: the features are reordered)
    assert frames_encoded == [b * t] + ([int(mirrored.sum()) * t] if flip > 0 else [])
    expected = model.encoder.frames(motion_view(x, order, mirrored))
    assert torch.allclose(view_feats, expected, atol=1e-5)
    if flip > 0:  # mirroring changes the features the encoder gives
        unmirrored = model.encoder.frames(motion_view(x, order, torch.zeros(b, dtype=torch.bool)))
        assert not torch.allclose(view_feats, unmirrored, atol=1e-3)
    view = model.encode(motion_view(x, order, mirrored))
    assert torch.allclose(term, info_nce(post.f_mean, view.f_mean, model.config.temperature), atol=1e-5)


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_views_without_gradient(flip):
    """view_grad false: the same loss, but the views' codes are fixed targets (no graph behind them),
    so the encoder's gradient is the one the original sequences' codes alone give."""
    grads, values = {}, {}
    for view_grad in (True, False):
        _, model = _pair(**{**OFF, "static_contrast_weight": 1.0, "dynamic_contrast_weight": 1.0,
                            "motion_flip": flip, "view_grad": view_grad})
        needs_grad = []  # per f-LSTM call: does its output carry a graph?
        model.f_lstm.register_forward_hook(lambda module, args, out: needs_grad.append(out[0].requires_grad))
        torch.manual_seed(3)
        out = model({"x": _videos(b=8)})
        out["loss"].backward()
        values[view_grad] = {k: float(v.detach()) for k, v in out.items()}
        grads[view_grad] = model.encoder.net[0].weight.grad.clone()
        # the video, the static view, the colour view
        assert needs_grad == [True, view_grad, view_grad]
    assert values[True] == pytest.approx(values[False], rel=1e-6)
    assert not torch.allclose(grads[True], grads[False])


@pytest.mark.parametrize("kind", ["permute", "permute_gain"])
def test_colour_view_keeps_the_mask(kind):
    x = _videos(b=8, t=4)
    view = colour_augment(x, torch.randn(8, 4), kind)
    assert view.shape == x.shape
    assert torch.equal(view.sum(2) > 0, x.sum(2) > 0)  # same on/off pixels in every frame: same motion
    for i in range(8):
        assert not torch.allclose(view[i], x[i])
    if kind == "permute":  # a channel permutation: per pixel, the same channel values in another order
        assert torch.equal(view.sort(2).values, x.sort(2).values)
    else:  # then per-channel gains in [0.6, 1]: every sequence gets darker by a factor in that range
        ratio = view.flatten(1).sum(1) / x.flatten(1).sum(1)
        assert bool(((ratio >= 0.6) & (ratio <= 1.0)).all()) and bool((ratio < 1.0).any())


def test_info_nce():
    torch.manual_seed(0)
    a = torch.randn(16, 32)
    # aligned, well-separated pairs: near zero; unrelated pairs: near log(2B - 1)
    assert info_nce(a, a.clone(), 0.1) < 0.01
    rand = info_nce(torch.randn(256, 64), torch.randn(256, 64), 1.0)
    assert abs(float(rand) - math.log(511)) < 0.1
    # cosine similarity: invariant to the scale of either view
    b = torch.randn(16, 32)
    assert torch.allclose(info_nce(a, b, 0.5), info_nce(3 * a, 0.5 * b, 0.5))


def test_mutual_information_estimate():
    torch.manual_seed(0)
    b, t, fd, zd = 64, 3, 5, 4
    f_mean = torch.randn(b, fd)
    small = torch.full((b, fd), -8.0)
    f = f_mean + torch.exp(0.5 * small) * torch.randn(b, fd)
    # z carries nothing about x (every posterior is the prior): zero
    z0 = torch.randn(b, t, zd)
    indep = Posterior(f_mean, small, f, torch.zeros(b, t, zd), torch.zeros(b, t, zd), z0)
    assert float(mws_mutual_information(indep)) == pytest.approx(0.0, abs=1e-4)
    # z a sharp function of the same x as f: about log B
    z_mean = f_mean[:, None, :zd].repeat(1, t, 1)
    dep = Posterior(f_mean, small, f, z_mean, torch.full((b, t, zd), -8.0), z_mean)
    assert float(mws_mutual_information(dep)) == pytest.approx(math.log(b), abs=0.05)


@pytest.mark.parametrize("components", [1, 4])
def test_loss_falls_in_a_short_run(components):
    torch.manual_seed(0)
    model = build_model("cdsvae", {**TINY, "prior_swap_weight": 0.5, "prior_components": components}).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = _videos(b=8, t=6)
    losses = []
    for _ in range(40):
        terms = model({"x": x})
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        losses.append(float(terms["loss"].detach()))
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5


class _OnlyX(dict):
    """A batch that records which keys the model reads."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.read = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)


def test_no_labels_are_read():
    torch.manual_seed(0)
    model = build_model("cdsvae", {**TINY, "prior_swap_weight": 1.0})
    assert not model.uses_labels
    x = _videos()
    batch = _OnlyX(x=x, action=torch.zeros(4, dtype=torch.long), attributes=torch.zeros(4, 4, dtype=torch.long))
    model(batch)
    assert batch.read == {"x"}
    assert torch.isfinite(model({"x": x})["loss"])


def test_checkpoint_round_trip(tmp_path, procedural_h5):
    res = train(data=str(procedural_h5), out=str(tmp_path / "run"), model="cdsvae", preset="tiny", max_steps=6,
                limit=64, batch_size=8, sample_every=0, progress=False, log_every=3,
                model_config={"kl_anneal_steps": 100, "prior_swap_weight": 0.5})
    loaded = dsvae.load(res.run_dir)
    assert isinstance(loaded, CDSVAE) and not loaded.training
    assert loaded.config == res.model.config and loaded.config.prior_swap_weight == 0.5
    assert int(loaded.train_step) == 6 and loaded.kl_beta() == pytest.approx(0.1 + 0.9 * 0.06)
    model = res.model.eval()
    x = torch.rand(2, 8, 3, 16, 16)
    with torch.no_grad():
        a, b = model.encode(x), loaded.encode(x)
        assert torch.equal(a.f_mean, b.f_mean) and torch.equal(a.z_mean, b.z_mean)
    metrics = (res.run_dir / "metrics.jsonl").read_text()
    for name in ("static_nce", "dynamic_nce", "mi_fz", "prior_nce", "kl_beta"):
        assert f'"{name}"' in metrics


@pytest.mark.parametrize("bad, match", [
    ({"mi_weight": -1.0}, "mi_weight must be >= 0"),
    ({"static_contrast_weight": -0.1}, "static_contrast_weight must be >= 0"),
    ({"temperature": 0.0}, "temperature must be positive"),
    ({"motion_augment": "crop"}, "motion_augment must be one of"),
    ({"motion_flip": 1.5}, "motion_flip must be in"),
    ({"content_augment": "hue"}, "content_augment must be one of"),
    ({"contrast_code": "mode"}, "contrast_code must be one of"),
    ({"view_grad": "no"}, "view_grad must be true or false"),
    ({"kl_anneal_steps": -3}, "kl_anneal_steps must be an integer >= 0"),
    ({"kl_anneal_start": 1.5}, "kl_anneal_start must be in"),
    ({"pair_share": 1.5}, "pair_share must be in"),
    ({"pair_share": True}, "pair_share must be in"),
    ({"pair_neighbours": 0}, "pair_neighbours must be an integer >= 1"),
    ({"z_dim": 0}, "z_dim must be positive"),
])
def test_bad_config_values(bad, match):
    with pytest.raises(DsvaeError, match=match):
        build_model("cdsvae", {**TINY, **bad})


def test_presets():
    for name in ("paper", "cpu", "cpu-best", "tiny"):
        model_cfg, train_cfg = get_preset("cdsvae", name)
        model = build_model("cdsvae", model_cfg)
        assert train_cfg["batch_size"] > 0
        # every ingredient is on in the presets
        assert all(getattr(model.config, w) > 0 for w in ("static_contrast_weight", "dynamic_contrast_weight",
                                                          "mi_weight"))
    # same backbone as the DSVAE's cpu preset, a smaller z
    cpu, plain = get_preset("cdsvae", "cpu")[0], get_preset("dsvae", "cpu")[0]
    assert cpu["widths"] == plain["widths"] and cpu["z_dim"] < plain["z_dim"]
    # cpu-best: the cpu preset with doubled widths and a mixture prior, nothing else changed
    best = get_preset("cdsvae", "cpu-best")[0]
    assert {k for k in best if best[k] != cpu.get(k)} == {"widths", "prior_components"}
    assert [2 * w for w in cpu["widths"]] == list(best["widths"])


def _decoded_static(model, batch):
    """The static codes the reconstruction decodes (posterior means: sampling switched off)."""
    seen = []
    model.reparameterize = lambda mean, logvar: mean
    decode = model.decode
    model.decode = lambda f, z: seen.append(f.detach()) or decode(f, z)
    model(batch)
    return seen[0]


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_pair_share_decodes_partners_static_codes(share):
    _, model = _pair(**{**OFF, "pair_share": share})
    x, x_pair = _videos(b=64, seed=1), _videos(b=64, seed=2)
    torch.manual_seed(0)
    f = _decoded_static(model, {"x": x, "x_pair": x_pair})
    with torch.no_grad():
        own, partner = model.static_posterior(model.encoder.frames(x))[0], model.static_posterior(
            model.encoder.frames(x_pair))[0]
    is_own = torch.isclose(f, own, atol=1e-5).all(1)
    is_partner = torch.isclose(f, partner, atol=1e-5).all(1)
    assert (is_own | is_partner).all()
    assert not (is_own & is_partner).any()
    assert float(is_partner.float().mean()) == pytest.approx(share, abs=0.2)
    assert is_partner.all() if share == 1.0 else not is_partner.all()
    assert model.partner_neighbours() == (3 if share else 0)


def test_pair_share_zero_reads_no_partners():
    _, model = _pair(**OFF)
    batch = _OnlyX(x=_videos(), x_pair=_videos(seed=5))
    model(batch)
    assert batch.read == {"x"}


@pytest.mark.parametrize("view_grad", [True, False])
def test_partner_codes_follow_view_grad(view_grad):
    _, model = _pair(**{**OFF, "pair_share": 1.0, "view_grad": view_grad})
    x_pair = _videos(seed=3).requires_grad_(True)
    model({"x": _videos(), "x_pair": x_pair})["loss"].backward()
    assert (x_pair.grad is not None and x_pair.grad.abs().sum() > 0) == view_grad


def test_pair_share_needs_partner_frames():
    _, model = _pair(**{**OFF, "pair_share": 0.5})
    with pytest.raises(DsvaeError, match="x_pair"):
        model({"x": _videos()})
    with pytest.raises(DsvaeError, match="shape"):
        model({"x": _videos(), "x_pair": _videos(b=2)})


def test_training_with_partners(tmp_path, procedural_h5):
    res = train(data=str(procedural_h5), out=str(tmp_path / "run"), model="cdsvae", preset="tiny", max_steps=4,
                limit=64, batch_size=8, sample_every=0, progress=False, log_every=2,
                model_config={"pair_share": 0.5, "pair_neighbours": 2})
    assert res.step == 4 and math.isfinite(res.metrics["loss"])
    assert dsvae.load(res.run_dir).config.pair_share == 0.5
