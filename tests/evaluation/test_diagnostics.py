"""Attribute diagnostics against oracles: codes that are the labels probe at 100%, constant codes at chance;
a decoder that returns the real video is judged like the judge judges real videos under every kind of
dynamics, one that ignores its codes is not. The same oracles for the action certainty of the dynamic test."""

import math

import hashlib
from dataclasses import dataclass

import pytest
import torch

from dsvae.data.dataset import SpritesDataset
from dsvae.errors import DsvaeError
from dsvae.evaluation.diagnostics import (
    F_SOURCES,
    Z_SOURCES,
    action_certainty,
    action_doubt_sources,
    attribute_diagnostics,
    attribute_entropy,
    certainty_scores,
    entropy_sources,
    linear_probe,
    reconstruction_confusion,
)
from dsvae.models.base import ModelConfig, Posterior, SequenceModel

N_TRAIN, N_TEST = 400, 120


@dataclass
class LookupConfig(ModelConfig):
    pass


def _key(video: torch.Tensor) -> bytes:
    return hashlib.sha1(video.numpy().tobytes()).digest()


@pytest.fixture(scope="module")
def tables(procedural_h5):
    """(labels of every video by pixel hash, the first N_TEST test videos by (attributes, motion))."""
    labels, videos = {}, {}
    for split in ("train", "test"):
        ds = SpritesDataset(procedural_h5, split)
        for i, (video, attrs, action) in enumerate(zip(ds.videos, ds.attributes, ds.actions)):
            labels[_key(video)] = (attrs, action)
            if split == "test" and i < N_TEST:
                videos[(*attrs.tolist(), int(action))] = video
    return labels, videos


def _lookup(videos, attrs: tuple[int, ...], motion: int) -> torch.Tensor:
    """The test video with these attributes and motion, or (not among them) one with these attributes, or
    (none) one with this motion."""
    if (*attrs, motion) in videos:
        return videos[(*attrs, motion)]
    with_attrs = [v for k, v in videos.items() if k[:4] == attrs]
    return with_attrs[0] if with_attrs else next(v for k, v in videos.items() if k[4] == motion)


class Lookup(SequenceModel):
    """f = the four attributes of a known video, z = its motion; decode returns that real video."""

    model_type = "lookup"
    config_class = LookupConfig

    def __init__(self, tables) -> None:
        super().__init__()
        self.labels, self.videos = tables

    def encode(self, x):
        found = [self.labels[_key((v * 255).round().to(torch.uint8))] for v in x]
        f = torch.stack([attrs for attrs, _ in found]).float()
        z = torch.stack([action for _, action in found]).float()[:, None, None].expand(-1, x.shape[1], 1)
        return Posterior(f, None, f, z, None, z)

    def decode(self, f, z):
        found = [_lookup(self.videos, tuple(a.round().long().tolist()), int(m)) for a, m in zip(f, z[:, 0, 0].round())]
        return torch.stack(found).float() / 255.0

    def sample_dynamics(self, n, steps, means=False):
        return torch.randint(9, (n, 1, 1)).float().expand(-1, steps, 1)


class NoPrior(Lookup):
    """The perfect model without a dynamics prior: the prior source is skipped, the others run."""

    def sample_dynamics(self, n, steps, means=False):
        return SequenceModel.sample_dynamics(self, n, steps, means)


class Blind(Lookup):
    """Constant codes and always the same video: holds nothing and draws nothing."""

    def encode(self, x):
        post = super().encode(x)
        return Posterior(torch.zeros_like(post.f), None, torch.zeros_like(post.f), post.z, None, post.z)

    def decode(self, f, z):
        first = next(iter(self.videos.values()))
        return (first.float() / 255.0).expand(f.shape[0], -1, -1, -1, -1)


