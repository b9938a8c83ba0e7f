"""Attribute diagnostics against oracles: codes that are the labels probe at 100%, constant codes at chance;
a decoder that returns the real video is judged like the judge judges real videos under every kind of
dynamics, one that ignores its codes is not."""

import hashlib
from dataclasses import dataclass

import pytest
import torch

from dsvae.data.dataset import SpritesDataset
from dsvae.errors import DsvaeError
from dsvae.evaluation.diagnostics import Z_SOURCES, attribute_diagnostics, linear_probe, reconstruction_confusion
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
    """The test video with these attributes and motion, or (not among them) one with these attributes."""
    if (*attrs, motion) in videos:
        return videos[(*attrs, motion)]
    return next(v for k, v in videos.items() if k[:4] == attrs)


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
