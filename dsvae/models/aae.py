"""Adversarial autoencoders (Makhzani et al., 2015): unsupervised, supervised and semi-supervised.

Instead of a KL term, a discriminator on the latent space pushes the codes of a
deterministic encoder toward a chosen prior. Every training step runs these phases,
each with its own Adam optimizer (see the trainer):

- ``recon``: encoder + decoder minimise the reconstruction loss;
- ``disc``: the discriminator learns to tell prior samples (real) from detached codes (fake);
- ``gen``: the encoder, as a generator, learns to fool the discriminator (non-saturating loss);
- ``classify`` (semi-supervised only): cross-entropy on the few labelled training images.

Priors (``prior``): ``gaussian`` = N(0, prior_std^2 I); ``mixture`` = an equal mixture of
``mixture_components`` Gaussians with std ``mixture_std`` whose means lie on a circle of
radius ``mixture_radius`` in the first two latent dimensions (0 in the others).
All prior and categorical draws go through ``SequenceModel.randn`` (categories via the
normal CDF), so data-parallel runs see exactly the noise of one process.

Like the other frame baselines (:mod:`dsvae.models.baselines`), they are trained on
frames and expose the naive sequence view f = mean_t c_t, z_t = c_t - f of their frame
codes c_t; for the labelled variants c_t = [style z_t, class part] (see each class).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import repeat
from torch import nn

from dsvae.data.schema import HEAD_CLASSES
from dsvae.errors import DsvaeError, NotApplicable
from dsvae.models.base import ModelConfig, check_choice, check_positive
from dsvae.models.baselines import (
    FrameCode,
    FrameModel,
    categorical_from_normal,
    check_label,
    check_non_negative,
    frame_labels,
    parameters_of,
    validate_backbone,
)
from dsvae.models.blocks import FrameDecoder, FrameEncoder, mlp

PRIORS = ("gaussian", "mixture")


@dataclass
class AAEConfig(ModelConfig):
    image_size: int = 64
    widths: tuple[int, ...] = (64, 128, 256, 512)
    feature_dim: int = 256
    z_dim: int = 32
    norm: str = "batch"
    recon_loss: str = "mse"
    prior: str = "gaussian"
    prior_std: float = 1.0
    mixture_components: int = 10
    mixture_radius: float = 4.0
    mixture_std: float = 0.5
    disc_hidden: int = 1000
    disc_layers: int = 3
    adv_weight: float = 1.0
    adv_beta1: float = 0.5

    def validate(self) -> None:
        validate_backbone(self)
        check_positive(self, "z_dim", "prior_std", "mixture_components", "mixture_radius", "mixture_std",
                       "disc_hidden", "disc_layers")
        check_choice(self, "prior", PRIORS)
        check_non_negative(self, "adv_weight")
        for name in ("z_dim", "mixture_components", "disc_hidden", "disc_layers"):
            if not isinstance(getattr(self, name), int):
                raise DsvaeError(f"{type(self).__name__}.{name} must be an integer, got {getattr(self, name)!r}")
        if not isinstance(self.adv_beta1, (int, float)) or not 0 <= self.adv_beta1 < 1:
            raise DsvaeError(f"{type(self).__name__}.adv_beta1 must be in [0, 1), got {self.adv_beta1!r}")
        if self.prior == "mixture" and self.z_dim < 2:
            raise DsvaeError(f"{type(self).__name__}: the mixture prior lies on a circle and needs z_dim >= 2")


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    logits = logits.float()
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def _disc_accuracy(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Share of prior samples called real and codes called fake (0.5 = the discriminator is fooled)."""
    return 0.5 * ((real_logits.detach() > 0).float().mean() + (fake_logits.detach() < 0).float().mean())


