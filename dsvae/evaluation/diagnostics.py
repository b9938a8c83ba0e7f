"""Where does an attribute get lost: in the static code, or in the decoder?

Two measurements per attribute (skin, pants, top, hair), both on real test videos:

* :func:`linear_probe` reads the attribute from the static code ``f`` (mean of q(f|x)) with a
  multinomial logistic regression fitted on train-split codes: high accuracy means ``f`` holds it.
* :func:`reconstruction_confusion` decodes each test video from its own ``f`` and ``z`` and asks the
  judge which value it sees: a confusion matrix (rows: true value, columns: judged value).

A probe near 100% with a weak reconstruction score locates the loss in the decoder; a weak probe in
the encoder. :func:`attribute_diagnostics` runs both for every attribute.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from dsvae.data.dataset import SpritesDataset
from dsvae.data.schema import FACTORS, HEAD_CLASSES
from dsvae.errors import DsvaeError
from dsvae.evaluation.judge import Judge


def linear_probe(train_codes: torch.Tensor, train_labels: torch.Tensor, test_codes: torch.Tensor,
                 test_labels: torch.Tensor, classes: int, l2: float = 1e-4, iterations: int = 300) -> dict[str, Any]:
    """Test accuracy and confusion matrix of a logistic regression ``codes -> labels``.

    Codes are standardised with the train statistics; the fit is full-batch L-BFGS (deterministic).
    """
    if train_codes.ndim != 2 or test_codes.ndim != 2 or train_codes.shape[1] != test_codes.shape[1]:
        raise DsvaeError(f"codes must be (N, D) with the same D, got {tuple(train_codes.shape)} "
                         f"and {tuple(test_codes.shape)}")
    if len(train_codes) != len(train_labels) or len(test_codes) != len(test_labels) or len(train_codes) == 0:
        raise DsvaeError("need one label per code and at least one train code")
    x_train, x_test = train_codes.double(), test_codes.double()
    mean, std = x_train.mean(0), x_train.std(0, unbiased=False) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    weight = torch.zeros(x_train.shape[1], classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=iterations, line_search_fn="strong_wolfe")
    y_train = train_labels.long()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x_train @ weight + bias, y_train) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        predicted = (x_test @ weight + bias).argmax(-1)
    return _scores(test_labels.long(), predicted, classes)


def _scores(labels: torch.Tensor, predicted: torch.Tensor, classes: int) -> dict[str, Any]:
    confusion = torch.zeros(classes, classes, dtype=torch.long)
    confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    return {"accuracy": float((predicted == labels).float().mean()) if len(labels) else float("nan"),
            "confusion": confusion.tolist()}


@torch.no_grad()
def _codes(model: nn.Module, ds: SpritesDataset, positions: torch.Tensor, batch_size: int, autocast: bool,
           device: torch.device, judge: Judge | None, bar: tqdm) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(f means (N, D), judged attributes of the reconstructions {factor: (N,)}; empty without a judge)
    of the videos at dataset ``positions``."""
    codes, judged = [], {name: [] for name in FACTORS}
    for idx in positions.split(batch_size):
        x = ds.batch(idx)["x"].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            post = model.encode(x)
            codes.append(post.f_mean.float().flatten(1).cpu())
            if judge is not None:
                probs = judge.predict(model.decode(post.f_mean, post.z_mean).float())
                for name in FACTORS:
                    judged[name].append(probs[name].argmax(-1).cpu())
        bar.update(1)
    return torch.cat(codes), ({k: torch.cat(v) for k, v in judged.items()} if judge is not None else {})


def reconstruction_confusion(judged: torch.Tensor, labels: torch.Tensor, classes: int) -> dict[str, Any]:
    """Accuracy and confusion matrix of judged reconstructions against the true attribute values."""
    return _scores(labels.long(), judged.long(), classes)


def attribute_diagnostics(model: nn.Module, judge: Judge, data: str | os.PathLike, n_train: int = 3000,
                          n_test: int = 900, batch_size: int = 100, amp: bool = False,
                          device: str | torch.device = "cpu", seed: int = 0,
                          progress: bool = True) -> dict[str, Any]:
    """Per attribute: linear-probe accuracy of ``f`` and judged accuracy of reconstructions.

    ``n_train`` random train videos fit the probes (seeded); the first ``n_test`` test videos are
    probed and reconstructed. Returns ``{factor: {"probe": {...}, "reconstruction": {...}}}``
    plus ``n_train`` / ``n_test``.
    """
    if n_train < 2 or n_test < 1 or batch_size < 1:
        raise DsvaeError("need n_train >= 2, n_test >= 1 and batch_size >= 1")
    device = torch.device(device)
    model = model.to(device).eval()
    judge = judge.to(device).eval()
    size = getattr(getattr(model, "config", None), "image_size", None)  # frames at the model's size
    train = SpritesDataset(data, "train", resident=False, image_size=size)
    test = SpritesDataset(data, "test", resident=False, image_size=size, limit=n_test)
    try:
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n_train].sort().values
        every_test = torch.arange(len(test))
        steps = -(-len(pick) // batch_size) - (-len(test) // batch_size)
        with tqdm(total=steps, desc="diagnostics", unit="batch", disable=not progress, leave=False) as bar:
            train_codes, _ = _codes(model, train, pick, batch_size, amp, device, None, bar)
            test_codes, judged = _codes(model, test, every_test, batch_size, amp, device, judge, bar)
    finally:
        train.close()
        test.close()
    out: dict[str, Any] = {"n_train": len(pick), "n_test": len(test)}
    for k, name in enumerate(FACTORS):
        classes = HEAD_CLASSES[name]
        out[name] = {
            "probe": linear_probe(train_codes, train.attributes[pick, k], test_codes, test.attributes[:, k], classes),
            "reconstruction": reconstruction_confusion(judged[name], test.attributes[:, k], classes),
        }
    return out
