"""Image-level baselines: an autoencoder, a VAE and a VAE with an auxiliary classifier.

They are trained on sprite *frames*: every frame of a sequence is one image carrying
the sequence's labels, and the trainer's (B, T, 3, H, W) batches are folded into
B*T images. Besides the per-frame API (``encode_frames`` / ``decode_frames``) every
baseline offers the sequence protocol of :mod:`dsvae.models.base` through the
*naive sequence view* of a frame model (:class:`FrameModel`):

- the frame code c_t is the whole decoder input of frame t;
- the static code is its time average, f = mean_t c_t;
- the dynamic code is each frame's residual, z_t = c_t - f;
- ``decode(f, z)`` decodes f + z_t frame by frame, so ``decode(encode(x))`` is the frame
  model's reconstruction and swapping f gives "A's mean code + B's residuals".

There is no prior over sequences, so ``sample_static`` / ``sample_dynamics`` raise
:class:`~dsvae.errors.NotApplicable`; image priors are sampled with ``sample(n)``.

For a stochastic encoder with frame posteriors N(m_t, v_t) (independent over t) the
posterior fields are the exact marginals of f and z_t: ``f_mean = mean_t m_t`` with
variance ``sum_t v_t / T^2``, ``z_mean_t = m_t - f_mean`` with variance
``v_t (1 - 2/T) + sum_s v_s / T^2``; ``f`` and ``z`` are computed from one sample of
every frame code, so ``decode(f, z)`` decodes exactly those samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from einops import repeat
from torch import nn

from dsvae.data.schema import FACTORS, HEAD_CLASSES, HEADS
from dsvae.errors import DsvaeError, NotApplicable
from dsvae.models.base import (
    ModelConfig,
    Posterior,
    SequenceModel,
    check_choice,
    check_positive,
    kl_normal_std,
    reconstruction_loss,
)
from dsvae.models.blocks import NORMS, FrameDecoder, FrameEncoder, image_size_for, mlp

#: Log-variance reported for code dimensions that are deterministic (e.g. a one-hot class part).
LOG_VAR_DETERMINISTIC = math.log(1e-8)
#: How the classifier's prediction enters the decoder of the ``cvae``.
LABEL_MODES = ("straight-through", "soft")


# ----------------------------------------------------------------------------------
# shared pieces
# ----------------------------------------------------------------------------------
@dataclass
class FrameCode:
    """What ``encode_frames`` returns; every tensor has the images' leading shape plus a code axis.

    ``code`` is what the decoder consumes (a posterior sample for stochastic encoders),
    ``mean`` its mean, ``logvar`` its log-variance (None when deterministic), ``logits``
    the class logits of models that predict a label (else None).
    """

    code: torch.Tensor
    mean: torch.Tensor
    logvar: torch.Tensor | None = None
    logits: torch.Tensor | None = None

    def apply(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "FrameCode":
        return FrameCode(**{f.name: (None if getattr(self, f.name) is None else fn(getattr(self, f.name)))
                            for f in fields(self)})


def validate_backbone(cfg: ModelConfig) -> None:
    """Checks shared by every frame model config (image size, widths, norm, reconstruction loss)."""
    check_positive(cfg, "image_size", "widths", "feature_dim")
    check_choice(cfg, "norm", NORMS)
    check_choice(cfg, "recon_loss", ("mse", "bce"))
    size = image_size_for(cfg.widths)
    if size != cfg.image_size:
        raise DsvaeError(f"{type(cfg).__name__}: {len(cfg.widths)} encoder widths give {size}x{size} images, "
                         f"but image_size is {cfg.image_size}")


def check_non_negative(cfg: ModelConfig, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise DsvaeError(f"{type(cfg).__name__}.{name} must be >= 0, got {value!r}")


def check_label(cfg: ModelConfig) -> None:
    check_choice(cfg, "label", HEADS)


def frame_labels(batch: Mapping[str, torch.Tensor], label: str, frames: int) -> torch.Tensor:
    """Per-frame class labels (B, T) of factor ``label`` from a trainer batch (sequence labels repeated)."""
    key = "action" if label == "action" else "attributes"
    if key not in batch:
        raise DsvaeError(f"this model trains on '{label}' labels, but the batch has no '{key}' field")
    y = batch["action"] if label == "action" else batch["attributes"][:, FACTORS.index(label)]
    return repeat(y.long(), "b -> b t", t=frames)


def categorical_from_normal(noise: torch.Tensor, classes: int) -> torch.Tensor:
    """Uniform class indices in 0..classes-1 from standard normal noise (through the normal CDF).

    Drawing categories this way lets every random choice go through ``SequenceModel.randn``
    (and so stay exact under data parallelism).
    """
    u = 0.5 * (1.0 + torch.erf(noise.float() / math.sqrt(2.0)))
    return (u * classes).long().clamp_(0, classes - 1)


def frame_mse(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean squared error per pixel (a readable, detached progress number)."""
    return (x_hat.detach().float() - x.float()).pow(2).mean()


