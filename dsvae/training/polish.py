"""Decoder polish: refit a trained model's decoder to its encoder's posterior means (``dsvae polish``).

A VAE's decoder is trained on posterior *samples*. Where the samples of two close classes overlap (the
DSVAE's static code for skin palettes that differ by ~30 levels per channel), the decoder's best answer to a
code in the overlap is the blend of both, and it learns to draw the blend even from the codes' means: the
darkest skin decoded a few levels lighter, read as the next one by the judge (BENCHMARKS.md section 7).

``polish_decoder`` freezes everything but ``model.decoder`` (and, by default, the decoder's layers that
read the codes) and fits it for a few minutes to reconstruct training sequences from their posterior
means, ``decode(f_mean, z_mean)`` (squared error summed over pixels, the DSVAE's reconstruction term),
with Adam and a cosine decay of the learning rate to zero over the budget; then recomputes the
decoder's batch-norm statistics under the new weights. Encoder and priors stay as they were, so every
code does too: only how codes are decoded changes. No labels are used (with ``pair_share`` the character ids
are read only to report how often a colour neighbour is the same character, as ``dsvae data mix`` does).
``swap_weight`` > 0 also asks that each sequence's f decoded with another sequence's z encodes back to both
codes (:func:`swap_consistency`; measured in BENCHMARKS.md section 7: within a fixed budget it lost to the
plain refit's extra steps, so it is off by default).
``prior_weight`` > 0 also asks that each sequence's z decoded with a static code drawn from the model's prior
(the dynamic test's situation) encodes back to that z (:func:`prior_consistency`): the motion must stay legible
whatever look the prior draws (BENCHMARKS.md section 7: the dynamic test's doubt comes mostly with draws
decoded as the darkest skin, whose arm all but disappears against the black background; measured there, it
kept IS but cost attribute accuracy in a fixed budget, so it is off by default).
``pair_share`` > 0 decodes that share of each batch from a *colour neighbour's* static code: sequence i's
frames are the target of ``decode(f_mean[j], z_mean[i])`` with j one of i's nearest training sequences by colour
histogram (:func:`dsvae.data.mixing.dataset_colour_neighbours`, the pairing ``dsvae data mix`` uses: the same
character in another motion, found without labels). That is the swap and static tests' decode, an f with
dynamics it was not encoded with, given a real target; the plain polish only decodes each f with its own z.
It costs nothing per step (the same decode, other codes), and the neighbours are found once (seconds).
Measured in BENCHMARKS.md section 7 (one trained seed): fewer misread skins in the static and swap tests
(25 -> 17 of 7,992 static decodes; with every layer refit 13 -> 8), IS unchanged; off by default.
``polish_run`` does it for the weights ``dsvae.load`` uses of a run (the weight average when the run
kept one) and writes them back into the checkpoint they came from (a run folder's ``last.pt``),
atomically; the run's periodic checkpoints (``checkpoints/step_*.pt``) keep the unpolished weights. With
``out`` it writes a new run folder (or checkpoint file) instead and leaves the source as it was; a
periodic checkpoint is polished only that way.
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
from tqdm.auto import tqdm

from dsvae.data.dataset import SpritesDataset
from dsvae.data.mixing import dataset_colour_neighbours, same_character_share
from dsvae.errors import DsvaeError
from dsvae.models.base import reconstruction_loss
from dsvae.training.batchnorm import recalibrate_batchnorm


@dataclass
class PolishResult:
    steps: int
    seconds: float
    lr: float
    batch_size: int
    input_layers_kept: bool
    loss_start: float  # mean reconstruction loss of the first and last 10% of the steps (at least one); with
    # pair_share, of the decodes as fitted (partly from neighbours' codes), so not comparable with a plain polish's
    loss_end: float
    bn_batches: int  # batches the decoder's batch-norm statistics were recomputed over (0: it has none)
    swap_weight: float = 0.0  # weight of the swap-consistency term (0: off)
    swap_start: float | None = None  # its mean over the first and last 10% of the steps (None: off)
    swap_end: float | None = None
    prior_weight: float = 0.0  # weight of the prior-consistency term (0: off)
    prior_start: float | None = None  # its mean over the first and last 10% of the steps (None: off)
    prior_end: float | None = None
    pair_share: float = 0.0  # share of the decodes whose static code came from a colour neighbour (0: off)
    pair_neighbours: int | None = None  # how many nearest sequences by colour each one's partner was drawn from
    pair_precision: float | None = None  # reported only: how often such a neighbour is the same character

    def record(self, weights: str, data: str | os.PathLike) -> dict[str, Any]:
        """What a checkpoint keeps under ``"polished"`` (plain types): which weights, the budget and losses."""
        return {"weights": weights, "data": str(data), **dataclasses.asdict(self)}


@torch.no_grad()
def posterior_means(model: nn.Module, ds: SpritesDataset, batch_size: int = 128,
                    autocast_dtype: torch.dtype | None = None, progress: bool = False,
                    with_logvar: bool = False) -> tuple[torch.Tensor, ...]:
    """``(f_mean (N, F), z_mean (N, T, Z))`` of every sequence of ``ds`` (float32, on the model's device);
    with ``with_logvar`` also the posterior log-variances ``(f_logvar, z_logvar)`` after them."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    parts: list[list[torch.Tensor]] = [[] for _ in range(4 if with_logvar else 2)]
    try:
        with tqdm(total=len(ds), desc="codes", unit="seq", disable=not progress, leave=False) as bar:
            for idx in torch.arange(len(ds)).split(batch_size):
                x = ds.batch(idx)["x"].to(device)
                with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                    enabled=autocast_dtype is not None):
                    post = model.encode(x)
                values = [post.f_mean, post.z_mean]
                if with_logvar:
                    if post.f_logvar is None or post.z_logvar is None:
                        raise DsvaeError(f"{type(model).__name__}'s encoder gives no posterior variances")
                    values += [post.f_logvar, post.z_logvar]
                for part, v in zip(parts, values):
                    part.append(v.float())
                bar.update(len(idx))
    finally:
        model.train(was_training)
    return tuple(torch.cat(part) for part in parts)


