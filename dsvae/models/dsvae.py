"""The Disentangled Sequential Autoencoder (Li & Mandt, ICML 2018).

Generative model: p(x_1:T, z_1:T, f) = p(f) prod_t p(z_t | z_<t) p(x_t | z_t, f) with
p(f) = N(0, I), an LSTM prior p(z_t | z_<t), and a conv decoder of [f, z_t] per frame.
Inference: q(f | x_1:T) from a bidirectional LSTM over frame features, and either the
*factorized* q(z_t | x_t) or the *full* q(z_1:T | f, x_1:T) (a bidirectional LSTM over
[features, f] followed by a forward RNN).

The prior p(z_t | z_<t) is a diagonal Gaussian (the paper's; ``prior_components=1``, KL in
closed form) or a mixture of ``prior_components`` diagonal Gaussians whose weights, means and
variances the LSTM emits (KL = -H(q) - E_q log p(z), the cross term estimated with the posterior
sample). A single Gaussian must cover every motion and phase at once, so its mean, which the
static test decodes, is a blend of poses; a mixture's rollout picks one component per step and
decodes that component's mean.

``decoder_film_blocks`` (0 in the paper) also feeds f to that many of the frame decoder's finest
hidden blocks as a per-channel scale and shift (FiLM), so the static code can set colours near the
output rather than only through the decoder's first layer.

``static_prior_components`` (0 in the paper: f is drawn from N(0, I)) makes ``sample_static`` draw f
from a mixture of that many diagonal Gaussians fitted after training to the posterior means of the
training sequences (ex-post density estimation: :mod:`dsvae.training.static_prior`, ``dsvae
fit-prior``). The ELBO keeps N(0, I) as the prior of its KL term; only the draws change. Its weights,
means and log-variances are buffers saved with the weights; until fitted they are K copies of N(0, I),
the same distribution as the paper's, and ``static_prior_fitted`` (the number of sequences fitted on)
is 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
from einops import repeat
from torch import nn

from dsvae.errors import DsvaeError
from dsvae.models.base import (
    ModelConfig,
    Posterior,
    SequenceModel,
    check_choice,
    check_positive,
    kl_normal,
    kl_normal_std,
    reconstruction_loss,
)
from dsvae.models.blocks import NORMS, FrameDecoder, FrameEncoder, image_size_for, mlp


@dataclass
class DSVAEConfig(ModelConfig):
    image_size: int = 64
    widths: tuple[int, ...] = (64, 128, 256, 512)
    feature_dim: int = 128
    hidden_dim: int = 256
    prior_hidden_dim: int = 256
    f_dim: int = 256
    z_dim: int = 32
    posterior: str = "full"
    norm: str = "batch"
    recon_loss: str = "mse"
    recon_weight: float = 1.0
    kl_f_weight: float = 1.0
    kl_z_weight: float = 1.0
    prior_components: int = 1
    decoder_film_blocks: int = 0
    static_prior_components: int = 0

    def validate(self) -> None:
        check_positive(self, "image_size", "widths", "feature_dim", "hidden_dim", "prior_hidden_dim", "f_dim", "z_dim",
                       "prior_components")
        check_choice(self, "posterior", ("full", "factorized"))
        check_choice(self, "norm", NORMS)
        check_choice(self, "recon_loss", ("mse", "bce"))
        film = self.decoder_film_blocks
        if not isinstance(film, int) or isinstance(film, bool) or not 0 <= film <= len(self.widths):
            raise DsvaeError(f"DSVAEConfig.decoder_film_blocks must be an integer in [0, {len(self.widths)}] "
                             f"(the decoder's hidden blocks), got {film!r}")
        k = self.static_prior_components
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise DsvaeError(f"DSVAEConfig.static_prior_components must be an integer >= 0 (0: the N(0, I) prior), "
                             f"got {k!r}")
        for name in ("recon_weight", "kl_f_weight", "kl_z_weight"):
            if getattr(self, name) < 0:
                raise DsvaeError(f"DSVAEConfig.{name} must be >= 0, got {getattr(self, name)}")
        if image_size_for(self.widths) != self.image_size:
            raise DsvaeError(
                f"DSVAEConfig: {len(self.widths)} encoder widths give {image_size_for(self.widths)}x"
                f"{image_size_for(self.widths)} images, but image_size is {self.image_size}"
            )


class DSVAE(SequenceModel):
    model_type = "dsvae"
    config_class = DSVAEConfig
    has_sequence_prior = True

    def __init__(self, config: DSVAEConfig | Mapping | None = None, **kwargs) -> None:
        super().__init__(config, **kwargs)
        c: DSVAEConfig = self.config
        h = c.hidden_dim
        self.encoder = FrameEncoder(c.widths, c.feature_dim, norm=c.norm)
        self.f_lstm = nn.LSTM(c.feature_dim, h, batch_first=True, bidirectional=True)
        self.f_head = nn.Linear(2 * h, 2 * c.f_dim)
        if c.posterior == "full":
            self.z_lstm = nn.LSTM(c.feature_dim + c.f_dim, h, batch_first=True, bidirectional=True)
            self.z_rnn = nn.RNN(2 * h, h, batch_first=True)
            self.z_head = nn.Linear(h, 2 * c.z_dim)
        else:
            self.z_head = mlp(c.feature_dim, h, 2 * c.z_dim)
        self.prior_lstm = nn.LSTM(c.z_dim, c.prior_hidden_dim, batch_first=True)
        # K > 1: K mixture logits, then K means and K log-variances (K = 1: no logit)
        k = c.prior_components
        self.prior_head = nn.Linear(c.prior_hidden_dim, 2 * c.z_dim * k + (k if k > 1 else 0))
        self.decoder = FrameDecoder(c.widths, c.f_dim + c.z_dim, norm=c.norm,
                                    cond_dim=c.f_dim if c.decoder_film_blocks else 0, film_blocks=c.decoder_film_blocks)
        if c.static_prior_components:  # K copies of N(0, I) until dsvae.training.static_prior fits them
            k = c.static_prior_components
            self.register_buffer("static_prior_logits", torch.zeros(k))
            self.register_buffer("static_prior_mean", torch.zeros(k, c.f_dim))
            self.register_buffer("static_prior_logvar", torch.zeros(k, c.f_dim))
            self.register_buffer("static_prior_fitted", torch.zeros((), dtype=torch.long))

    # -- inference ------------------------------------------------------------------
    def encode_features(self, feats: torch.Tensor) -> Posterior:
        """Posterior from per-frame features (B, T, D)."""
        c: DSVAEConfig = self.config
        f_mean, f_logvar = self.static_posterior(feats)
        f = self.reparameterize(f_mean, f_logvar)
        if c.posterior == "full":
            # condition on a posterior sample while training, on the mean otherwise
            cond = repeat(f if self.training else f_mean, "b d -> b t d", t=feats.shape[1])
            z_out, _ = self.z_lstm(torch.cat([feats, cond.to(feats.dtype)], dim=-1))
            z_out, _ = self.z_rnn(z_out)
            z_mean, z_logvar = self.z_head(z_out).chunk(2, dim=-1)
        else:
            z_mean, z_logvar = self.z_head(feats).chunk(2, dim=-1)
        z = self.reparameterize(z_mean, z_logvar)
        return Posterior(f_mean, f_logvar, f, z_mean, z_logvar, z)

    def static_posterior(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The static code's posterior (mean, log-variance), each (B, f_dim), from per-frame features (B, T, D)."""
        h = self.config.hidden_dim
        out, _ = self.f_lstm(feats)
        # last step of the forward direction and first step of the backward one
        summary = torch.cat([out[:, -1, :h], out[:, 0, h:]], dim=-1)
        f_mean, f_logvar = self.f_head(summary).chunk(2, dim=-1)
        return f_mean, f_logvar

    def encode(self, x: torch.Tensor) -> Posterior:
        return self.encode_features(self.encoder.frames(x))

    def decode(self, f: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        f_rep = repeat(f, "b d -> b t d", t=z.shape[1]).to(z.dtype)
        codes = torch.cat([f_rep, z], dim=-1)
        return self.decoder.frames(codes, f_rep if self.config.decoder_film_blocks else None)

    # -- prior ----------------------------------------------------------------------
    def _prior_out(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mixture log-weights (..., K) and component means / log-variances (..., K, Dz) of a prior LSTM output."""
        k = self.config.prior_components
        h = self.prior_head(out)
        if k == 1:
            mean, logvar = h.chunk(2, dim=-1)
            return torch.zeros_like(h[..., :1]), mean.unsqueeze(-2), logvar.unsqueeze(-2)
        logits, params = h[..., :k], h[..., k:]
        mean, logvar = params.unflatten(-1, (k, 2 * self.config.z_dim)).chunk(2, dim=-1)
        return logits.float().log_softmax(-1), mean, logvar

    def prior_params(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher-forced prior p(z_t | z_<t) for every t, in one LSTM call: mixture log-weights
        (B, T, K) and component means and log-variances (B, T, K, Dz); K = ``prior_components``."""
        shifted = torch.cat([torch.zeros_like(z[:, :1]), z[:, :-1]], dim=1)
        out, _ = self.prior_lstm(shifted)
        return self._prior_out(out)

    def kl_dynamics(self, post: Posterior) -> torch.Tensor:
        """KL(q(z_1:T | .) || p(z_1:T)) per sequence -> (B,), in float32: closed form for one
        component; for a mixture, -H(q) (closed form) minus log p at the posterior sample."""
        log_w, p_mean, p_logvar = (v.float() for v in self.prior_params(post.z))
        q_mean, q_logvar = post.z_mean.float(), post.z_logvar.float()
        if self.config.prior_components == 1:
            return kl_normal(q_mean, q_logvar, p_mean[..., 0, :], p_logvar[..., 0, :])
        z = post.z.float().unsqueeze(-2)
        log_comp = -0.5 * (math.log(2 * math.pi) + p_logvar + (z - p_mean).pow(2) / p_logvar.exp()).sum(-1)
        log_p = torch.logsumexp(log_w + log_comp, dim=-1)
        entropy = 0.5 * (math.log(2 * math.pi) + 1.0 + q_logvar).sum(-1)
        return -(entropy + log_p).sum(1)

    def sample_static(self, n: int) -> torch.Tensor:
        """n static codes from the static prior: N(0, I), or the fitted mixture (``static_prior_components``)."""
        ref = self.f_head.weight
        noise = torch.randn(n, self.config.f_dim, device=ref.device, dtype=ref.dtype)
        if not self.config.static_prior_components:
            return noise
        k = torch.multinomial(self.static_prior_logits.float().softmax(-1), n, replacement=True)
        mean, logvar = self.static_prior_mean[k], self.static_prior_logvar[k]
        return (mean + torch.exp(0.5 * logvar) * noise).to(ref.dtype)

    @torch.no_grad()
    def sample_dynamics(self, n: int, steps: int, means: bool = False) -> torch.Tensor:
        """Roll the LSTM prior out on its own samples; return the samples or the per-step means
        (of a mixture: the mean of the component drawn at that step)."""
        ref = self.prior_head.weight
        z_prev = torch.zeros(n, 1, self.config.z_dim, device=ref.device, dtype=ref.dtype)
        state = None
        samples, mus = [], []
        rows = torch.arange(n, device=ref.device)
        for _ in range(steps):
            out, state = self.prior_lstm(z_prev, state)
            log_w, mean, logvar = self._prior_out(out[:, 0])
            k = torch.multinomial(log_w.float().exp(), 1)[:, 0] if log_w.shape[-1] > 1 else torch.zeros_like(rows)
            mean, logvar = mean[rows, k], logvar[rows, k]
            z_prev = (mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)).unsqueeze(1)
            samples.append(z_prev)
            mus.append(mean.unsqueeze(1))
        return torch.cat(mus if means else samples, dim=1)

    # -- objective ------------------------------------------------------------------
    def loss(self, batch: Mapping[str, torch.Tensor], phase: str = "main") -> dict[str, torch.Tensor]:
        c: DSVAEConfig = self.config
        x = batch["x"]
        post = self.encode(x)
        x_hat = self.decode(post.f, post.z)
        recon = reconstruction_loss(x_hat, x, c.recon_loss).mean()
        kl_f = kl_normal_std(post.f_mean.float(), post.f_logvar.float()).mean()
        kl_z = self.kl_dynamics(post).mean()
        total = c.recon_weight * recon + c.kl_f_weight * kl_f + c.kl_z_weight * kl_z
        return {"loss": total, "recon": recon, "kl_f": kl_f, "kl_z": kl_z}