def test_linear_probe_oracles():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(6, (600,), generator=g)
    codes = torch.nn.functional.one_hot(labels, 6).float() + 0.1 * torch.randn(600, 6, generator=g)
    codes = torch.cat([codes, torch.randn(600, 10, generator=g)], dim=1)  # plus nuisance dimensions
    perfect = linear_probe(codes[:400], labels[:400], codes[400:], labels[400:], 6)
    assert perfect["accuracy"] == 1.0
    assert torch.tensor(perfect["confusion"]).sum() == 200
    assert torch.equal(torch.tensor(perfect["confusion"]).sum(1), torch.bincount(labels[400:], minlength=6))
    constant = linear_probe(torch.ones(400, 5), labels[:400], torch.ones(200, 5), labels[400:], 6)
    assert constant["accuracy"] <= 0.3  # one class for everything: its share of the test labels (~1/6)
    with pytest.raises(DsvaeError):
        linear_probe(codes[:400], labels[:300], codes[400:], labels[400:], 6)


def test_reconstruction_confusion_counts():
    result = reconstruction_confusion(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 0, 1, 2]), 3)
    assert result["accuracy"] == 0.75
    assert result["confusion"] == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]


def test_diagnostics_of_a_perfect_and_a_blind_model(procedural_h5, tiny_judge, tables):
    judge_acc = tiny_judge.test_accuracy
    perfect = attribute_diagnostics(Lookup(tables), tiny_judge.judge, procedural_h5, n_train=N_TRAIN,
                                    n_test=N_TEST, batch_size=50, progress=False)
    blind = attribute_diagnostics(Blind(tables), tiny_judge.judge, procedural_h5, n_train=N_TRAIN,
                                  n_test=N_TEST, batch_size=50, progress=False)
    no_prior = attribute_diagnostics(NoPrior(tables), tiny_judge.judge, procedural_h5, n_train=N_TRAIN,
                                     n_test=N_TEST, batch_size=50, progress=False)
    assert perfect["n_train"] == N_TRAIN and perfect["n_test"] == N_TEST and perfect["not_applicable"] == {}
    assert set(no_prior["not_applicable"]) == {"prior"}
    for name in ("body", "bottom", "top", "hair"):
        assert perfect[name]["probe"]["accuracy"] == 1.0
        assert set(perfect[name]) == {"probe", *Z_SOURCES}
        for source in Z_SOURCES:
            # decodes are real videos with the source's attributes: judged as well as the judge judges them
            assert perfect[name][source]["accuracy"] >= judge_acc[name] - 0.05
            assert blind[name][source]["accuracy"] <= 0.35
            assert sum(map(sum, blind[name][source]["confusion"])) == N_TEST
        assert blind[name]["probe"]["accuracy"] <= 0.35
        assert "prior" not in no_prior[name]
        assert no_prior[name]["swap"] == perfect[name]["swap"]  # same seeded partners
    with pytest.raises(DsvaeError):
        attribute_diagnostics(Blind(tables), tiny_judge.judge, procedural_h5, n_train=1, progress=False)


class WithStaticPrior(Lookup):
    """The perfect model with a static prior: the attributes of a random known test video."""

    def sample_static(self, n):
        keys = list(self.videos)
        return torch.tensor([keys[i][:4] for i in torch.randint(len(keys), (n,))]).float()


def test_certainty_scores_oracles():
    actions = torch.arange(9).repeat(20)
    sure = certainty_scores(torch.nn.functional.one_hot(actions, 9).float(), actions, torch.arange(180))
    assert sure["action_accuracy"] == 1.0 and sure["h_yx"] == 0.0 and sure["worst_1pct_share"] == 0.0
    assert sure["inception_score"] == pytest.approx(9.0) and sure["h_y"] == pytest.approx(math.log(9))
    unsure = certainty_scores(torch.full((180, 9), 1 / 9), actions, torch.arange(180))
    assert unsure["inception_score"] == pytest.approx(1.0) and unsure["h_yx"] == pytest.approx(math.log(9))
    assert unsure["entropy_quantiles"]["50"] == pytest.approx(math.log(9))
    assert unsure["worst_1pct_share"] == pytest.approx(1 / 180)  # one video of 180, all equally unsure
    # one unsure video among sure ones carries all of H(y|x)
    mixed = torch.nn.functional.one_hot(actions, 9).float()
    mixed[0] = 1 / 9
    assert certainty_scores(mixed, actions, torch.arange(180))["worst_1pct_share"] == pytest.approx(1.0)