def swap_consistency(model: nn.Module, f: torch.Tensor, z: torch.Tensor, f_logvar: torch.Tensor,
                     z_logvar: torch.Tensor) -> torch.Tensor:
    """Per-example (B,) negative log-likelihood, up to constants, of the codes a swap was decoded from under
    the (frozen) encoder's posterior of the decoded swap: sequence i's static code ``f[i]`` with sequence
    i+1's dynamics ``z[i+1]`` (a roll of the batch) are decoded, re-encoded, and scored against the posterior
    means ``(f[i], z[i+1])`` with the variances of the sequences they came from,
    ``sum (mean' - code)^2 / (2 var)`` over the static and the dynamic dimensions.

    The plain polish fits ``decode(f_i, z_i)`` only, so the decoder never sees an f with dynamics other than
    its own (where the skin is drawn worst: BENCHMARKS.md section 7); this term asks that what it draws from
    mixed codes still encodes to those codes, as the swap and static tests need.
    No labels: the model's own encoder is the critic."""
    z_other, z_other_logvar = z.roll(1, 0), z_logvar.roll(1, 0)
    post = model.encode(model.decode(f, z_other))
    return _code_nll(post.f_mean, f, f_logvar) + _code_nll(post.z_mean, z_other, z_other_logvar)


def prior_consistency(model: nn.Module, z: torch.Tensor, z_logvar: torch.Tensor) -> torch.Tensor:
    """Per-example (B,) negative log-likelihood, up to constants, of each sequence's dynamics ``z`` under the
    (frozen) encoder's posterior of ``decode(f, z)`` with ``f`` drawn from the model's static prior
    (``model.sample_static``, as the dynamic test draws it), scored with the sequence's own variances.

    The dynamic test judges the motion of exactly such decodes; the plain polish only ever decodes a
    sequence's own f, and prior draws can land on looks (the darkest skins) whose limbs vanish against the
    background. No labels: the model's own encoder is the critic."""
    f = model.sample_static(z.shape[0]).to(z.device, z.dtype)
    post = model.encode(model.decode(f, z))
    return _code_nll(post.z_mean, z, z_logvar)


