"""The field's scores of generated sequences, computed from a judge's class probabilities.

For predictions p(y|x) of n generated videos (rows of a probability matrix):

- ``H(y|x)`` = mean over videos of the entropy of p(y|x) (low: the judge is confident);
- ``H(y)``  = entropy of the marginal p(y) = mean over videos of p(y|x) (high: diverse classes);
- ``IS``    = exp(mean over videos of KL(p(y|x) || p(y))) = exp(H(y) - H(y|x)).

Entropies use natural logarithms (nats), with 0 log 0 = 0; the largest H(y) over 9
classes is log 9 = 2.197, the largest IS 9.
"""

from __future__ import annotations

import math

import torch


def _as_probs(probs: torch.Tensor) -> torch.Tensor:
    p = torch.as_tensor(probs).double()
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"expected a non-empty (n, classes) probability matrix, got shape {tuple(p.shape)}")
    return p


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each row of ``probs`` (..., C) -> (...), with 0 log 0 = 0."""
    p = torch.as_tensor(probs).double()
    return -torch.special.xlogy(p, p).sum(-1)


def conditional_entropy(probs: torch.Tensor) -> float:
    """H(y|x): the mean entropy of the rows of ``probs`` (n, C)."""
    return float(entropy(_as_probs(probs)).mean())


def marginal_entropy(probs: torch.Tensor) -> float:
    """H(y): the entropy of the mean row of ``probs`` (n, C)."""
    return float(entropy(_as_probs(probs).mean(0)))


def inception_score(probs: torch.Tensor) -> float:
    """IS = exp(mean_x KL(p(y|x) || p(y))) of the rows of ``probs`` (n, C)."""
    p = _as_probs(probs)
    marginal = p.mean(0, keepdim=True)
    # KL(p || m) = sum p log p - sum p log m; the terms with p = 0 vanish
    kl = (torch.special.xlogy(p, p) - torch.special.xlogy(p, marginal.expand_as(p))).sum(-1)
    return math.exp(float(kl.mean()))


def action_scores(probs: torch.Tensor) -> dict[str, float]:
    """``{"inception_score", "h_yx", "h_y"}`` of the probability rows ``probs`` (n, C)."""
    return {
        "inception_score": inception_score(probs),
        "h_yx": conditional_entropy(probs),
        "h_y": marginal_entropy(probs),
    }


def accuracy(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """Share of equal entries of two label vectors."""
    predicted, target = torch.as_tensor(predicted), torch.as_tensor(target)
    if predicted.shape != target.shape or predicted.numel() == 0:
        raise ValueError(f"accuracy needs two non-empty label vectors of one shape, got {tuple(predicted.shape)} "
                         f"and {tuple(target.shape)}")
    return float((predicted == target).double().mean())


def balanced_subset(labels: torch.Tensor) -> torch.Tensor:
    """Positions of a class-balanced subset of ``labels`` (n,), in increasing order.

    With n_min = the smallest count among the classes that occur in ``labels``, the subset
    is the first n_min positions of every occurring class (in the order of ``labels``).
    Classes that do not occur at all are ignored.
    """
    labels = torch.as_tensor(labels).reshape(-1)
    if labels.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    classes, counts = torch.unique(labels, return_counts=True)
    n_min = int(counts.min())
    picks = [torch.nonzero(labels == c).reshape(-1)[:n_min] for c in classes]
    return torch.sort(torch.cat(picks)).values


def mean_std(values: list[float]) -> dict[str, float | list[float]]:
    """``{"mean", "std", "values"}`` of repeated measurements; std is the population std (ddof 0)."""
    t = torch.tensor(values, dtype=torch.float64)
    return {"mean": float(t.mean()), "std": float(t.std(correction=0)), "values": [float(v) for v in values]}
