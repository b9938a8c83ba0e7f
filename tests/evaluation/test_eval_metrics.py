import math

import pytest
import torch

from dsvae.evaluation import metrics


def _random_probs(gen: torch.Generator, n: int, c: int, sharpness: float) -> torch.Tensor:
    logits = sharpness * torch.randn(n, c, generator=gen, dtype=torch.float64)
    return torch.softmax(logits, dim=-1)


@pytest.mark.parametrize("draw", range(8))
def test_is_equals_exp_of_entropy_gap(draw):
    gen = torch.Generator().manual_seed(draw)
    n = int(torch.randint(1, 300, (1,), generator=gen))
    c = int(torch.randint(2, 12, (1,), generator=gen))
    probs = _random_probs(gen, n, c, sharpness=float(torch.rand(1, generator=gen)) * 10)
    if draw % 2:  # exact zeros must be handled as 0 log 0 = 0
        probs[probs < 0.05] = 0
        probs[probs.sum(1) == 0, 0] = 1
        probs = probs / probs.sum(1, keepdim=True)
    scores = metrics.action_scores(probs)
    assert scores["inception_score"] == pytest.approx(math.exp(scores["h_y"] - scores["h_yx"]), rel=1e-9)
    assert 0 <= scores["h_yx"] <= scores["h_y"] + 1e-12 <= math.log(c) + 1e-9
    assert 1 - 1e-9 <= scores["inception_score"] <= c + 1e-9


def test_one_hot_balanced_is_number_of_classes():
    labels = torch.arange(9).repeat(7)
    probs = torch.nn.functional.one_hot(labels, 9).double()
    scores = metrics.action_scores(probs)
    assert scores["inception_score"] == pytest.approx(9.0, rel=1e-12)
    assert scores["h_y"] == pytest.approx(math.log(9), rel=1e-12)
    assert scores["h_yx"] == 0.0


def test_constant_predictions():
    row = torch.softmax(torch.tensor([0.3, 2.0, -1.0, 0.0]), dim=0)
    probs = row.repeat(50, 1)
    scores = metrics.action_scores(probs)
    assert scores["inception_score"] == pytest.approx(1.0, abs=1e-12)
    assert scores["h_y"] == pytest.approx(scores["h_yx"], abs=1e-12)
    one_hot = torch.nn.functional.one_hot(torch.full((50,), 3), 9).float()
    assert metrics.action_scores(one_hot) == {"inception_score": 1.0, "h_yx": 0.0, "h_y": 0.0}


def test_balanced_subset_takes_first_n_of_each_class():
    labels = torch.tensor([2, 0, 2, 1, 0, 2, 1, 0, 0, 2])
    # counts: 0 -> 4, 1 -> 2, 2 -> 4; n = 2: first two of each class
    assert metrics.balanced_subset(labels).tolist() == [0, 1, 2, 3, 4, 6]
    # classes that never occur are ignored
    assert metrics.balanced_subset(torch.tensor([5, 5, 7])).tolist() == [0, 2]
    assert metrics.balanced_subset(torch.zeros(0, dtype=torch.long)).numel() == 0


def test_accuracy_and_mean_std():
    assert metrics.accuracy(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 0, 3, 0])) == 0.5
    with pytest.raises(ValueError):
        metrics.accuracy(torch.tensor([1]), torch.tensor([1, 2]))
    stats = metrics.mean_std([0.2, 0.4])
    assert stats["mean"] == pytest.approx(0.3) and stats["std"] == pytest.approx(0.1)
    assert stats["values"] == [0.2, 0.4]