def _code_nll(mean: torch.Tensor, code: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``sum (mean - code)^2 / (2 exp(logvar))`` over every dimension but the first: (B,)."""
    return (mean.float() - code).pow(2).mul(0.5 * torch.exp(-logvar)).flatten(1).sum(-1)


def polish_decoder(model: nn.Module, ds: SpritesDataset, minutes: float | None = None, steps: int | None = None,
                   lr: float = 3e-4, batch_size: int = 32, bn_batches: int = 200, keep_input_layers: bool = True,
                   swap_weight: float = 0.0, prior_weight: float = 0.0, pair_share: float = 0.0,
                   neighbours: int = 3, autocast_dtype: torch.dtype | None = None,
                   seed: int = 0, progress: bool = False) -> PolishResult:
    """Fit ``model.decoder`` to decode the posterior means of ``ds``'s sequences (see the module doc).

    Stops after ``steps`` optimisation steps or ``minutes`` of wall time, whichever comes first (at least
    one must be given); the learning rate decays from ``lr`` to 0 along the same budget. Changes the
    decoder's weights and batch-norm statistics in place; the model is left in eval mode.

    ``keep_input_layers`` (default) leaves the layers that read the codes as trained
    (``decoder.input_layers()``): fitted to posterior means alone, they would also learn to respond to
    the static dimensions the encoder leaves unused (means ~0 there, so Adam's normalised steps move
    their weights freely), and codes drawn from the prior, which are not ~0 there, would decode worse.

    ``swap_weight`` > 0 adds ``swap_weight`` times :func:`swap_consistency` (the frozen encoder reading the
    decode of each sequence's f with another's z back as those codes) to the loss; it costs a second
    decode and an encode per step. ``prior_weight`` > 0 likewise adds ``prior_weight`` times
    :func:`prior_consistency` (each sequence's z decoded with a look drawn from the prior, read back as that z;
    the draws follow ``seed``), at the same cost. ``pair_share`` in [0, 1] decodes that share of each batch
    from the static code of one of the sequence's ``neighbours`` nearest sequences by colour (module doc), at
    no extra cost per step.
    """
    if minutes is None and steps is None:
        raise DsvaeError("give the polish a budget: minutes and/or steps")
    if (minutes is not None and not minutes > 0) or (steps is not None and steps < 1):
        raise DsvaeError(f"the polish budget must be positive, got minutes={minutes!r}, steps={steps!r}")
    if not lr > 0 or batch_size < 1 or bn_batches < 0:
        raise DsvaeError("need lr > 0, batch_size >= 1 and bn_batches >= 0")
    for name, weight in (("swap", swap_weight), ("prior", prior_weight)):
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
            raise DsvaeError(f"the {name}-consistency weight must be a number >= 0 (0 = off), got {weight!r}")
    if not (isinstance(pair_share, (int, float)) and 0.0 <= pair_share <= 1.0):
        raise DsvaeError(f"the pair share must be a number in [0, 1] (0 = off), got {pair_share!r}")
    if pair_share > 0 and (isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 1):
        raise DsvaeError(f"neighbours must be an integer >= 1, got {neighbours!r}")
    decoder = getattr(model, "decoder", None)
    if not isinstance(decoder, nn.Module):
        raise DsvaeError(f"{type(model).__name__} has no decoder module to polish")
    if len(ds) == 0:
        raise DsvaeError("the polish needs at least one training sequence")
    from dsvae.training.trainer import lr_factor, steps_in_budget

    device = next(model.parameters()).device
    kind = getattr(model.config, "recon_loss", "mse")
    swapping, drawing = swap_weight > 0, prior_weight > 0
    pairing = pair_share > 0
    if (swapping or pairing) and len(ds) < 2:
        raise DsvaeError(f"the {'swap-consistency term' if swapping else 'pair share'} needs at least two "
                         "training sequences")
    partners = precision = None
    if pairing:
        partners = dataset_colour_neighbours(ds, neighbours)
        precision = same_character_share(ds.characters, partners)
    codes = posterior_means(model, ds, autocast_dtype=autocast_dtype, progress=progress,
                            with_logvar=swapping or drawing)
    f_all, z_all = codes[:2]

    frozen = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    kept: set[int] = set()
    if keep_input_layers:
        layers = getattr(decoder, "input_layers", None)
        if layers is None:
            raise DsvaeError(f"{type(decoder).__name__} does not name its input layers; polish all layers "
                             "(keep_input_layers=False)")
        kept = {id(p) for layer in layers() for p in layer.parameters()}
    params = [p for p in decoder.parameters() if id(p) not in kept]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(seed)
    budget_s = 60.0 * minutes if minutes is not None else math.inf
    losses: list[float] = []
    swaps: list[float] = []
    priors: list[float] = []
    model.eval()
    decoder.train()
    t0 = time.time()
    budget = f" ({minutes:g} min)" if minutes is not None else ""
    bar = tqdm(total=steps if steps is not None else 0, desc=f"polish decoder{budget}", unit="step",
               disable=not progress, dynamic_ncols=True)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)  # the prior's draws (the global generator, restored afterwards)
            while steps is None or len(losses) < steps:
                elapsed = time.time() - t0
                if elapsed >= budget_s:
                    break
                done = max(len(losses) / steps if steps else 0.0, elapsed / budget_s)
                for group in opt.param_groups:
                    group["lr"] = lr * lr_factor("cosine", done, 0.0)
                idx = torch.randint(0, len(ds), (min(batch_size, len(ds)),), generator=g)
                x = ds.batch(idx)["x"].to(device)
                i = idx.to(f_all.device)
                source = i
                if partners is not None:  # this share of the batch takes its static code from a colour neighbour
                    swap_in = torch.rand(len(idx), generator=g) < pair_share
                    pick = partners[idx, torch.randint(0, partners.shape[1], (len(idx),), generator=g)]
                    source = torch.where(swap_in, pick, idx).to(f_all.device)
                with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                    enabled=autocast_dtype is not None):
                    x_hat = model.decode(f_all[source], z_all[i])
                    recon = reconstruction_loss(x_hat, x, kind).mean()
                    loss = recon
                    if swapping:
                        swap = swap_consistency(model, f_all[i], z_all[i], codes[2][i], codes[3][i]).mean()
                        swaps.append(float(swap.detach()))
                        loss = loss + swap_weight * swap
                    if drawing:
                        prior = prior_consistency(model, z_all[i], codes[3][i]).mean()
                        priors.append(float(prior.detach()))
                        loss = loss + prior_weight * prior
                if not torch.isfinite(loss):
                    raise DsvaeError(f"the polish loss became {loss.item()} at step {len(losses) + 1}; lower --lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(recon.detach()))
                if steps is None:  # the bar counts towards the steps the time budget allows at this pace
                    bar.total = steps_in_budget(len(losses), 0, time.time() - t0, budget_s, 10**12)
                bar.update(1)
                bar.set_postfix(recon=f"{losses[-1]:.4g}", **({"swap": f"{swaps[-1]:.4g}"} if swapping else {}),
                                **({"prior": f"{priors[-1]:.4g}"} if drawing else {}))
    finally:
        bar.close()
        for p, flag in frozen.items():
            p.requires_grad_(flag)

    def batches():
        for _ in range(bn_batches):
            yield {"idx": torch.randint(0, len(ds), (min(batch_size, len(ds)),), generator=g)}

    def forward(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        i = batch["idx"].to(f_all.device)
        return model.decode(f_all[i], z_all[i])

    used = recalibrate_batchnorm(decoder, batches(), forward=forward, autocast_dtype=autocast_dtype,
                                 progress=progress, total=bn_batches) if bn_batches else 0
    model.eval()
    k = max(1, len(losses) // 10)
    nan = float("nan")

    def ends(values: list[float], on: bool) -> tuple[float | None, float | None]:
        if not on:
            return None, None
        return (sum(values[:k]) / k, sum(values[-k:]) / k) if values else (nan, nan)

    loss_start, loss_end = ends(losses, True)
    swap_start, swap_end = ends(swaps, swapping)
    prior_start, prior_end = ends(priors, drawing)
    return PolishResult(steps=len(losses), seconds=time.time() - t0, lr=float(lr), batch_size=int(batch_size),
                        input_layers_kept=bool(keep_input_layers), loss_start=loss_start, loss_end=loss_end,
                        bn_batches=used,
                        swap_weight=float(swap_weight), swap_start=swap_start, swap_end=swap_end,
                        prior_weight=float(prior_weight), prior_start=prior_start, prior_end=prior_end,
                        pair_share=float(pair_share), pair_neighbours=int(partners.shape[1]) if pairing else None,
                        pair_precision=precision)


def polish_run(run: str | os.PathLike, data: str | os.PathLike, minutes: float | None = None,
               steps: int | None = None, lr: float = 3e-4, batch_size: int = 32, bn_batches: int = 200,
               keep_input_layers: bool = True, swap_weight: float = 0.0, prior_weight: float = 0.0,
               pair_share: float = 0.0, neighbours: int = 3, device: str = "auto", amp: str = "auto",
               seed: int = 0, resident: bool = True, progress: bool = True,
               out: str | os.PathLike | None = None) -> dict[str, Any]:
    """Polish the decoder of the weights ``dsvae.load(run)`` uses and write them back into the run's
    checkpoint they came from (atomically; ``run``: a run folder, i.e. its ``last.pt``, or a checkpoint
    file). Returns the record stored in the checkpoint under ``"polished"`` (weights "ema" or "raw",
    steps, seconds, losses, ...) plus the checkpoint file written. A checkpoint is polished once; the
    unpolished weights stay in the run's periodic checkpoints.

    ``out`` writes the polished checkpoint elsewhere and leaves ``run`` as it was: a path ending in
    ``.pt`` is a checkpoint file, anything else a new run folder (its ``checkpoints/last.pt``, with the
    source run's ``config.json`` when there is one), so that two polishes of one checkpoint can be
    compared. A periodic checkpoint (``checkpoints/step_*.pt``) is polished only with ``out``: in place
    it would lose the unpolished weights it keeps. The target is checked before any work."""
    from dsvae.training import checkpoint as ckpt_io
    from dsvae.training.trainer import amp_dtype, resolve_device

    file = ckpt_io.resolve_checkpoint(run)
    target, config = ckpt_io.derived_target(file, out, "polish")
    ckpt = ckpt_io.load_checkpoint(file)
    if "polished" in ckpt:
        raise DsvaeError(f"{file} is already polished ({ckpt['polished']['steps']} steps); the unpolished "
                         f"weights are in the run's periodic checkpoints ({file.parent / 'step_*.pt'})")
    model, which = ckpt_io.model_from_checkpoint(ckpt, "auto", file)
    dev = resolve_device(device)
    model.to(dev)
    ds = SpritesDataset(data, "train", resident=resident, image_size=model.config.image_size, progress=progress)
    try:
        result = polish_decoder(model, ds, minutes=minutes, steps=steps, lr=lr, batch_size=batch_size,
                                bn_batches=bn_batches, keep_input_layers=keep_input_layers, swap_weight=swap_weight,
                                prior_weight=prior_weight, pair_share=pair_share, neighbours=neighbours,
                                autocast_dtype=amp_dtype(amp, dev), seed=seed, progress=progress)
    finally:
        ds.close()
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if which == "ema":
        ckpt["ema"] = {**ckpt["ema"], "weights": weights}
    else:
        ckpt["model"] = weights
    record = result.record(which, data)
    ckpt["polished"] = record
    ckpt_io.write_derived(target, ckpt, config)
    return {**record, "checkpoint": str(target)}