def parameters_of(*modules: nn.Module) -> list[nn.Parameter]:
    seen: set[int] = set()
    out = []
    for module in modules:
        for p in module.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


class FrameModel(SequenceModel):
    """Base of the image-level baselines: a frame model plus its naive sequence view (module docstring)."""

    #: Number of classes of the predicted / conditioning label (0 when the model has none).
    label_classes: int = 0

    # -- frame API ------------------------------------------------------------------
    def encode_frames(self, images: torch.Tensor) -> FrameCode:
        """Images (..., 3, H, W) in [0, 1] -> per-image codes (..., D)."""
        raise NotImplementedError

    def decode_frames(self, code: torch.Tensor) -> torch.Tensor:
        """Codes (..., D) -> images (..., 3, H, W) in [0, 1]."""
        lead = code.shape[:-1]
        images = self.decoder(code.reshape(-1, code.shape[-1]))
        return images.reshape(*lead, *images.shape[1:])

    @property
    def code_dim(self) -> int:
        """Size of the frame code (= the decoder input = the sizes of f and z_t in the naive view)."""
        return self.decoder.in_dim

    def sample(self, n: int) -> torch.Tensor:
        """n images (n, 3, H, W) decoded from the model's prior over frame codes."""
        raise NotApplicable(f"{self.model_type} has no prior over codes to sample from")

    def classify_frames(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits (..., K) of the model's label for images (..., 3, H, W)."""
        raise NotApplicable(f"{self.model_type} does not predict a label")

    # -- naive sequence view ----------------------------------------------------------
    def encode(self, x: torch.Tensor) -> Posterior:
        return naive_posterior(self.encode_frames(x))

    def decode(self, f: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.decode_frames(f[:, None].to(z.dtype) + z)

    # -- helpers --------------------------------------------------------------------
    def _flat_features(self, images: torch.Tensor, encoder: nn.Module) -> tuple[torch.Tensor, tuple[int, ...]]:
        if images.shape[-3:] != (3, self.config.image_size, self.config.image_size):
            size = self.config.image_size
            raise DsvaeError(f"{self.model_type} expects images (..., 3, {size}, {size}), got {tuple(images.shape)}")
        lead = tuple(images.shape[:-3])
        return encoder(images.reshape(-1, *images.shape[-3:])), lead

    def _ref(self) -> torch.Tensor:
        return next(self.decoder.parameters())

    def _recon_terms(self, x_hat: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction loss per image (summed over pixels, averaged over images) and the per-pixel MSE."""
        flat = lambda t: t.reshape(-1, *t.shape[-3:])  # noqa: E731
        recon = reconstruction_loss(flat(x_hat), flat(x), self.config.recon_loss).mean()
        return recon, frame_mse(x_hat, x)


def naive_posterior(fc: FrameCode) -> Posterior:
    """The naive sequence view of per-frame codes (B, T, D): f = time mean, z_t = residuals."""
    f_mean = fc.mean.mean(1)
    f = fc.code.mean(1)
    z_mean = fc.mean - f_mean[:, None]
    z = fc.code - f[:, None]
    if fc.logvar is None:
        return Posterior(f_mean, None, f, z_mean, None, z)
    steps = fc.mean.shape[1]
    var = fc.logvar.float().exp()
    f_var = var.sum(1) / steps ** 2
    z_var = var * (1.0 - 2.0 / steps) + f_var[:, None]
    tiny = 1e-12
    f_logvar = f_var.clamp_min(tiny).log().to(fc.logvar.dtype)
    z_logvar = z_var.clamp_min(tiny).log().to(fc.logvar.dtype)
    return Posterior(f_mean, f_logvar, f, z_mean, z_logvar, z)


# ----------------------------------------------------------------------------------
# AE
# ----------------------------------------------------------------------------------
@dataclass
class AEConfig(ModelConfig):
    image_size: int = 64
    widths: tuple[int, ...] = (64, 128, 256, 512)
    feature_dim: int = 256
    code_dim: int = 128
    norm: str = "batch"
    recon_loss: str = "mse"

    def validate(self) -> None:
        validate_backbone(self)
        check_positive(self, "code_dim")


class AE(FrameModel):
    """Deterministic conv autoencoder: encoder -> code -> decoder, trained on reconstruction only."""

    model_type = "ae"
    config_class = AEConfig

    def __init__(self, config: AEConfig | Mapping | None = None, **kwargs) -> None:
        super().__init__(config, **kwargs)
        c: AEConfig = self.config
        self.encoder = FrameEncoder(c.widths, c.feature_dim, norm=c.norm, out_act="lrelu")
        self.head = nn.Linear(c.feature_dim, c.code_dim)
        self.decoder = FrameDecoder(c.widths, c.code_dim, norm=c.norm)

    def encode_frames(self, images: torch.Tensor) -> FrameCode:
        feats, lead = self._flat_features(images, self.encoder)
        code = self.head(feats).reshape(*lead, -1)
        return FrameCode(code, code)

    def loss(self, batch: Mapping[str, torch.Tensor], phase: str = "main") -> dict[str, torch.Tensor]:
        x = batch["x"]
        x_hat = self.decode_frames(self.encode_frames(x).code)
        recon, mse = self._recon_terms(x_hat, x)
        return {"loss": recon, "recon": recon, "mse": mse}


# ----------------------------------------------------------------------------------
# VAE
# ----------------------------------------------------------------------------------
@dataclass
class VAEConfig(ModelConfig):
    image_size: int = 64
    widths: tuple[int, ...] = (64, 128, 256, 512)
    feature_dim: int = 256
    latent_dim: int = 128
    norm: str = "batch"
    recon_loss: str = "mse"
    kl_weight: float = 1.0

    def validate(self) -> None:
        validate_backbone(self)
        check_positive(self, "latent_dim")
        check_non_negative(self, "kl_weight")


class VAE(FrameModel):
    """Gaussian VAE (Kingma & Welling): q(c | x) = N(m(x), diag v(x)), prior N(0, I), reparameterised samples."""

    model_type = "vae"
    config_class = VAEConfig

    def __init__(self, config: VAEConfig | Mapping | None = None, **kwargs) -> None:
        super().__init__(config, **kwargs)
        c = self.config
        self.encoder = FrameEncoder(c.widths, c.feature_dim, norm=c.norm, out_act="lrelu")
        self.head = nn.Linear(c.feature_dim, 2 * c.latent_dim)
        self.decoder = FrameDecoder(c.widths, self.decoder_dim(), norm=c.norm)

    def decoder_dim(self) -> int:
        return self.config.latent_dim

    def _latent(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, ...]]:
        """Latent mean, log-variance and a sample (lead..., L), plus the encoder features (flat)."""
        feats, lead = self._flat_features(images, self.encoder)
        mean, logvar = self.head(feats).reshape(*lead, -1).chunk(2, dim=-1)
        return mean, logvar, feats, lead

    def encode_frames(self, images: torch.Tensor) -> FrameCode:
        mean, logvar, _, _ = self._latent(images)
        return FrameCode(self.reparameterize(mean, logvar), mean, logvar)

    def sample(self, n: int) -> torch.Tensor:
        return self.decode_frames(self.randn((n, self.config.latent_dim), self._ref()))

    def loss(self, batch: Mapping[str, torch.Tensor], phase: str = "main") -> dict[str, torch.Tensor]:
        x = batch["x"]
        fc = self.encode_frames(x)
        recon, mse = self._recon_terms(self.decode_frames(fc.code), x)
        kl = kl_normal_std(fc.mean.float().flatten(0, -2), fc.logvar.float().flatten(0, -2)).mean()
        return {"loss": recon + self.config.kl_weight * kl, "recon": recon, "kl": kl, "mse": mse}


# ----------------------------------------------------------------------------------
# VAE + auxiliary classifier (conditional generation)
# ----------------------------------------------------------------------------------
@dataclass
class ClassifierVAEConfig(VAEConfig):
    label: str = "top"
    label_mode: str = "straight-through"
    class_weight: float = 1.0
    classifier_hidden: int = 256

    def validate(self) -> None:
        super().validate()
        check_label(self)
        check_choice(self, "label_mode", LABEL_MODES)
        check_non_negative(self, "class_weight")
        check_positive(self, "classifier_hidden")


class ClassifierVAE(VAE):
    """A VAE whose decoder also sees the class of one factor, predicted by a classifier head.

    The shared conv encoder feeds a Gaussian latent head and a classifier head for the
    factor ``label``. The decoder gets [latent sample, class part] where the class part is
    the predicted class as a one-hot vector with straight-through gradients (forward: the
    arg-max one-hot, backward: the softmax's gradient; ``label_mode="straight-through"``, the
    default, so decoding a hand-set one-hot at generation time matches training), or the
    softmax itself (``label_mode="soft"``). Training adds the classifier's cross-entropy
    (weight ``class_weight``) to the ELBO terms.

    Naive view: the frame code is [latent, class part]; f averages both over time (its class
    part is the sequence's class histogram), z_t holds the residuals. The class part is
    deterministic given x: its log-variance is reported as log(1e-8).
    """

    model_type = "cvae"
    config_class = ClassifierVAEConfig
    uses_labels = True

    def __init__(self, config: ClassifierVAEConfig | Mapping | None = None, **kwargs) -> None:
        super().__init__(config, **kwargs)
        c: ClassifierVAEConfig = self.config
        self.classifier = mlp(c.feature_dim, c.classifier_hidden, self.label_classes)

    @property
    def label_classes(self) -> int:  # type: ignore[override]
        return HEAD_CLASSES[self.config.label]

    def decoder_dim(self) -> int:
        return self.config.latent_dim + HEAD_CLASSES[self.config.label]

    def class_part(self, logits: torch.Tensor) -> torch.Tensor:
        probs = logits.float().softmax(-1)
        if self.config.label_mode == "soft":
            return probs.to(logits.dtype)
        hard = F.one_hot(probs.argmax(-1), self.label_classes).to(probs.dtype)
        return (hard + (probs - probs.detach())).to(logits.dtype)  # forward: exactly the one-hot

    def encode_frames(self, images: torch.Tensor) -> FrameCode:
        mean, logvar, feats, lead = self._latent(images)
        logits = self.classifier(feats).reshape(*lead, -1)
        y = self.class_part(logits)
        sample = self.reparameterize(mean, logvar)
        y_logvar = torch.full_like(y, LOG_VAR_DETERMINISTIC)
        return FrameCode(torch.cat([sample, y.to(sample.dtype)], -1), torch.cat([mean, y.to(mean.dtype)], -1),
                         torch.cat([logvar, y_logvar.to(logvar.dtype)], -1), logits)

    def classify_frames(self, images: torch.Tensor) -> torch.Tensor:
        feats, lead = self._flat_features(images, self.encoder)
        return self.classifier(feats).reshape(*lead, -1)

    def _class_codes(self, z: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return torch.cat([z, F.one_hot(classes, self.label_classes).to(z.dtype)], -1)

    def _check_classes(self, classes: Sequence[int] | torch.Tensor) -> torch.Tensor:
        classes = torch.as_tensor(classes, dtype=torch.long, device=self._ref().device).reshape(-1)
        if classes.numel() == 0 or classes.min() < 0 or classes.max() >= self.label_classes:
            raise DsvaeError(f"classes must be in 0..{self.label_classes - 1} for label '{self.config.label}', "
                             f"got {classes.tolist()}")
        return classes

    def sample(self, n: int) -> torch.Tensor:
        ref = self._ref()
        noise = self.randn((n, self.config.latent_dim + 1), ref)
        classes = categorical_from_normal(noise[:, -1], self.label_classes)
        return self.decode_frames(self._class_codes(noise[:, :-1], classes))

    def generate(self, classes: Sequence[int] | torch.Tensor, n_style: int) -> torch.Tensor:
        """A class grid (len(classes), n_style, 3, H, W): row k decodes class classes[k] (set by hand)
        with the same n_style latent samples from the prior in every row."""
        classes = self._check_classes(classes)
        if not isinstance(n_style, int) or n_style <= 0:
            raise DsvaeError(f"n_style must be a positive integer, got {n_style!r}")
        z = self.randn((n_style, self.config.latent_dim), self._ref())
        codes = self._class_codes(repeat(z, "s d -> k s d", k=len(classes)),
                                  repeat(classes, "k -> k s", s=n_style))
        return self.decode_frames(codes)

    def loss(self, batch: Mapping[str, torch.Tensor], phase: str = "main") -> dict[str, torch.Tensor]:
        c: ClassifierVAEConfig = self.config
        x = batch["x"]
        y = frame_labels(batch, c.label, x.shape[1])
        fc = self.encode_frames(x)
        recon, mse = self._recon_terms(self.decode_frames(fc.code), x)
        latent = slice(0, c.latent_dim)
        kl = kl_normal_std(fc.mean[..., latent].float().flatten(0, -2),
                           fc.logvar[..., latent].float().flatten(0, -2)).mean()
        logits = fc.logits.float().flatten(0, -2)
        ce = F.cross_entropy(logits, y.flatten())
        acc = (logits.detach().argmax(-1) == y.flatten()).float().mean()
        total = recon + c.kl_weight * kl + c.class_weight * ce
        return {"loss": total, "recon": recon, "kl": kl, "ce": ce, "acc": acc, "mse": mse}


__all__ = ["AE", "AEConfig", "ClassifierVAE", "ClassifierVAEConfig", "FrameCode", "FrameModel", "VAE", "VAEConfig",
           "naive_posterior"]
