"""The protocol every dsvae model follows, so the trainer, evaluator and swap tools treat them alike.

A model is an ``nn.Module`` built from a config dataclass (the constructor
arguments, saved with the weights, as in diffusers), with:

- ``encode(x) -> Posterior``: x float (B, T, 3, H, W) in [0, 1]; means, log-variances and
  samples of a static code f (B, F) and a dynamic code z (B, T, Z);
- ``decode(f, z) -> x``: float (B, T, 3, H, W) in [0, 1];
- ``sample_static(n)`` and ``sample_dynamics(n, T)``: codes from the model's prior (models
  without such a prior raise :class:`~dsvae.errors.NotApplicable`);
- ``loss(batch, phase) -> dict`` of named scalar terms, ``"loss"`` being the one optimised;
  ``forward`` is ``loss`` (so DDP wraps it) and ``model(x)`` accepts a bare tensor too;
- ``phases``: the optimisation phases of one training step, each with its own optimizer
  over ``phase_parameters(phase)`` (one phase for VAEs, three for adversarial autoencoders).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Mapping

import torch
from torch import nn

from dsvae.errors import DsvaeError, NotApplicable


@dataclass
class Posterior:
    """What ``encode`` returns. ``*_logvar`` may be None for deterministic encoders."""

    f_mean: torch.Tensor
    f_logvar: torch.Tensor | None
    f: torch.Tensor
    z_mean: torch.Tensor
    z_logvar: torch.Tensor | None
    z: torch.Tensor


@dataclass
class ModelConfig:
    """Base of model configs: every field is a constructor argument saved with the weights."""

    def validate(self) -> None:
        """Raise DsvaeError for bad values; subclasses extend."""

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ModelConfig":
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise DsvaeError(f"unknown {cls.__name__} option(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
        kwargs = {}
        for key, value in values.items():
            default = names[key].default
            if isinstance(default, tuple) and isinstance(value, list):
                value = tuple(value)
            kwargs[key] = value
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg


def check_positive(cfg: ModelConfig, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        values = value if isinstance(value, (tuple, list)) else (value,)
        if not values or any(not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0 for v in values):
            raise DsvaeError(f"{type(cfg).__name__}.{name} must be positive, got {value!r}")


def check_choice(cfg: ModelConfig, name: str, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    if getattr(cfg, name) not in choices:
        raise DsvaeError(f"{type(cfg).__name__}.{name} must be one of {', '.join(choices)}, got {getattr(cfg, name)!r}")


class SequenceModel(nn.Module):
    """Base class of every dsvae model (see the module docstring for the protocol)."""

    model_type: ClassVar[str] = ""
    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    phases: ClassVar[tuple[str, ...]] = ("main",)
    #: True when training needs labels (the trainer then passes them; the DSVAE never does).
    uses_labels: ClassVar[bool] = False
    #: True when static/dynamic codes come from a real sequence model (not a per-frame view).
    has_sequence_prior: ClassVar[bool] = False

    def __init__(self, config: ModelConfig | Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__()
        if config is None or isinstance(config, Mapping):
            config = self.config_class.from_dict({**dict(config or {}), **kwargs})
        elif kwargs:
            config = self.config_class.from_dict({**config.to_dict(), **kwargs})
        else:
            config.validate()
        self.config = config
        # (global batch, offset) while training data-parallel: see ``randn``.
        self.noise_context: tuple[int, int] | None = None

    # -- protocol -------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> Posterior:
        raise NotImplementedError

    def decode(self, f: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample_static(self, n: int) -> torch.Tensor:
        raise NotApplicable(f"{self.model_type} has no prior over static codes")

    def sample_dynamics(self, n: int, steps: int, means: bool = False) -> torch.Tensor:
        raise NotApplicable(f"{self.model_type} has no prior over dynamics")

    def loss(self, batch: Mapping[str, torch.Tensor], phase: str = "main") -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def partner_neighbours(self) -> int:
        """How many nearest training sequences by colour each sequence's partner is drawn from, when the loss
        reads partner frames (``batch["x_pair"]``, passed by the trainer); 0 (the default): it reads none."""
        return 0

    def phase_parameters(self, phase: str) -> list[nn.Parameter]:
        if phase != "main":
            raise KeyError(phase)
        return [p for p in self.parameters() if p.requires_grad]

    def optimizer_options(self, phase: str) -> dict[str, Any]:
        """Extra Adam options of a phase (e.g. ``betas`` for adversarial phases)."""
        return {}

    def forward(self, batch: Mapping[str, torch.Tensor] | torch.Tensor, phase: str = "main") -> dict[str, torch.Tensor]:
        if isinstance(batch, torch.Tensor):
            batch = {"x": batch}
        return self.loss(batch, phase)

    # -- helpers --------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode the posterior means of x."""
        post = self.encode(x)
        return self.decode(post.f_mean, post.z_mean)

    def randn(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """Standard normal noise of ``shape`` (batch first).

        While training data-parallel the trainer sets ``noise_context = (global_batch, offset)``:
        every rank then draws the noise of the whole global batch from its (identically seeded)
        generator and keeps its own slice, so N processes see exactly the noise one process
        would see for the same global batch.
        """
        if self.noise_context is None:
            return torch.randn(shape, device=like.device, dtype=like.dtype)
        total, offset = self.noise_context
        full = torch.randn((total,) + tuple(shape[1:]), device=like.device, dtype=like.dtype)
        return full[offset:offset + shape[0]]

    def reparameterize(self, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return mean + torch.exp(0.5 * logvar) * self.randn(tuple(mean.shape), mean)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def kl_normal_std(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) summed over all but the batch dimension -> (B,)."""
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)
    return kl.flatten(1).sum(1)


def kl_normal(mean_q: torch.Tensor, logvar_q: torch.Tensor, mean_p: torch.Tensor, logvar_p: torch.Tensor) -> torch.Tensor:
    """KL(N_q || N_p) of diagonal Gaussians, summed over all but the batch dimension -> (B,)."""
    kl = 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mean_q - mean_p).pow(2)) / logvar_p.exp() - 1.0)
    return kl.flatten(1).sum(1)


def reconstruction_loss(x_hat: torch.Tensor, x: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-example reconstruction loss summed over pixels (and frames) -> (B,).

    ``mse``: squared error (a Gaussian likelihood with fixed variance, up to constants);
    ``bce``: Bernoulli cross-entropy on intensities in [0, 1].
    """
    if kind == "mse":
        err = (x_hat.float() - x.float()).pow(2)
    elif kind == "bce":
        p = x_hat.float().clamp(1e-6, 1 - 1e-6)
        err = -(x * torch.log(p) + (1 - x) * torch.log1p(-p))
    else:
        raise ValueError(kind)
    return err.flatten(1).sum(1)

