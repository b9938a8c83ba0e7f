"""An exponential moving average (EMA) of a model's weights, kept beside the trained ones.

After each optimisation step ``update`` moves every floating-point tensor of the model's state
(parameters and batch-norm statistics) a share ``1 - decay`` towards the model's current value;
integer buffers (batch counts) are copied. The decay warms up as ``min(decay, (1 + n) / (10 + n))``
after ``n`` updates, so the average does not start from the untrained initialisation. The
trainer saves the average in the checkpoint next to the raw weights, and ``dsvae.load`` uses it
by default (``weights="raw"`` gives the trained weights).
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from dsvae.errors import DsvaeError


class WeightAverage:
    """EMA of ``model.state_dict()``; ``state`` is the averaged state dict (on the model's device)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise DsvaeError(f"the weight-average decay must be in (0, 1), got {decay!r}")
        self.decay = float(decay)
        self.updates = 0
        self.model = model
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def current_decay(self) -> float:
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        weight = 1.0 - self.current_decay()
        live = self.model.state_dict()  # read each time: speed-ups may have replaced the tensors
        floats = [k for k, v in live.items() if v.is_floating_point()]
        if floats:
            torch._foreach_lerp_([self.state[k] for k in floats], [live[k].detach() for k in floats], weight)
        for k, v in live.items():
            if not v.is_floating_point():
                self.state[k].copy_(v)
        self.updates += 1

    def state_dict(self) -> dict[str, object]:
        """Plain tensors and numbers for a checkpoint."""
        return {"decay": self.decay, "updates": self.updates,
                "weights": {k: v.detach().cpu() for k, v in self.state.items()}}

    def load_state_dict(self, saved: Mapping[str, object]) -> None:
        weights = saved["weights"]
        if not isinstance(weights, Mapping) or set(weights) != set(self.state):
            raise DsvaeError("the checkpoint's weight average does not match the model")
        for k, v in weights.items():
            self.state[k].copy_(v)
        self.updates = int(saved["updates"])
