"""Adversarial autoencoders: priors, phases, the adversarial match, the supervised and semi-supervised variants."""

import json
import math

import pytest
import torch

import dsvae
from dsvae.data.dataset import SpritesDataset
from dsvae.errors import NotApplicable
from dsvae.models import build_model
from dsvae.models.baselines import categorical_from_normal
from dsvae.models.presets import get_preset
from dsvae.training.trainer import train
from dsvae.viz.baselines import evaluate_frames

FAST = dict(preset="tiny", batch_size=8, sample_every=0, progress=False, epochs=100)


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


def batch(b=4, t=3):
    g = torch.Generator().manual_seed(2)
    return {"x": torch.rand(b, t, 3, 16, 16, generator=g), "index": torch.arange(b),
            "action": torch.randint(0, 9, (b,), generator=g), "attributes": torch.randint(0, 6, (b, 4), generator=g)}


def test_gaussian_and_mixture_priors():
    torch.manual_seed(0)
    gauss = tiny("aae", prior_std=5.0, z_dim=3)
    s = gauss.prior_sample((20_000,), torch.zeros(()))
    assert s.shape == (20_000, 3)
    assert torch.allclose(s.std(0), torch.full((3,), 5.0), rtol=0.03) and s.mean(0).abs().max() < 0.15
    mix = tiny("aae", prior="mixture", z_dim=3, mixture_components=10, mixture_radius=4.0, mixture_std=0.3)
    s = mix.prior_sample((20_000,), torch.zeros(()))
    means = mix.mixture_means()
    assert torch.allclose(means[:, :2].norm(dim=1), torch.full((10,), 4.0)) and means[:, 2:].abs().max() == 0
    nearest = torch.cdist(s, means).argmin(1)
    counts = torch.bincount(nearest, minlength=10).float()
    assert counts.min() > 0.08 * len(s) and counts.max() < 0.12 * len(s)  # equal weights
    assert torch.allclose((s - means[nearest]).std(0), torch.full((3,), 0.3), rtol=0.05)


def test_categories_from_normal_noise_are_uniform():
    torch.manual_seed(0)
    k = categorical_from_normal(torch.randn(60_000), 6)
    freq = torch.bincount(k, minlength=6).float() / len(k)
    assert k.min() == 0 and k.max() == 5 and (freq - 1 / 6).abs().max() < 0.01


@pytest.mark.parametrize("prior", ["gaussian", "mixture"])
def test_prior_noise_is_exact_under_data_parallel_slicing(prior):
    """With noise_context = (global batch, offset), rank-local prior draws equal a slice of the global draw."""
    model = tiny("aae", prior=prior)
    torch.manual_seed(7)
    full = model.prior_sample((6, 3), torch.zeros(()))
    model.noise_context = (6, 2)
    torch.manual_seed(7)
    part = model.prior_sample((2, 3), torch.zeros(()))
    assert torch.equal(part, full[2:4])


@pytest.mark.parametrize("name", ["aae", "aae-sup", "aae-semi"])
def test_phases_touch_only_their_parameters(name):
    model = tiny(name, **({"labeled": 4, "label_pool": 4} if name == "aae-semi" else {}))
    assert model.optimizer_options("disc") == {"betas": (0.5, 0.999)} and model.optimizer_options("recon") == {}
    everything = dict(model.named_parameters())
    for phase in model.phases:
        model.zero_grad(set_to_none=True)
        model(batch(), phase=phase)["loss"].backward()
        own = {id(p) for p in model.phase_parameters(phase)}
        stepped = {n for n, p in everything.items() if id(p) in own}
        if phase == "disc":
            assert all("discriminator" in n for n in stepped)
            # the codes are detached: the encoder gets no gradient from the discriminator's loss
            assert all(p.grad is None for n, p in everything.items() if n.startswith("encoder"))
        if phase in ("gen", "classify"):
            assert not any(n.startswith("decoder") or "discriminator" in n for n in stepped)
        if phase == "recon":
            assert not any("discriminator" in n for n in stepped)
        assert any(everything[n].grad is not None and everything[n].grad.abs().sum() > 0 for n in stepped)


