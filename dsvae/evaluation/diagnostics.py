"""Where does an attribute get lost: in the static code, or in the decoder, and under which dynamics?

Measurements per attribute (skin, pants, top, hair), all on real test videos:

* :func:`linear_probe` reads the attribute from the static code ``f`` (mean of q(f|x)) with a
  multinomial logistic regression fitted on train-split codes: high accuracy means ``f`` holds it.
* :func:`reconstruction_confusion` scores what the judge sees in decoded videos against the true
  values: a confusion matrix (rows: true value, columns: judged value). Each test video's ``f`` is
  decoded with three kinds of dynamics (:data:`Z_SOURCES`): its own ``z`` (the plain reconstruction),
  the ``z`` of another test video (a seeded derangement, the swap test's situation) and ``z`` rolled
  out from the model's prior (per-step means, the static test's situation; skipped for models
  without a dynamics prior).

A probe near 100% with a weak reconstruction score locates the loss in the decoder; a weak probe in
the encoder; a good reconstruction with weak prior-dynamics scores in how the decoder handles the
prior's dynamics. :func:`attribute_diagnostics` runs them all for every attribute.

:func:`action_certainty` asks the same of the dynamic test's action scores (IS, H(y|x)): each test
video's motion code ``z`` is decoded with static codes from :data:`F_SOURCES` (the static prior, as
the dynamic test does; the prior's draws scaled down; another video's ``f``; its own ``f``) and the
judge's certainty of the action is compared with its certainty on the real videos. It separates what
the motion code gives the judge from what the sampled appearance adds or takes away.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from dsvae.data.dataset import SpritesDataset
from dsvae.data.schema import FACTORS, HEAD_CLASSES, HEADS
from dsvae.errors import DsvaeError, NotApplicable
from dsvae.evaluation import metrics
from dsvae.evaluation.judge import Judge
from dsvae.evaluation.protocol import derangement
from dsvae.training.static_prior import fitted_sequences

#: The dynamics each test video's f is decoded with: its own z, another video's z, the prior's.
Z_SOURCES = ("reconstruction", "swap", "prior")
#: The static codes each test video's z is decoded with: the static prior's (the dynamic test's), another
#: video's f, its own f (:func:`action_certainty` adds the prior's draws scaled by each of its ``scales``).
F_SOURCES = ("prior", "swap", "reconstruction")


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
           device: torch.device, bar: tqdm) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means (f (N, D) on the CPU, z (N, T, Dz) on ``device``) of the videos at ``positions``."""
    fs, zs = [], []
    for idx in positions.split(batch_size):
        x = ds.batch(idx)["x"].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            post = model.encode(x)
        fs.append(post.f_mean.float().flatten(1))
        zs.append(post.z_mean.float())
        bar.update(1)
    return torch.cat(fs).cpu(), torch.cat(zs)


@torch.no_grad()
def _judged(model: nn.Module, judge: Judge, f: torch.Tensor, z: torch.Tensor, batch_size: int, autocast: bool,
            device: torch.device, bar: tqdm) -> dict[str, torch.Tensor]:
    """The judge's probabilities ``{head: (N, classes)}`` (CPU, float32) of ``decode(f, z)``, in batches."""
    judged: dict[str, list[torch.Tensor]] = {name: [] for name in HEADS}
    for s in range(0, len(f), batch_size):
        fb, zb = f[s:s + batch_size].to(device), z[s:s + batch_size].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            probs = judge.predict(model.decode(fb, zb).float())
        for name in HEADS:
            judged[name].append(probs[name].float().cpu())
        bar.update(1)
    return {k: torch.cat(v) for k, v in judged.items()}


def reconstruction_confusion(judged: torch.Tensor, labels: torch.Tensor, classes: int) -> dict[str, Any]:
    """Accuracy and confusion matrix of judged reconstructions against the true attribute values."""
    return _scores(labels.long(), judged.long(), classes)


