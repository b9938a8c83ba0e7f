"""Recompute batch-norm running statistics for a set of weights (``dsvae train --bn-recalibrate N``).

Eval mode normalises with running estimates of each batch-norm layer's input mean and variance. For
the trained weights they are a moving average (momentum 0.1) over the last training batches, taken under
nearly those weights. A weight average (``--ema-decay``) has no estimates of its own: its buffers are an
average of estimates taken under other weights. ``recalibrate_batchnorm`` resets the estimates and
recomputes them as a plain average over ``N`` training-mode forward passes with the given weights (no
gradients, the loss's own inputs: the model's augmented views included), the "update the batch-norm
statistics" step of stochastic weight averaging; ``recalibrate_state`` does it for a state dict such as
the weight average. No weight changes. Models without batch norm are left as they are.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from tqdm import tqdm

from dsvae.errors import DsvaeError


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """The model's batch-norm layers that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]],
                          forward: Callable[[Mapping[str, torch.Tensor]], object] | None = None,
                          autocast_dtype: torch.dtype | None = None, progress: bool = False,
                          total: int | None = None) -> int:
    """Replace every batch-norm layer's running mean and variance by their average over ``batches``.

    ``forward(batch)`` runs the model in training mode on one batch (default: ``model(batch,
    phase=model.phases[0])``, the first loss phase). Runs under autocast when ``autocast_dtype`` is
    given; ``total`` (the number of batches, when ``batches`` is a generator) sizes the progress bar. The
    layers' momentum and the model's training flag are restored afterwards. Returns the
    number of batches used (0 when the model has no batch norm; then nothing runs).
    """
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    if forward is None:
        phase = getattr(model, "phases", ("model",))[0]

        def forward(batch: Mapping[str, torch.Tensor]) -> object:
            return model(batch, phase=phase)

    device_type = next(model.parameters()).device.type
    saved = {layer: (layer.momentum, layer.running_mean.clone(), layer.running_var.clone(),
                     layer.num_batches_tracked.clone()) for layer in layers}
    was_training = model.training
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average over the batches
    model.train()
    used = 0
    try:
        for batch in tqdm(batches, desc="recalibrate batch norm", unit="batch", total=total, disable=not progress,
                          dynamic_ncols=True):
            with torch.autocast(device_type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
                forward(batch)
            used += 1
        if used == 0:
            raise DsvaeError("batch-norm recalibration needs at least one batch")
    except BaseException:
        for layer, (momentum, mean, var, count) in saved.items():  # nothing half-updated
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(var)
            layer.num_batches_tracked.copy_(count)
        raise
    finally:
        for layer, (momentum, *_rest) in saved.items():
            layer.momentum = momentum
        model.train(was_training)
    return used


def recalibrate_state(model: nn.Module, state: dict[str, torch.Tensor], batches: Iterable[Mapping[str, torch.Tensor]],
                      **kwargs) -> int:
    """Recalibrate the batch-norm buffers of another weight set ``state`` (a state dict of ``model``, e.g. a
    weight average), in place, using ``model`` as the workspace; ``model``'s own state is restored."""
    if not batchnorm_layers(model):
        return 0
    own = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    try:
        used = recalibrate_batchnorm(model, batches, **kwargs)
        new = model.state_dict()
        for layer_name, layer in model.named_modules():
            if isinstance(layer, _BatchNorm) and layer.track_running_stats:
                for buf in ("running_mean", "running_var", "num_batches_tracked"):
                    key = f"{layer_name}.{buf}" if layer_name else buf
                    state[key].copy_(new[key])
    finally:
        model.load_state_dict(own)
    return used