def test_codes_match_the_prior_and_the_discriminator_is_fooled(tmp_path, procedural_h5):
    res = train(data=str(procedural_h5), out=str(tmp_path / "aae"), model="aae", limit=200, max_steps=300,
                lr=2e-3, log_every=10, model_config={"prior_std": 2.0}, **FAST)
    acc = [json.loads(line)["disc/disc_acc"] for line in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    # the discriminator first wins easily, then loses ground as the codes come to look like prior samples
    peak = max(acc[:15])
    assert peak > 0.7 and acc[-1] < peak - 0.1 and abs(acc[-1] - 0.5) < 0.15
    ds = SpritesDataset(procedural_h5, "train", image_size=16, limit=200)
    with torch.no_grad():
        z = res.model.eval().encode_frames(ds.batch(torch.arange(200))["x"]).code.flatten(0, 1)
    std, mean = z.std(0), z.mean(0)
    assert ((std > 1.4) & (std < 2.8)).all(), std
    assert mean.abs().max() < 1.0 and mean.abs().mean() < 0.6, mean


def test_decode_grid_covers_the_latent_plane():
    model = tiny("aae", z_dim=2, prior_std=5.0).eval()
    with torch.no_grad():
        grid = model.decode_grid(5, -10, 10)
        assert grid.shape == (25, 3, 16, 16)
        # row-major: top-left is (z1, z2) = (lo, hi), bottom-right (hi, lo)
        corners = model.decode_frames(torch.tensor([[-10.0, 10.0], [10.0, -10.0], [0.0, 0.0]]))
        assert torch.allclose(grid[0], corners[0], atol=1e-6) and torch.allclose(grid[24], corners[1], atol=1e-6)
        assert torch.allclose(grid[12], corners[2], atol=1e-6)
    with pytest.raises(NotApplicable, match="2-D latent"):
        tiny("aae").decode_grid(5)
    sup = tiny("aae-sup", z_dim=2).eval()
    assert sup.decode_grid(3, label=4).shape == (9, 3, 16, 16)


def test_supervised_decoder_uses_the_label_and_is_deterministic():
    model = tiny("aae-sup", label="top").eval()
    k = model.label_classes
    with torch.no_grad():
        z = model.prior_sample((1,), torch.zeros(()))
        y0, y3 = torch.tensor([0]), torch.tensor([3])
        a, b = model.decode_frames(model.assemble(z, y0)), model.decode_frames(model.assemble(z, y0))
        assert torch.equal(a, b)  # fixed z and y: the same image
        assert not torch.allclose(a, model.decode_frames(model.assemble(z, y3)))  # y changes it
        grid = model.style_grid(3)
        assert grid.shape == (3, k, 3, 16, 16)
        x = batch()["x"]
        given = torch.full((4, 3), 5)
        code = model.encode_frames(x, labels=given).code
        assert (code[..., model.config.z_dim:].argmax(-1) == 5).all()
        guessed = model.encode_frames(x)
        assert torch.equal(guessed.code[..., model.config.z_dim:].argmax(-1), guessed.logits.argmax(-1))
        # the style part does not depend on the label
        assert torch.equal(code[..., :model.config.z_dim], guessed.code[..., :model.config.z_dim])


def test_supervised_style_grid_rows_share_z():
    model = tiny("aae-sup").eval()
    torch.manual_seed(4)
    grid = model.style_grid(2)
    torch.manual_seed(4)
    z = model.prior_sample((2,), torch.zeros(()))
    with torch.no_grad():
        expect = model.decode_frames(model.assemble(z[1:2].expand(6, -1), torch.arange(6)))
    assert torch.allclose(grid[1], expect, atol=1e-6)


def test_semi_supervised_labelled_subset_is_fixed_by_the_seed():
    a, b = tiny("aae-semi", labeled=10, label_pool=50), tiny("aae-semi", labeled=10, label_pool=50)
    c = tiny("aae-semi", labeled=10, label_pool=50, label_seed=1)
    assert torch.equal(a.labeled_slots, b.labeled_slots) and not torch.equal(a.labeled_slots, c.labeled_slots)
    seqs = a.labeled_slots[:, 0]
    assert len(set(seqs.tolist())) == 10 and seqs.max() < 50
    # a batch without labelled sequences: nothing remembered, zero loss and no gradient
    unlabelled = sorted(set(range(50)) - set(seqs.tolist()))[:4]
    bt = {**batch(), "index": torch.tensor(unlabelled)}
    terms = a(bt, phase="classify")
    assert terms["labeled"] == 0 and terms["loss"] == 0
    a.zero_grad(set_to_none=True)
    terms["loss"].backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in a.phase_parameters("classify"))
    # a batch holding two labelled sequences remembers exactly their chosen frames and labels
    picked = seqs[:2]
    bt = {**batch(), "index": torch.tensor([picked[0], unlabelled[0], picked[1], unlabelled[1]])}
    terms = a(bt, phase="classify")
    assert terms["labeled"] == 2 and terms["loss"] > 0
    for slot, row in ((0, 0), (1, 2)):
        t = int(a.labeled_slots[slot, 1]) % 3
        assert torch.equal(a.labeled_images[slot], (bt["x"][row, t] * 255).round().to(torch.uint8))
        assert a.labeled_targets[slot] == bt["attributes"][row, 2]  # label "top"
    assert a.labeled_seen.sum() == 2


def test_semi_supervised_classifies_well_with_100_labels(tmp_path, procedural_h5):
    res = train(data=str(procedural_h5), out=str(tmp_path / "semi"), model="aae-semi", limit=200, max_steps=150,
                lr=2e-3, log_every=50, model_config={"label": "hair", "labeled": 100, "label_pool": 200}, **FAST)
    last = json.loads((res.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["classify/labeled"] == 100
    test = SpritesDataset(procedural_h5, "test", image_size=16, resident=False)
    result = evaluate_frames(res.model.eval(), test, limit=150)
    chance_error = 1 - 1 / 6
    assert result["classification_error"] < 0.5 < chance_error
    # the memory of labelled images is part of the checkpoint
    loaded = dsvae.load(res.run_dir)
    assert torch.equal(loaded.labeled_images, res.model.labeled_images) and bool(loaded.labeled_seen.all())
    assert math.isclose(evaluate_frames(loaded, test, limit=150)["classification_error"],
                        result["classification_error"])