def test_attribute_entropy_oracles():
    from dsvae.data.schema import FACTORS

    labels = torch.arange(6).repeat(10)
    sure = attribute_entropy({name: torch.nn.functional.one_hot(labels, 6).float() for name in FACTORS})
    assert sure == {"mean": 0.0, **{name: 0.0 for name in FACTORS}}
    blend = {name: torch.full((60, 6), 1 / 6) for name in FACTORS}
    blend[FACTORS[0]] = torch.tensor([0.5, 0.5, 0, 0, 0, 0]).expand(60, -1)  # two palettes at once
    doubt = attribute_entropy(blend)
    assert doubt[FACTORS[0]] == pytest.approx(math.log(2)) and doubt[FACTORS[1]] == pytest.approx(math.log(6))
    assert doubt["mean"] == pytest.approx((math.log(2) + 3 * math.log(6)) / 4)


def test_action_certainty_of_a_perfect_and_a_blind_model(procedural_h5, tiny_judge, tables):
    kwargs = dict(n_test=N_TEST, batch_size=50, progress=False)
    perfect = action_certainty(WithStaticPrior(tables), tiny_judge.judge, procedural_h5, scales=(1.0, 0.5), **kwargs)
    assert perfect["n_test"] == N_TEST and perfect["not_applicable"] == {}
    sources = perfect["sources"]
    assert set(sources) == {"real", "prior x 1", "prior x 0.5", *F_SOURCES}
    real, own = sources["real"], sources["reconstruction"]
    # decoding a video's own codes returns a real video with its motion: judged as the real videos are
    assert own["action_accuracy"] >= real["action_accuracy"] - 0.05
    assert own["inception_score"] == pytest.approx(real["inception_score"], rel=0.1)
    assert sources["prior x 1"] == sources["prior"]  # the same draws, unscaled
    assert sources["prior x 0.5"]["f_norm"] == pytest.approx(0.5 * sources["prior"]["f_norm"])
    assert "f_norm" not in real and own["f_norm"] > 0
    # the decoded real video's look is read as surely as the real one's
    assert own["attribute_entropy"]["mean"] == pytest.approx(real["attribute_entropy"]["mean"], abs=0.05)
    # the prior's draw depends on the seed only
    again = action_certainty(WithStaticPrior(tables), tiny_judge.judge, procedural_h5, scales=(), **kwargs)
    assert again["sources"]["prior"] == sources["prior"] and again["sources"]["swap"] == sources["swap"]
    # a decoder that ignores its codes: one video for all, one action judged, IS 1
    blind = action_certainty(Blind(tables), tiny_judge.judge, procedural_h5, scales=(), **kwargs)
    assert set(blind["not_applicable"]) == {"prior"} and set(blind["sources"]) == {"real", "swap", "reconstruction"}
    for source in ("swap", "reconstruction"):
        assert blind["sources"][source]["inception_score"] == pytest.approx(1.0, abs=0.05)
        assert blind["sources"][source]["action_accuracy"] <= 0.35
    with pytest.raises(DsvaeError):
        action_certainty(Blind(tables), tiny_judge.judge, procedural_h5, scales=(1.5,), progress=False)
    with pytest.raises(DsvaeError):
        action_certainty(Blind(tables), tiny_judge.judge, procedural_h5, n_test=1, progress=False)


class FittedPrior(WithStaticPrior):
    """The perfect model whose static prior counts as a fitted mixture (``static_prior_fitted`` > 0)."""

    def __init__(self, tables) -> None:
        super().__init__(tables)
        self.register_buffer("static_prior_fitted", torch.tensor(7))


