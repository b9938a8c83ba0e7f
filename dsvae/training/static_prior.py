"""The fitted static prior: a mixture of Gaussians over the training sequences' static codes (``dsvae fit-prior``).

The DSVAE's KL term pulls every posterior q(f | x) towards N(0, I), but the codes the encoder gives the
training sequences do not fill N(0, I): on Sprites they form tight clusters (one per look) in a few
dimensions and sit near zero in the rest. A draw from N(0, I), what the dynamic test decodes, lands
between the clusters and is decoded as a blend of looks the decoder never had to draw. Ex-post density
estimation (as in two-stage VAEs and regularised autoencoders) fits a density to the codes the encoder
actually produces and samples from it instead: here a mixture of ``components`` diagonal Gaussians, fitted
by expectation-maximisation to the posterior means ``f_mean`` of the training split (the codes a polished
decoder was refit to, and those ``dsvae swap`` decodes). No labels are read; the encoder, the decoder and
the dynamics prior stay as they were, so only ``model.sample_static`` changes.

:func:`fit_gaussian_mixture` is the estimator, :func:`fit_static_prior` fits a model's mixture in place,
:func:`fit_static_prior_run` does it for a run's checkpoint (both weight sets when the run keeps a weight
average) and writes it back atomically, recording the fit under ``"static_prior"``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dsvae.data.dataset import SpritesDataset
from dsvae.errors import DsvaeError
from dsvae.training.polish import posterior_means

#: The buffers of a model's static prior mixture (see ``dsvae.models.dsvae``).
BUFFERS = ("static_prior_logits", "static_prior_mean", "static_prior_logvar", "static_prior_fitted")


@dataclass
class Mixture:
    """A fitted diagonal Gaussian mixture (float32): log-weights (K,), means and log-variances (K, D)."""

    log_weights: torch.Tensor
    means: torch.Tensor
    logvars: torch.Tensor
    log_likelihood: float  # mean log-density of the fitted points (nats per point)
    iterations: int
    converged: bool


def _log_components(x: torch.Tensor, means: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """log N(x_n; mean_k, diag(var_k)) -> (N, K), for x (N, D), means and var (K, D)."""
    inv = 1.0 / var
    quad = (x.pow(2) @ inv.T) - 2.0 * (x @ (means * inv).T) + (means.pow(2) * inv).sum(1)
    return -0.5 * (quad + var.log().sum(1) + x.shape[1] * math.log(2 * math.pi))


def fit_gaussian_mixture(x: torch.Tensor, components: int, iterations: int = 200, tol: float = 1e-6,
                         min_var: float = 1e-6, seed: int = 0) -> Mixture:
    """Fit a mixture of ``components`` diagonal Gaussians to the points ``x`` (N, D) by EM (float64).

    Initialisation: ``components`` distinct points chosen at random (seeded) as means, the data's variance
    per dimension for every component, equal weights. Stops when the mean log-likelihood rises by less than
    ``tol`` (nats per point) or after ``iterations`` rounds. Variances are floored at ``min_var``.
    """
    if x.ndim != 2 or not len(x):
        raise DsvaeError(f"need a non-empty (N, D) set of codes to fit, got shape {tuple(x.shape)}")
    if not isinstance(components, int) or isinstance(components, bool) or components < 1:
        raise DsvaeError(f"the mixture needs an integer number of components >= 1, got {components!r}")
    if components > len(x):
        raise DsvaeError(f"cannot fit {components} components to {len(x)} codes (at most one per code)")
    if iterations < 1 or not min_var > 0:
        raise DsvaeError("need iterations >= 1 and min_var > 0")
    x = x.detach().to("cpu", torch.float64)
    if not torch.isfinite(x).all():
        raise DsvaeError("the codes to fit contain NaN or infinite values")
    g = torch.Generator().manual_seed(seed)
    means = x[torch.randperm(len(x), generator=g)[:components]].clone()
    var = x.var(0, unbiased=False).clamp_min(min_var).expand(components, -1).clone()
    log_w = torch.full((components,), -math.log(components), dtype=torch.float64)
    previous, ll, converged, done = -math.inf, -math.inf, False, 0
    for done in range(1, iterations + 1):
        joint = log_w + _log_components(x, means, var)  # (N, K)
        norm = torch.logsumexp(joint, dim=1, keepdim=True)
        ll = float(norm.mean())
        resp = (joint - norm).exp()
        counts = resp.sum(0) + 1e-10
        log_w = counts.log() - math.log(len(x))
        means = (resp.T @ x) / counts[:, None]
        var = ((resp.T @ x.pow(2)) / counts[:, None] - means.pow(2)).clamp_min(min_var)
        if ll - previous < tol:
            converged = True
            break
        previous = ll
    return Mixture(log_weights=log_w.float(), means=means.float(), logvars=var.log().float(), log_likelihood=ll,
                   iterations=done, converged=converged)


def fitted_sequences(model: nn.Module) -> int | None:
    """How many training codes ``model``'s static prior mixture was fitted to: 0 while unfitted (K copies of
    N(0, I)), None for a model without a mixture (the paper's N(0, I), or no static prior at all)."""
    fitted = getattr(model, "static_prior_fitted", None)
    return int(fitted) if isinstance(fitted, torch.Tensor) else None


@torch.no_grad()
def reset_static_prior(state: dict[str, torch.Tensor]) -> None:
    """Set the static prior mixture held in ``state`` (a model's ``state_dict()`` or a weight average's state,
    changed in place) back to K copies of N(0, I), unfitted."""
    for name in BUFFERS:
        if name in state:
            state[name].zero_()


@dataclass
class StaticPriorFit:
    components: int
    sequences: int
    iterations: int
    converged: bool
    log_likelihood: float  # mean log-density of the training codes under the mixture (nats per sequence)
    standard_log_likelihood: float  # the same under N(0, I), for comparison
    seconds: float

    def record(self, data: str | os.PathLike, step: int | None = None) -> dict[str, Any]:
        """What a checkpoint keeps under ``"static_prior"`` (plain types)."""
        return {"data": str(data), "step": step, **dataclasses.asdict(self)}


def _check_model(model: nn.Module) -> int:
    k = getattr(getattr(model, "config", None), "static_prior_components", None)
    if not k or any(not hasattr(model, name) for name in BUFFERS):
        raise DsvaeError(f"{type(model).__name__} has no static prior mixture to fit (a DSVAE / cdsvae built with "
                         "static_prior_components >= 1)")
    return int(k)


@torch.no_grad()
def fit_static_prior(model: nn.Module, ds: SpritesDataset, iterations: int = 200, seed: int = 0,
                     autocast_dtype: torch.dtype | None = None, progress: bool = False) -> StaticPriorFit:
    """Fit ``model``'s static prior mixture (``static_prior_components`` Gaussians) to the posterior means of
    ``ds``'s sequences, in place (see the module doc). The model is left in eval mode."""
    components = _check_model(model)
    if len(ds) < components:
        raise DsvaeError(f"the static prior has {components} components but the data has {len(ds)} sequences")
    t0 = time.time()
    f_mean, _ = posterior_means(model, ds, autocast_dtype=autocast_dtype, progress=progress)
    mix = fit_gaussian_mixture(f_mean, components, iterations=iterations, seed=seed)
    standard = -0.5 * (f_mean.double().pow(2).sum(1) + f_mean.shape[1] * math.log(2 * math.pi)).mean()
    model.static_prior_logits.copy_(mix.log_weights)
    model.static_prior_mean.copy_(mix.means)
    model.static_prior_logvar.copy_(mix.logvars)
    model.static_prior_fitted.fill_(len(ds))
    model.eval()
    return StaticPriorFit(components=components, sequences=len(ds), iterations=mix.iterations,
                          converged=mix.converged, log_likelihood=mix.log_likelihood,
                          standard_log_likelihood=float(standard), seconds=time.time() - t0)


def fit_static_prior_run(run: str | os.PathLike, data: str | os.PathLike, components: int = 64,
                         iterations: int = 200, device: str = "auto", amp: str = "auto", seed: int = 0,
                         resident: bool = True, progress: bool = True,
                         out: str | os.PathLike | None = None) -> dict[str, Any]:
    """Fit a static prior mixture of ``components`` Gaussians for a run (a run folder, i.e. its ``last.pt``, or a
    checkpoint file) and write it back atomically: for its trained weights and, when it keeps one, its weight
    average (each with its own encoder's codes). A mixture fitted before is replaced. Returns the record stored
    under ``"static_prior"`` (``{"raw": ..., "ema": ...}``, each a :class:`StaticPriorFit` record) plus the
    checkpoint file. Training the run further leaves the mixture as fitted, so fit again afterwards.

    ``out`` writes the fitted checkpoint elsewhere and leaves ``run`` as it was: a path ending in ``.pt`` is a
    checkpoint file, anything else a new run folder (its ``checkpoints/last.pt``, with the source run's
    ``config.json``). A periodic checkpoint (``checkpoints/step_*.pt``) is fitted only that way: it keeps the
    run as trained, with the N(0, I) prior. The target is checked before any work."""
    from dsvae.models import build_model
    from dsvae.training import checkpoint as ckpt_io
    from dsvae.training.trainer import amp_dtype, resolve_device

    file = ckpt_io.resolve_checkpoint(run)
    target, run_config = ckpt_io.derived_target(file, out, "fitted prior")
    ckpt = ckpt_io.load_checkpoint(file)
    if "model_type" not in ckpt or "model" not in ckpt:
        raise DsvaeError(f"{file} has no model weights")
    config = {**ckpt.get("model_config", {}), "static_prior_components": components}
    try:
        model = build_model(ckpt["model_type"], config)
    except DsvaeError as exc:
        raise DsvaeError(f"{ckpt['model_type']} has no static prior to fit ({exc})") from exc
    _check_model(model)
    dev = resolve_device(device)
    model.to(dev)
    fresh = {k: v for k, v in model.state_dict().items() if k in BUFFERS}  # K copies of N(0, I)
    sets = [("raw", ckpt["model"])]
    if isinstance(ckpt.get("ema"), dict) and "weights" in ckpt["ema"]:
        sets.append(("ema", ckpt["ema"]["weights"]))
    records: dict[str, Any] = {}
    ds = SpritesDataset(data, "train", resident=resident, image_size=model.config.image_size, progress=progress)
    try:
        for which, state in sets:
            kept = {k: v for k, v in state.items() if k not in BUFFERS}
            model.load_state_dict({**kept, **fresh})
            fit = fit_static_prior(model, ds, iterations=iterations, seed=seed, autocast_dtype=amp_dtype(amp, dev),
                                   progress=progress)
            weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            if which == "ema":
                ckpt["ema"] = {**ckpt["ema"], "weights": weights}
            else:
                ckpt["model"] = weights
            records[which] = fit.record(data, ckpt.get("step"))
    finally:
        ds.close()
    ckpt["model_config"] = model.config.to_dict()
    ckpt["static_prior"] = records
    ckpt_io.write_derived(target, ckpt, run_config)
    return {**records, "checkpoint": str(target)}