class AAE(FrameModel):
    """Unsupervised adversarial autoencoder: deterministic codes c = z matched to the prior."""

    model_type = "aae"
    config_class = AAEConfig
    phases = ("recon", "disc", "gen")

    def __init__(self, config: AAEConfig | Mapping | None = None, **kwargs) -> None:
        super().__init__(config, **kwargs)
        c: AAEConfig = self.config
        self.encoder = FrameEncoder(c.widths, c.feature_dim, norm=c.norm, out_act="lrelu")
        self.z_head = nn.Linear(c.feature_dim, c.z_dim)
        self.decoder = FrameDecoder(c.widths, c.z_dim + self.label_classes, norm=c.norm)
        self.discriminator = mlp(c.z_dim, c.disc_hidden, 1, layers=c.disc_layers)

    # -- prior ------------------------------------------------------------------------
    def prior_sample(self, lead: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """Samples (lead..., z_dim) of the prior; ``lead[0]`` is the (sequence) batch axis used by ``randn``."""
        c: AAEConfig = self.config
        like = torch.empty((), device=like.device)  # prior samples in float32, also under autocast
        if c.prior == "gaussian":
            return c.prior_std * self.randn((*lead, c.z_dim), like)
        noise = self.randn((*lead, c.z_dim + 1), like)
        k = categorical_from_normal(noise[..., 0], c.mixture_components)
        angle = 2 * math.pi * k.to(like.dtype) / c.mixture_components
        centre = torch.zeros_like(noise[..., 1:])
        centre[..., 0] = c.mixture_radius * torch.cos(angle)
        centre[..., 1] = c.mixture_radius * torch.sin(angle)
        return centre + c.mixture_std * noise[..., 1:]

    def mixture_means(self) -> torch.Tensor:
        """Component means (K, z_dim) of the mixture prior."""
        c: AAEConfig = self.config
        angle = 2 * math.pi * torch.arange(c.mixture_components, dtype=torch.float32) / c.mixture_components
        means = torch.zeros(c.mixture_components, c.z_dim)
        means[:, 0], means[:, 1] = c.mixture_radius * torch.cos(angle), c.mixture_radius * torch.sin(angle)
        return means

    # -- frame API ------------------------------------------------------------------
    def style_codes(self, images: torch.Tensor) -> torch.Tensor:
        """The adversarially regularised part z (..., z_dim) of the frame codes."""
        feats, lead = self._flat_features(images, self.encoder)
        return self.z_head(feats).reshape(*lead, -1)

    def encode_frames(self, images: torch.Tensor) -> FrameCode:
        z = self.style_codes(images)
        return FrameCode(z, z)

    def assemble(self, z: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder input of style codes z and (for the labelled variants) class indices."""
        if not self.label_classes:
            return z
        if classes is None:
            raise DsvaeError(f"{self.model_type} decodes a style code together with a class")
        return torch.cat([z, F.one_hot(classes.long(), self.label_classes).to(z.dtype)], -1)

    def sample(self, n: int) -> torch.Tensor:
        ref = self._ref()
        if not self.label_classes:
            return self.decode_frames(self.prior_sample((n,), ref))
        noise = self.randn((n, 1), ref)
        classes = categorical_from_normal(noise[:, 0], self.label_classes)
        return self.decode_frames(self.assemble(self.prior_sample((n,), ref), classes))

    def decode_grid(self, n: int, lo: float = -10.0, hi: float = 10.0, label: int = 0) -> torch.Tensor:
        """Decode a uniform n x n grid over a 2-D latent plane -> (n*n, 3, H, W), row-major.

        Row i has z_2 = hi ... lo from top to bottom, column j has z_1 = lo ... hi from left
        to right. The labelled variants decode every point with class ``label``.
        """
        if self.config.z_dim != 2:
            raise NotApplicable(f"a latent grid needs a 2-D latent space; this {self.model_type} has "
                                f"z_dim {self.config.z_dim}")
        if not isinstance(n, int) or n <= 0 or not hi > lo:
            raise DsvaeError(f"decode_grid needs n > 0 and hi > lo, got n={n!r}, lo={lo!r}, hi={hi!r}")
        ref = self._ref()
        axis = torch.linspace(lo, hi, n, device=ref.device, dtype=ref.dtype)
        z1 = repeat(axis, "j -> i j", i=n)
        z2 = repeat(axis.flip(0), "i -> i j", j=n)
        z = torch.stack([z1, z2], -1).reshape(n * n, 2)
        classes = None
        if self.label_classes:
            if not 0 <= label < self.label_classes:
                raise DsvaeError(f"label must be in 0..{self.label_classes - 1}, got {label!r}")
            classes = torch.full((n * n,), label, dtype=torch.long, device=ref.device)
        return self.decode_frames(self.assemble(z, classes))

    # -- training ---------------------------------------------------------------------
    def phase_parameters(self, phase: str) -> list[nn.Parameter]:
        if phase == "recon":
            return parameters_of(self.encoder, self.z_head, self.decoder)
        if phase == "disc":
            return parameters_of(self.discriminator)
        if phase == "gen":
            return parameters_of(self.encoder, self.z_head)
        raise KeyError(phase)

    def optimizer_options(self, phase: str) -> dict:
        if phase in ("disc", "gen"):
            return {"betas": (self.config.adv_beta1, 0.999)}
        return {}

    def recon_decoder_input(self, batch: Mapping[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        return z

    def loss(self, batch: Mapping[str, torch.Tensor], phase: str = "recon") -> dict[str, torch.Tensor]:
        """The terms of one phase; ``"main"`` (what ``model(x)`` asks for) means ``"recon"``."""
        x = batch["x"]
        phase = "recon" if phase == "main" else phase
        if phase == "recon":
            z = self.style_codes(x)
            x_hat = self.decode_frames(self.recon_decoder_input(batch, z))
            recon, mse = self._recon_terms(x_hat, x)
            return {"loss": recon, "recon": recon, "mse": mse}
        if phase == "disc":
            with torch.no_grad():
                z = self.style_codes(x)
            real = self.discriminator(self.prior_sample(tuple(z.shape[:-1]), z))
            fake = self.discriminator(z)
            loss = _bce(real, 1.0) + _bce(fake, 0.0)
            return {"loss": loss, "disc_acc": _disc_accuracy(real, fake)}
        if phase == "gen":
            z = self.style_codes(x)
            loss = self.config.adv_weight * _bce(self.discriminator(z), 1.0)
            zd = z.detach().float()
            return {"loss": loss, "code_mean": zd.mean(), "code_std": zd.std()}
        raise DsvaeError(f"{self.model_type} has phases {', '.join(self.phases)}, not {phase!r}")


# ----------------------------------------------------------------------------------
# supervised AAE
# ----------------------------------------------------------------------------------
@dataclass
class SupervisedAAEConfig(AAEConfig):
    label: str = "top"
    reader_weight: float = 1.0

    def validate(self) -> None:
        super().validate()
        check_label(self)
        check_non_negative(self, "reader_weight")


class SupervisedAAE(AAE):
    """Supervised AAE: the decoder gets [style z, one-hot y] with the true label y of factor ``label``;
    the encoder only encodes the style z, adversarially matched to the prior, so z carries
    what y does not.

    The sequence protocol must encode an image alone, without its label, so the model also
    trains a *label reader*: a separate conv classifier of y (its own parameters, trained
    with cross-entropy in the ``recon`` phase; it does not touch encoder or decoder).
    Naive view: frame code c_t = [z_t, one-hot of the reader's prediction] (or of given
    ``labels``); f averages both (its class part is the sequence's predicted class histogram).
    """

    model_type = "aae-sup"
    config_class = SupervisedAAEConfig
    uses_labels = True

    def __init__(self, config: SupervisedAAEConfig | Mapping | None = None, **kwargs) -> None:
        super().__init__(config, **kwargs)
        c: SupervisedAAEConfig = self.config
        self.reader = nn.Sequential(FrameEncoder(c.widths, c.feature_dim, norm=c.norm, out_act="lrelu"),
                                    nn.Linear(c.feature_dim, self.label_classes))

    @property
    def label_classes(self) -> int:  # type: ignore[override]
        return HEAD_CLASSES[self.config.label]

    def classify_frames(self, images: torch.Tensor) -> torch.Tensor:
        logits, lead = self._flat_features(images, self.reader)
        return logits.reshape(*lead, -1)

    def encode_frames(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> FrameCode:
        """Codes [z, one-hot y]; y = ``labels`` (shape images.shape[:-3]) when given, else the reader's guess."""
        z = self.style_codes(images)
        logits = self.classify_frames(images)
        classes = logits.argmax(-1) if labels is None else labels.to(z.device).expand(z.shape[:-1])
        code = self.assemble(z, classes)
        return FrameCode(code, code, None, logits)

    def style_grid(self, n_style: int) -> torch.Tensor:
        """(n_style, K, 3, H, W): row i decodes one fixed prior sample z_i with every class y = 0..K-1."""
        if not isinstance(n_style, int) or n_style <= 0:
            raise DsvaeError(f"n_style must be a positive integer, got {n_style!r}")
        ref = self._ref()
        k = self.label_classes
        z = repeat(self.prior_sample((n_style,), ref), "s d -> s k d", k=k)
        classes = repeat(torch.arange(k, device=ref.device), "k -> s k", s=n_style)
        return self.decode_frames(self.assemble(z, classes))

    def phase_parameters(self, phase: str) -> list[nn.Parameter]:
        if phase == "recon":
            return parameters_of(self.encoder, self.z_head, self.decoder, self.reader)
        return super().phase_parameters(phase)

    def recon_decoder_input(self, batch: Mapping[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        return self.assemble(z, frame_labels(batch, self.config.label, z.shape[1]))

    def loss(self, batch: Mapping[str, torch.Tensor], phase: str = "recon") -> dict[str, torch.Tensor]:
        phase = "recon" if phase == "main" else phase
        terms = super().loss(batch, phase)
        if phase == "recon":
            x = batch["x"]
            y = frame_labels(batch, self.config.label, x.shape[1]).flatten()
            logits = self.classify_frames(x).float().flatten(0, -2)
            ce = F.cross_entropy(logits, y)
            terms["loss"] = terms["loss"] + self.config.reader_weight * ce
            terms.update(reader_ce=ce, reader_acc=(logits.detach().argmax(-1) == y).float().mean())
        return terms


# ----------------------------------------------------------------------------------
# semi-supervised AAE
# ----------------------------------------------------------------------------------
@dataclass
class SemiSupervisedAAEConfig(AAEConfig):
    label: str = "top"
    labeled: int = 100
    label_pool: int = 9000
    label_seed: int = 0
    classify_weight: float = 1.0

    def validate(self) -> None:
        super().validate()
        check_label(self)
        check_positive(self, "labeled", "label_pool")
        check_non_negative(self, "classify_weight", "label_seed")
        for name in ("labeled", "label_pool", "label_seed"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise DsvaeError(f"{type(self).__name__}.{name} must be an integer, got {getattr(self, name)!r}")
        if self.labeled > self.label_pool:
            raise DsvaeError(f"{type(self).__name__}: labeled ({self.labeled}) cannot exceed label_pool "
                             f"({self.label_pool})")


class SemiSupervisedAAE(AAE):
    """Semi-supervised AAE: the encoder outputs a class y = softmax(logits) and a style z.

    A categorical discriminator pushes y toward one-hot samples of a uniform categorical
    prior, the usual one pushes z toward the prior; the decoder gets [z, y]. Only
    ``labeled`` training images carry labels: image j is frame ``frame_j mod T`` of training
    sequence ``sequence_j`` (position in the training split), the ``labeled`` sequences drawn
    without replacement from positions 0 .. label_pool-1 by ``label_seed`` (``label_pool``
    defaults to the 9,000 sequences of the standard training split; lower it to N when
    training on ``--limit N``). A labelled image is copied into a small memory (a buffer,
    saved with the checkpoint) the first time its sequence appears in a batch; every
    ``classify`` phase then trains the classifier (encoder + y head) on all remembered
    images, as in Makhzani et al.'s separate labelled mini-batches. The metric
    ``classify/labeled`` counts the images remembered so far.

    Naive view: frame code c_t = [z_t, y_t] (y the softmax); f averages both.
    """

    model_type = "aae-semi"
    config_class = SemiSupervisedAAEConfig
    phases = ("recon", "disc", "gen", "classify")
    uses_labels = True

    def __init__(self, config: SemiSupervisedAAEConfig | Mapping | None = None, **kwargs) -> None:
        super().__init__(config, **kwargs)
        c: SemiSupervisedAAEConfig = self.config
        k = self.label_classes
        self.y_head = nn.Linear(c.feature_dim, k)
        self.cat_discriminator = mlp(k, c.disc_hidden, 1, layers=c.disc_layers)
        g = torch.Generator().manual_seed(c.label_seed)
        sequences = torch.randperm(c.label_pool, generator=g)[:c.labeled]
        frames = torch.randint(0, 2 ** 20, (c.labeled,), generator=g)
        self.register_buffer("labeled_slots", torch.stack([sequences, frames], 1))
        self.register_buffer("labeled_images", torch.zeros(c.labeled, 3, c.image_size, c.image_size,
                                                           dtype=torch.uint8))
        self.register_buffer("labeled_targets", torch.zeros(c.labeled, dtype=torch.long))
        self.register_buffer("labeled_seen", torch.zeros(c.labeled, dtype=torch.bool))

    @property
    def label_classes(self) -> int:  # type: ignore[override]
        return HEAD_CLASSES[self.config.label]

    # -- frame API ------------------------------------------------------------------
    def _heads(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats, lead = self._flat_features(images, self.encoder)
        return self.z_head(feats).reshape(*lead, -1), self.y_head(feats).reshape(*lead, -1)

    def encode_frames(self, images: torch.Tensor) -> FrameCode:
        z, logits = self._heads(images)
        code = torch.cat([z, logits.float().softmax(-1).to(z.dtype)], -1)
        return FrameCode(code, code, None, logits)

    def classify_frames(self, images: torch.Tensor) -> torch.Tensor:
        return self._heads(images)[1]

    style_grid = SupervisedAAE.style_grid

    def categorical_sample(self, lead: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """One-hot samples (lead..., K) of the uniform categorical prior of y."""
        noise = self.randn(tuple(lead), torch.empty((), device=like.device))
        return F.one_hot(categorical_from_normal(noise, self.label_classes), self.label_classes).float()

    # -- labelled memory --------------------------------------------------------------
    @torch.no_grad()
    def remember_labeled(self, batch: Mapping[str, torch.Tensor]) -> None:
        """Copy the labelled images of this batch (and, data-parallel, of every rank's slice) into the memory."""
        if "index" not in batch:
            raise DsvaeError("aae-semi needs the batch's 'index' field to know which images are labelled")
        x, index = batch["x"], batch["index"]
        steps = x.shape[1]
        match = index.to(self.labeled_slots.device)[:, None] == self.labeled_slots[None, :, 0]  # (B, L)
        hit = match.any(0)
        b = match.to(torch.uint8).argmax(0)
        t = self.labeled_slots[:, 1] % steps
        images = (x[b, t].float() * 255).round().clamp(0, 255).to(torch.uint8)
        targets = frame_labels(batch, self.config.label, steps)[b, t]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            hit, images, targets = _merge_ranks(hit, images, targets)
        self.labeled_images.copy_(torch.where(hit[:, None, None, None], images, self.labeled_images))
        self.labeled_targets.copy_(torch.where(hit, targets, self.labeled_targets))
        self.labeled_seen |= hit

    def _classify_terms(self) -> dict[str, torch.Tensor]:
        seen = self.labeled_seen
        n_seen = seen.sum()
        slots = len(seen)
        # every slot draws a remembered image (cycling through the seen ones); weights undo the repeats
        order = torch.argsort((~seen).to(torch.uint8), stable=True)
        pick = order[torch.arange(slots, device=seen.device) % n_seen.clamp(min=1)]
        counts = torch.zeros(slots, device=seen.device).scatter_add_(0, pick, torch.ones(slots, device=seen.device))
        weight = seen[pick].float() / counts[pick]
        images = self.labeled_images[pick].to(self._ref().dtype) / 255.0
        logits = self.classify_frames(images).float()
        targets = self.labeled_targets[pick]
        ce = (F.cross_entropy(logits, targets, reduction="none") * weight).sum() / n_seen.clamp(min=1)
        acc = ((logits.detach().argmax(-1) == targets).float() * weight).sum() / n_seen.clamp(min=1)
        return {"loss": self.config.classify_weight * ce, "ce": ce, "acc": acc, "labeled": n_seen.float()}

    # -- training ---------------------------------------------------------------------
    def phase_parameters(self, phase: str) -> list[nn.Parameter]:
        if phase == "recon":
            return parameters_of(self.encoder, self.z_head, self.y_head, self.decoder)
        if phase == "disc":
            return parameters_of(self.discriminator, self.cat_discriminator)
        if phase == "gen":
            return parameters_of(self.encoder, self.z_head, self.y_head)
        if phase == "classify":
            return parameters_of(self.encoder, self.y_head)
        raise KeyError(phase)

    def loss(self, batch: Mapping[str, torch.Tensor], phase: str = "recon") -> dict[str, torch.Tensor]:
        x = batch["x"]
        phase = "recon" if phase == "main" else phase
        if phase == "recon":
            recon, mse = self._recon_terms(self.decode_frames(self.encode_frames(x).code), x)
            return {"loss": recon, "recon": recon, "mse": mse}
        if phase == "disc":
            with torch.no_grad():
                z, logits = self._heads(x)
                y = logits.float().softmax(-1).to(z.dtype)
            lead = tuple(z.shape[:-1])
            real_z, fake_z = self.discriminator(self.prior_sample(lead, z)), self.discriminator(z)
            real_y, fake_y = self.cat_discriminator(self.categorical_sample(lead, y)), self.cat_discriminator(y)
            loss = _bce(real_z, 1.0) + _bce(fake_z, 0.0) + _bce(real_y, 1.0) + _bce(fake_y, 0.0)
            return {"loss": loss, "disc_acc": _disc_accuracy(real_z, fake_z),
                    "cat_disc_acc": _disc_accuracy(real_y, fake_y)}
        if phase == "gen":
            z, logits = self._heads(x)
            y = logits.float().softmax(-1).to(z.dtype)
            loss = self.config.adv_weight * (_bce(self.discriminator(z), 1.0) + _bce(self.cat_discriminator(y), 1.0))
            zd = z.detach().float()
            return {"loss": loss, "code_mean": zd.mean(), "code_std": zd.std()}
        if phase == "classify":
            self.remember_labeled(batch)
            return self._classify_terms()
        raise DsvaeError(f"{self.model_type} has phases {', '.join(self.phases)}, not {phase!r}")


def _merge_ranks(hit: torch.Tensor, images: torch.Tensor, targets: torch.Tensor):
    """Combine the labelled images found by every rank (each sees its own slice of the global batch)."""
    world = dist.get_world_size()
    hits = [torch.empty_like(hit, dtype=torch.uint8) for _ in range(world)]
    dist.all_gather(hits, hit.to(torch.uint8))
    imgs = [torch.empty_like(images) for _ in range(world)]
    dist.all_gather(imgs, images)
    tgts = [torch.empty_like(targets) for _ in range(world)]
    dist.all_gather(tgts, targets)
    out_hit, out_img, out_tgt = torch.zeros_like(hit), images.clone(), targets.clone()
    for h, im, tg in zip(hits, imgs, tgts):
        h = h.bool()
        out_img = torch.where(h[:, None, None, None], im, out_img)
        out_tgt = torch.where(h, tg, out_tgt)
        out_hit |= h
    return out_hit, out_img, out_tgt


__all__ = ["AAE", "AAEConfig", "SemiSupervisedAAE", "SemiSupervisedAAEConfig", "SupervisedAAE",
           "SupervisedAAEConfig"]