def test_action_certainty_adds_the_standard_normal_beside_a_fitted_prior(procedural_h5, tiny_judge, tables):
    kwargs = dict(n_test=N_TEST, batch_size=50, scales=(), progress=False)
    plain = action_certainty(WithStaticPrior(tables), tiny_judge.judge, procedural_h5, **kwargs)["sources"]
    fitted = action_certainty(FittedPrior(tables), tiny_judge.judge, procedural_h5, **kwargs)["sources"]
    assert "N(0, I)" not in plain and set(fitted) == set(plain) | {"N(0, I)"}
    assert fitted["prior"] == plain["prior"]  # the model's own draw is unchanged
    # a perfect decoder keeps the motion under any static code
    assert fitted["N(0, I)"]["action_accuracy"] >= fitted["real"]["action_accuracy"] - 0.05
    assert fitted["N(0, I)"]["f_norm"] == pytest.approx(2.0, rel=0.15)  # 4 standard normal dimensions


def test_entropy_sources_oracles():
    gen = torch.Generator().manual_seed(0)
    per_video = torch.rand(300, generator=gen, dtype=torch.float64) * 0.01 + 1e-4
    everyone = torch.arange(300)
    # the doubt belongs to the video: every draw finds the same videos hard, as the real videos are
    tied = entropy_sources(per_video.expand(4, -1), per_video, everyone)
    assert tied["draw_correlation"] == pytest.approx(1.0) and tied["real_correlation"] == pytest.approx(1.0)
    assert tied["h_yx_per_draw"] == pytest.approx([float(per_video.mean())] * 4)
    assert tied["h_yx_median_draw"] == pytest.approx(float(per_video.mean()))
    # the doubt belongs to the draw: independent per draw, unrelated to the real video
    loose = entropy_sources(torch.rand(4, 300, generator=gen, dtype=torch.float64) * 0.01 + 1e-4, per_video, everyone)
    assert abs(loose["draw_correlation"]) < 0.15 and abs(loose["real_correlation"]) < 0.2
    # one unlucky draw per video: the median draw removes it, and the worst 2% carry it
    unlucky = torch.full((4, 300), 1e-4, dtype=torch.float64)
    unlucky[torch.arange(300) % 4, torch.arange(300)] = 1.0
    scores = entropy_sources(unlucky, per_video, everyone)
    assert scores["h_yx_median_draw"] == pytest.approx(1e-4)
    assert scores["worst_2pct_share"] == pytest.approx(24 / (300 + 900 * 1e-4), rel=1e-6)
    # the balanced positions are the ones averaged
    assert entropy_sources(unlucky, per_video, torch.tensor([0]))["h_yx_per_draw"] == pytest.approx([1.0, 1e-4, 1e-4, 1e-4])
    with pytest.raises(DsvaeError):
        entropy_sources(unlucky[:1], per_video, everyone)


def test_action_doubt_sources_of_a_perfect_model(procedural_h5, tiny_judge, tables):
    kwargs = dict(n_test=N_TEST, batch_size=50, draws=3, progress=False)
    perfect = action_doubt_sources(WithStaticPrior(tables), tiny_judge.judge, procedural_h5, **kwargs)
    assert perfect["n_test"] == N_TEST and perfect["draws"] == 3 and len(perfect["h_yx_per_draw"]) == 3
    # the decode is a real video of the same motion, its look drawn: the judge's doubt about the action follows
    # the real videos' on average, and every look it reads has a value
    assert sum(perfect["h_yx_per_draw"]) / 3 == pytest.approx(perfect["real_h_yx"], rel=0.5, abs=0.05)
    assert set(perfect["by_judged_look"]) == {"body", "bottom", "top", "hair"}
    assert all(len(v) == 6 for v in perfect["real_by_look"].values())
    for shares in perfect["judged_look_share"].values():  # every decode is read as one value of each attribute
        assert len(shares) == 6 and sum(shares) == pytest.approx(1.0)
    assert -1.0 <= perfect["draw_correlation"] <= 1.0 and 0.0 < perfect["worst_2pct_share"] <= 1.0
    again = action_doubt_sources(WithStaticPrior(tables), tiny_judge.judge, procedural_h5, **kwargs)
    assert again == perfect  # the draws follow the seed
    with pytest.raises(DsvaeError):
        action_doubt_sources(WithStaticPrior(tables), tiny_judge.judge, procedural_h5, draws=1, progress=False)