def attribute_diagnostics(model: nn.Module, judge: Judge, data: str | os.PathLike, n_train: int = 3000,
                          n_test: int = 900, batch_size: int = 100, amp: bool = False,
                          device: str | torch.device = "cpu", seed: int = 0,
                          progress: bool = True) -> dict[str, Any]:
    """Per attribute: linear-probe accuracy of ``f`` and the judged accuracy of decodes of every test
    video's ``f`` under each of :data:`Z_SOURCES`.

    ``n_train`` random train videos fit the probes (seeded); the first ``n_test`` test videos are
    probed and decoded. ``seed`` also draws the swap partners and the prior's dynamics. Returns
    ``{factor: {"probe": {...}, "reconstruction": {...}, "swap": {...}, "prior": {...}}}`` plus
    ``n_train`` / ``n_test`` and ``not_applicable`` (the sources the model cannot provide, with why).
    """
    if n_train < 2 or n_test < 2 or batch_size < 1:
        raise DsvaeError("need n_train >= 2, n_test >= 2 and batch_size >= 1")
    device = torch.device(device)
    model = model.to(device).eval()
    judge = judge.to(device).eval()
    size = getattr(getattr(model, "config", None), "image_size", None)  # frames at the model's size
    train = SpritesDataset(data, "train", resident=False, image_size=size)
    test = SpritesDataset(data, "test", resident=False, image_size=size, limit=n_test)
    skipped: dict[str, str] = {}
    try:
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n_train].sort().values
        n = len(test)
        per_pass = -(-n // batch_size)
        steps = -(-len(pick) // batch_size) + per_pass * (1 + len(Z_SOURCES))
        with tqdm(total=steps, desc="diagnostics", unit="batch", disable=not progress, leave=False) as bar, \
                torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            train_f, _ = _codes(model, train, pick, batch_size, amp, device, bar)
            test_f, test_z = _codes(model, test, torch.arange(n), batch_size, amp, device, bar)
            torch.manual_seed(seed)
            sources: dict[str, torch.Tensor] = {
                "reconstruction": test_z,
                "swap": test_z[derangement(n, torch.Generator().manual_seed(seed)).to(test_z.device)],
            }
            try:
                sources["prior"] = model.sample_dynamics(n, test_z.shape[1], means=True).float()
            except NotApplicable as exc:
                skipped["prior"] = str(exc)
                bar.update(per_pass)
            judged = {name: _judged(model, judge, test_f, z, batch_size, amp, device, bar)
                      for name, z in sources.items()}
    finally:
        train.close()
        test.close()
    out: dict[str, Any] = {"n_train": len(pick), "n_test": n, "not_applicable": skipped}
    for k, name in enumerate(FACTORS):
        classes = HEAD_CLASSES[name]
        out[name] = {
            "probe": linear_probe(train_f, train.attributes[pick, k], test_f, test.attributes[:, k], classes),
            **{source: reconstruction_confusion(judged[source][name].argmax(-1), test.attributes[:, k], classes)
               for source in judged},
        }
    return out


def certainty_scores(probs: torch.Tensor, actions: torch.Tensor, balanced: torch.Tensor) -> dict[str, Any]:
    """The judge's action certainty on ``probs`` (N, 9): accuracy against ``actions`` (all N); IS, H(y|x),
    H(y), quantiles of the per-video entropy and the share of H(y|x) due to its most uncertain 1% of videos,
    all on the ``balanced`` positions (as the dynamic test scores them)."""
    p = probs[balanced]
    entropy = metrics.entropy(p)
    worst = entropy.sort(descending=True).values[:max(1, len(entropy) // 100)]
    quantiles = torch.quantile(entropy, torch.tensor([0.5, 0.9, 0.99], dtype=entropy.dtype))
    return {"action_accuracy": metrics.accuracy(probs.argmax(-1), actions), **metrics.action_scores(p),
            "entropy_quantiles": {q: float(v) for q, v in zip(("50", "90", "99"), quantiles)},
            "worst_1pct_share": float(worst.sum() / entropy.sum()) if float(entropy.sum()) > 0 else 0.0}


def attribute_entropy(probs: dict[str, torch.Tensor]) -> dict[str, float]:
    """How sure the judge is of the look: the mean entropy (nats) of each attribute head over the videos
    ``{factor: (N, classes)}``, and their average under ``"mean"``. Near 0 for a look the judge knows; a blend
    of two palettes is read with doubt."""
    per = {name: float(metrics.entropy(probs[name].float()).mean()) for name in FACTORS}
    return {"mean": sum(per.values()) / len(per), **per}


@torch.no_grad()
def action_certainty(model: nn.Module, judge: Judge, data: str | os.PathLike, n_test: int | None = None,
                     scales: tuple[float, ...] = (0.8,), batch_size: int = 100, amp: bool = False,
                     device: str | torch.device = "cpu", seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Where the dynamic test's action scores come from: the judge's certainty of the action of each test
    video's ``z`` (posterior means) decoded with static codes from each of :data:`F_SOURCES`, next to its
    certainty on the real videos (``"real"``).

    ``"prior"`` draws f with ``model.sample_static`` after ``torch.manual_seed(seed)`` (seed 0: the draw
    of repeat 0 of ``dsvae eval``'s dynamic test); ``"prior x s"`` decodes the same draws scaled by each s
    in ``scales`` (values in (0, 1] shrink them toward zero); for a model whose static prior is a fitted
    mixture (``dsvae fit-prior``), ``"N(0, I)"`` also draws f from the paper's prior; ``"swap"`` takes f from another
    test video (a seeded derangement), ``"reconstruction"`` its own. The first ``n_test`` test videos
    (all when None) in file order are used. Returns ``{"n_test", "balanced_videos", "not_applicable",
    "sources": {name: certainty_scores(...) + "attribute_entropy" (:func:`attribute_entropy`) + "f_norm" (the
    mean L2 norm of the decoded f)}}``.
    """
    if (n_test is not None and n_test < 2) or batch_size < 1:
        raise DsvaeError("need n_test >= 2 (or all) and batch_size >= 1")
    if any(not 0.0 < s <= 1.0 for s in scales):
        raise DsvaeError(f"scales must lie in (0, 1], got {list(scales)}")
    device = torch.device(device)
    model = model.to(device).eval()
    judge = judge.to(device).eval()
    size = getattr(getattr(model, "config", None), "image_size", None)  # frames at the model's size
    test = SpritesDataset(data, "test", resident=False, image_size=size, limit=n_test)
    skipped: dict[str, str] = {}
    try:
        n = len(test)
        actions = torch.as_tensor(test.actions).long()
        balanced = metrics.balanced_subset(actions)
        per_pass = -(-n // batch_size)
        standard = bool(fitted_sequences(model))  # a fitted static prior mixture (dsvae fit-prior)
        steps = per_pass * (1 + len(F_SOURCES) + len(scales) + int(standard))
        with tqdm(total=steps, desc="action certainty", unit="batch", disable=not progress, leave=False) as bar, \
                torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            f_means, z_means = [], []
            real_probs: dict[str, list[torch.Tensor]] = {name: [] for name in HEADS}
            for idx in torch.arange(n).split(batch_size):
                x = test.batch(idx)["x"].to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    post = model.encode(x)
                    judged = judge.predict(x)
                for name in HEADS:
                    real_probs[name].append(judged[name].float().cpu())
                f_means.append(post.f_mean.float())
                z_means.append(post.z_mean.float())
                bar.update(1)
            f_mean, z_mean = torch.cat(f_means), torch.cat(z_means)
            codes: dict[str, torch.Tensor] = {}
            torch.manual_seed(seed)
            try:
                prior = model.sample_static(n).to(device, torch.float32)
            except NotApplicable as exc:
                skipped["prior"] = str(exc)
                bar.update(per_pass * (1 + len(scales)))
            else:
                codes["prior"] = prior
                codes.update({f"prior x {s:g}": s * prior for s in scales})
            if standard:  # the paper's N(0, I) beside the fitted mixture, same seed
                torch.manual_seed(seed)
                codes["N(0, I)"] = torch.randn(n, f_mean.shape[1], device=device)
            codes["swap"] = f_mean[derangement(n, torch.Generator().manual_seed(seed)).to(device)]
            codes["reconstruction"] = f_mean
            real = {name: torch.cat(v) for name, v in real_probs.items()}
            results = {"real": {**certainty_scores(real["action"], actions, balanced),
                                "attribute_entropy": attribute_entropy(real)}}
            for name, f in codes.items():
                probs = _judged(model, judge, f, z_mean, batch_size, amp, device, bar)
                results[name] = {**certainty_scores(probs["action"], actions, balanced),
                                 "attribute_entropy": attribute_entropy(probs),
                                 "f_norm": float(f.flatten(1).norm(dim=1).mean())}
    finally:
        test.close()
    return {"n_test": n, "balanced_videos": len(balanced), "not_applicable": skipped, "sources": results}


def _log(entropy: torch.Tensor) -> torch.Tensor:
    """log of entropies (float64), floored at 1e-12 so that a certain judge (entropy 0) stays finite."""
    return entropy.double().clamp_min(1e-12).log()


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two vectors; 0 where either is constant."""
    a, b = a - a.mean(), b - b.mean()
    denom = float(a.norm() * b.norm())
    return float((a * b).sum()) / denom if denom > 0 else 0.0


def entropy_sources(entropy: torch.Tensor, real: torch.Tensor, balanced: torch.Tensor) -> dict[str, Any]:
    """Is the judge's doubt about the action (per-video entropy, ``entropy`` (K, N): K independent draws of
    the static code for each of N videos) tied to the video (its motion code) or to the look drawn for it?

    - ``draw_correlation``: the mean correlation of the log-entropies of two draws over the videos: ~1 when
      the doubt belongs to the video (every draw finds the same videos hard), ~0 when it belongs to the draw;
    - ``real_correlation``: the correlation of the videos' mean log-entropy over the draws with the
      log-entropy of the real video (``real`` (N,)): does the decode inherit the real video's ambiguity?
    - ``h_yx_per_draw``: H(y|x) of each draw, and ``h_yx_median_draw``: what it would be if every video got
      its median draw (the typical look rather than an unlucky one);
    - ``worst_2pct_share``: the share of the entropy summed over every (draw, video) due to its worst 2%.
    H(y|x) values are means over the ``balanced`` positions, as the dynamic test scores them."""
    if entropy.ndim != 2 or entropy.shape[0] < 2 or entropy.shape[1] != real.shape[0]:
        raise DsvaeError(f"need entropies (K >= 2 draws, N videos) and N real ones, got {tuple(entropy.shape)} "
                         f"and {tuple(real.shape)}")
    entropy = entropy.contiguous()  # median(0) of a stride-0 (expanded) tensor is wrong in torch 2.14
    k, logs = entropy.shape[0], _log(entropy)
    pairs = [_corr(logs[a], logs[b]) for a in range(k) for b in range(a + 1, k)]
    flat = entropy.flatten().double().sort(descending=True).values
    total = float(flat.sum())
    return {"draws": k,
            "h_yx_per_draw": [float(e[balanced].double().mean()) for e in entropy],
            "h_yx_median_draw": float(entropy.median(0).values[balanced].double().mean()),
            "draw_correlation": sum(pairs) / len(pairs),
            "real_correlation": _corr(logs.mean(0), _log(real)),
            "worst_2pct_share": float(flat[:max(1, len(flat) // 50)].sum()) / total if total > 0 else 0.0}


@torch.no_grad()
def action_doubt_sources(model: nn.Module, judge: Judge, data: str | os.PathLike, draws: int = 4,
                         n_test: int | None = None, batch_size: int = 100, amp: bool = False,
                         device: str | torch.device = "cpu", seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Where the dynamic test's H(y|x) comes from, video or look: each test video's ``z`` (posterior means)
    is decoded with ``draws`` independent static codes from the model's prior (``model.sample_static``
    after ``torch.manual_seed(seed + d)``), the judge's per-video entropy of the action is split by
    :func:`entropy_sources`, and its mean is given per value of each attribute as the judge reads the decode
    (``by_judged_look``: which looks the doubt comes with; ``judged_look_share``: how often the judge reads
    each value in the decodes, 1/6 each in the data) next to the real videos' per true value
    (``real_by_look``). Returns those plus ``n_test`` and ``balanced_videos``."""
    if draws < 2 or batch_size < 1 or (n_test is not None and n_test < 2):
        raise DsvaeError("need draws >= 2, batch_size >= 1 and n_test >= 2 (or all)")
    device = torch.device(device)
    model = model.to(device).eval()
    judge = judge.to(device).eval()
    size = getattr(getattr(model, "config", None), "image_size", None)
    test = SpritesDataset(data, "test", resident=False, image_size=size, limit=n_test)
    try:
        n = len(test)
        actions = torch.as_tensor(test.actions).long()
        attributes = torch.as_tensor(test.attributes).long()
        balanced = metrics.balanced_subset(actions)
        per_pass = -(-n // batch_size)
        with tqdm(total=per_pass * (1 + draws), desc="action doubt", unit="batch", disable=not progress,
                  leave=False) as bar, torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            z_means, real = [], []
            for idx in torch.arange(n).split(batch_size):
                x = test.batch(idx)["x"].to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    z_means.append(model.encode(x).z_mean.float())
                    real.append(judge.predict(x)["action"].float().cpu())
                bar.update(1)
            z_mean = torch.cat(z_means)
            entropies, looks = [], []
            for d in range(draws):
                torch.manual_seed(seed + d)
                probs = _judged(model, judge, model.sample_static(n).to(device, torch.float32), z_mean,
                                batch_size, amp, device, bar)
                entropies.append(metrics.entropy(probs["action"]))
                looks.append({name: probs[name].argmax(-1) for name in FACTORS})
    finally:
        test.close()
    entropy, real_entropy = torch.stack(entropies), metrics.entropy(torch.cat(real))
    flat = entropy.flatten()

    def mean_where(values: torch.Tensor, mask: torch.Tensor) -> float | None:
        return float(values[mask].double().mean()) if bool(mask.any()) else None

    judged = {name: torch.cat([look[name] for look in looks]) for name in FACTORS}
    by_look = {name: [mean_where(flat, judged[name] == v) for v in range(HEAD_CLASSES[name])] for name in FACTORS}
    share = {name: (torch.bincount(judged[name], minlength=HEAD_CLASSES[name]).double() / len(flat)).tolist()
             for name in FACTORS}
    real_by_look = {name: [mean_where(real_entropy, attributes[:, k] == v) for v in range(HEAD_CLASSES[name])]
                    for k, name in enumerate(FACTORS)}
    return {"n_test": n, "balanced_videos": len(balanced), "real_h_yx": float(real_entropy[balanced].mean()),
            **entropy_sources(entropy, real_entropy, balanced), "by_judged_look": by_look,
            "judged_look_share": share, "real_by_look": real_by_look}
