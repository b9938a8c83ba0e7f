"""An improved DSVAE: the Li & Mandt model plus switchable self-supervised ingredients.

The generative model, the inference networks and the ELBO are the DSVAE's
(:class:`~dsvae.models.dsvae.DSVAE`); the training objective adds, each with its own
weight (0 switches it off and leaves the loss exactly the DSVAE's):

1. **static contrastive** (``static_contrast_weight``): InfoNCE (NT-Xent, cosine similarity,
   ``temperature``) between the static code f of a sequence and f of a *motion-augmented*
   view of it (its frames shuffled and/or reversed in time, ``motion_augment``, and mirrored
   left-right with probability ``motion_flip``, which turns a left-facing motion into a
   right-facing one): the content is the same, the motion is not, so f is pushed to keep the
   content and drop the motion, the facing direction included (a shuffle alone keeps it).
   The other sequences of the batch (both views) are the negatives. The frame encoder sees
   one frame at a time, so an unmirrored view's frame features are the original ones
   reordered (exactly, also with batch norm: the batch holds the same frames) and only the
   f-LSTM runs again; only the mirrored sequences' frames are encoded (a share ``motion_flip``
   of one more encoder pass on average, their batch-norm statistics taken over those frames).
2. **dynamic contrastive** (``dynamic_contrast_weight``): InfoNCE between the dynamic codes
   z_1:T (flattened) of a sequence and of a *content-augmented* view (``content_augment``: a
   random non-identity permutation of the colour channels, optionally with random per-channel
   gains in [0.6, 1]; both keep every pixel's on/off mask, hence the motion). One more encoder
   pass.
3. **MI penalty** (``mi_weight``): minibatch-weighted-sampling estimate of I(f; z_t) under
   the aggregate posterior (as in S3VAE / C-DSVAE), clipped at 0 per sample and frame.
4. **prior-sampled positives** (``prior_swap_weight``): decode f ~ p(f) with the sequence's z,
   and the sequence's f with z from the learned prior (its rolled-out means, as the static
   test does); re-encode both and ask (InfoNCE) that z resp. f come back. This makes the
   decoder honour z under prior f and f under prior dynamics. One decode and one encode of
   2B sequences.
5. **prior palette** (``palette_weight``): decode the sequence's f with dynamics rolled out from
   the learned prior (the static test's situation) and ask every decoded pixel to be close to
   one of the ``palette_size`` most frequent colours of the real sequence (squared RGB distance
   to the nearest, on every other pixel and row, summed like the reconstruction error). A
   sprite's character is drawn with a small palette; blurred or ghosted poses under the prior's
   dynamics mix it into colours it does not have (light skin darkened by the black background
   reads as the next darker skin), and so does a neighbouring palette. One decode of B
   sequences, no encode.
6. **KL schedule**: the DSVAE's ``kl_f_weight`` / ``kl_z_weight``, multiplied by a linear
   warm-up from ``kl_anneal_start`` to 1 over ``kl_anneal_steps`` training steps (0: off).
   The step count is a buffer of the model (saved with it), advanced by every training-mode
   ``loss`` call of the main phase.
7. **mixture prior** (``prior_components``, a DSVAE option; 1 = the paper's Gaussian): the LSTM
   prior p(z_t | z_<t) as a mixture of Gaussians, so that dynamics rolled out from it (the static
   test's) follow one motion instead of the blend of all of them.
8. **partner reconstruction** (``pair_share``): that share of each batch reconstructs its frames
   from the static code of a *partner*, ``decode(f_partner, z)``: a sequence the trainer draws
   from the ``pair_neighbours`` nearest training sequences by colour histogram
   (:func:`dsvae.data.mixing.dataset_colour_neighbours`, the pairing ``dsvae data mix`` uses; the
   same character in another motion, found without labels) and passes as ``batch["x_pair"]``.
   The swap and static tests decode an ``f`` with dynamics it was not encoded with; this gives
   that decode a real target while training (``dsvae polish --pair-share`` does the same for a
   finished model's decoder). One more pass of the frame encoder and the f-LSTM over the
   partners (no z-LSTM), without gradients when ``view_grad`` is false (the partner's ``f`` is
   then a fixed code the decoder and z must explain the sequence with). It changes the
   reconstruction term by design; 0 leaves every term as it was.

With ``view_grad`` false the augmented views of 1 and 2 are encoded without gradients: each
view is a fixed target that its sequence's code is pulled towards (as a momentum encoder's
keys are in MoCo, here the same weights), which skips the views' backward pass.

No labels are used: the loss reads ``batch["x"]`` only (and ``batch["x_pair"]`` with a pair share). The contrastive terms compare
posterior means (``contrast_code="mean"``) or samples (``"sample"``). Augmentation noise is
drawn with :meth:`~dsvae.models.base.SequenceModel.randn` after the ELBO's, so switching an
ingredient on leaves the ELBO terms of a seeded step unchanged.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from einops import rearrange

from dsvae.errors import DsvaeError
from dsvae.models.base import Posterior, check_choice, kl_normal_std, reconstruction_loss
from dsvae.models.dsvae import DSVAE, DSVAEConfig

MOTION_AUGMENTS = ("shuffle", "reverse", "mixed")
CONTENT_AUGMENTS = ("permute", "permute_gain")
#: The five non-identity permutations of the RGB channels.
CHANNEL_PERMUTATIONS = ((0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))
_WEIGHTS = ("static_contrast_weight", "dynamic_contrast_weight", "mi_weight", "prior_swap_weight", "palette_weight")


@dataclass
class CDSVAEConfig(DSVAEConfig):
    static_contrast_weight: float = 10.0
    dynamic_contrast_weight: float = 10.0
    mi_weight: float = 1.0
    prior_swap_weight: float = 0.0
    palette_weight: float = 0.0
    palette_size: int = 64
    temperature: float = 0.5
    motion_augment: str = "mixed"
    motion_flip: float = 0.5
    content_augment: str = "permute_gain"
    contrast_code: str = "mean"
    view_grad: bool = True
    kl_anneal_steps: int = 0
    kl_anneal_start: float = 0.1
    pair_share: float = 0.0
    pair_neighbours: int = 3

    def validate(self) -> None:
        super().validate()
        for name in _WEIGHTS:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise DsvaeError(f"CDSVAEConfig.{name} must be >= 0, got {value!r}")
        if not 0.0 <= self.motion_flip <= 1.0:
            raise DsvaeError(f"CDSVAEConfig.motion_flip must be in [0, 1], got {self.motion_flip!r}")
        if not isinstance(self.palette_size, int) or isinstance(self.palette_size, bool) or self.palette_size < 1:
            raise DsvaeError(f"CDSVAEConfig.palette_size must be an integer >= 1, got {self.palette_size!r}")
        if not self.temperature > 0:
            raise DsvaeError(f"CDSVAEConfig.temperature must be positive, got {self.temperature!r}")
        check_choice(self, "motion_augment", MOTION_AUGMENTS)
        check_choice(self, "content_augment", CONTENT_AUGMENTS)
        check_choice(self, "contrast_code", ("mean", "sample"))
        if not isinstance(self.view_grad, bool):
            raise DsvaeError(f"CDSVAEConfig.view_grad must be true or false, got {self.view_grad!r}")
        if not isinstance(self.kl_anneal_steps, int) or isinstance(self.kl_anneal_steps, bool) or self.kl_anneal_steps < 0:
            raise DsvaeError(f"CDSVAEConfig.kl_anneal_steps must be an integer >= 0, got {self.kl_anneal_steps!r}")
        if not 0.0 <= self.kl_anneal_start <= 1.0:
            raise DsvaeError(f"CDSVAEConfig.kl_anneal_start must be in [0, 1], got {self.kl_anneal_start!r}")
        if (not isinstance(self.pair_share, (int, float)) or isinstance(self.pair_share, bool)
                or not 0.0 <= self.pair_share <= 1.0):
            raise DsvaeError(f"CDSVAEConfig.pair_share must be in [0, 1] (0 = off), got {self.pair_share!r}")
        if not isinstance(self.pair_neighbours, int) or isinstance(self.pair_neighbours, bool) or self.pair_neighbours < 1:
            raise DsvaeError(f"CDSVAEConfig.pair_neighbours must be an integer >= 1, got {self.pair_neighbours!r}")


# ----------------------------------------------------------------------------------
# augmentations and estimators (pure functions of their inputs; noise is passed in)
# ----------------------------------------------------------------------------------
def motion_order(noise: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-sequence frame orders (B, T) from standard-normal ``noise`` (B, T + 1).

    ``shuffle``: a uniformly random permutation (argsort of the noise); ``reverse``: T-1..0;
    ``mixed``: shuffle or reverse, each with probability 1/2 (the sign of the last column).
    """
    b, t = noise.shape[0], noise.shape[1] - 1
    shuffled = noise[:, :t].argsort(dim=1)
    reversed_ = torch.arange(t - 1, -1, -1, device=noise.device).expand(b, t)
    if kind == "shuffle":
        return shuffled
    if kind == "reverse":
        return reversed_.clone()
    if kind == "mixed":
        return torch.where(noise[:, t:] > 0, shuffled, reversed_)
    raise ValueError(kind)


def reorder_frames(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """x (B, T, ...) with the frames of sequence b in ``order[b]`` (B, T)."""
    idx = order.reshape(order.shape + (1,) * (x.ndim - 2)).expand_as(x)
    return torch.gather(x, 1, idx)


def motion_view(x: torch.Tensor, order: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """The motion-augmented view of videos x (B, T, C, H, W): frames in ``order`` (B, T), and
    mirrored left-right where the boolean ``flip`` (B,) is set."""
    mirrored = torch.where(flip[:, None, None, None, None], x.flip(-1), x)
    return reorder_frames(mirrored, order)


def colour_augment(x: torch.Tensor, noise: torch.Tensor, kind: str) -> torch.Tensor:
    """Videos (B, T, 3, H, W) with a per-sequence colour change; ``noise`` (B, 4) standard normal.

    ``permute``: one of the five non-identity channel permutations (picked by the first noise
    column); ``permute_gain``: then each channel scaled by a gain in [0.6, 1] (the other
    columns). A pixel is zero in the view exactly where it is zero in x: the mask, hence the
    motion, is kept.
    """
    u = torch.special.ndtr(noise.float())  # uniform in (0, 1)
    perms = torch.tensor(CHANNEL_PERMUTATIONS, device=x.device)
    pick = (u[:, 0] * len(CHANNEL_PERMUTATIONS)).long().clamp_(max=len(CHANNEL_PERMUTATIONS) - 1)
    chan = perms[pick]  # (B, 3)
    idx = chan[:, None, :, None, None].expand_as(x)
    out = torch.gather(x, 2, idx)
    if kind == "permute_gain":
        gain = (0.6 + 0.4 * u[:, 1:4]).to(x.dtype)
        out = out * gain[:, None, :, None, None]
    elif kind != "permute":
        raise ValueError(kind)
    return out


def sequence_palettes(x: torch.Tensor, size: int) -> torch.Tensor:
    """The ``size`` most frequent colours (B, size, 3) of each video of x (B, T, 3, H, W) in [0, 1],
    at 8 bits per channel; a video with fewer colours repeats its most frequent one."""
    q = (x.detach().float() * 255).round().to(torch.int64)
    codes = rearrange((q[:, :, 0] << 16) | (q[:, :, 1] << 8) | q[:, :, 2], "b t h w -> b (t h w)")
    rows = []
    for row in codes:
        values, counts = torch.unique(row, return_counts=True)
        top = values[counts.argsort(descending=True, stable=True)[:size]]
        rows.append(torch.cat([top, top[:1].expand(size - len(top))]))
    top = torch.stack(rows)
    return torch.stack([(top >> 16) & 255, (top >> 8) & 255, top & 255], dim=-1).to(torch.float32) / 255.0


def palette_distance(images: torch.Tensor, palettes: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Per video (B,): squared RGB distance of each pixel of ``images`` (B, T, 3, H, W) to the
    nearest colour of its ``palettes`` row (B, K, 3), on every other row and column starting at
    ``offset`` (0 or 1), scaled to a sum over all pixels (the reconstruction error's scale)."""
    t, h, w = images.shape[1], images.shape[3], images.shape[4]
    px = rearrange(images[..., offset::2, offset::2].float(), "b t c h w -> b (t h w) c")
    pal = palettes.to(px)
    d = px.pow(2).sum(-1, keepdim=True) - 2 * px @ pal.transpose(1, 2) + pal.pow(2).sum(-1)[:, None]
    return d.min(-1).values.clamp_min(0.0).mean(1) * (t * h * w)


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent between paired rows of a and b (B, D): row i of a and of b are positives, the
    other 2B - 2 rows negatives; cosine similarity / temperature; mean over the 2B anchors."""
    n = a.shape[0]
    reps = F.normalize(torch.cat([a, b]).float().flatten(1), dim=-1)
    sim = reps @ reps.T / temperature
    eye = torch.eye(2 * n, dtype=torch.bool, device=sim.device)
    sim = sim.masked_fill(eye, float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(sim.device)
    return F.cross_entropy(sim, targets)


def _log_density(x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return -0.5 * (math.log(2 * math.pi) + logvar + (x - mean).pow(2) * torch.exp(-logvar))


def mws_mutual_information(post: Posterior) -> torch.Tensor:
    """Minibatch-weighted-sampling estimate of I(f; z_t), averaged over sequences i and frames t.

    With q(c) ~ (1/B) sum_j q(c | x_j) for the aggregate posterior of a code c, each (i, t)
    contributes log q(f_i, z_it) - log q(f_i) - log q(z_it) at the posterior samples, clipped
    at 0 (as in the C-DSVAE's code: the estimate may go negative, and pushing it further down
    would not make f and z more independent).
    """
    f, f_mean, f_logvar = post.f.float(), post.f_mean.float(), post.f_logvar.float()
    z, z_mean, z_logvar = post.z.float(), post.z_mean.float(), post.z_logvar.float()
    b = f.shape[0]
    log_qf = _log_density(f[:, None], f_mean[None], f_logvar[None]).sum(-1)  # (B_i, B_j)
    zt, mt, lt = (rearrange(v, "b t d -> t b d") for v in (z, z_mean, z_logvar))
    log_qz = _log_density(zt[:, :, None], mt[:, None], lt[:, None]).sum(-1)  # (T, B_i, B_j)
    lse_f = torch.logsumexp(log_qf, dim=1)[None]  # (1, B)
    lse_z = torch.logsumexp(log_qz, dim=2)  # (T, B)
    lse_fz = torch.logsumexp(log_qf[None] + log_qz, dim=2)  # (T, B)
    return F.relu(lse_fz - lse_f - lse_z + math.log(b)).mean()


class CDSVAE(DSVAE):
    model_type = "cdsvae"
    config_class = CDSVAEConfig

    def __init__(self, config: CDSVAEConfig | Mapping | None = None, **kwargs) -> None:
        super().__init__(config, **kwargs)
        #: training steps seen (drives the KL warm-up); saved with the weights.
        self.register_buffer("train_step", torch.zeros((), dtype=torch.long))

    def kl_beta(self) -> float:
        """The KL warm-up factor of the current step (1 when the schedule is off or finished)."""
        c: CDSVAEConfig = self.config
        if c.kl_anneal_steps == 0:
            return 1.0
        frac = min(1.0, int(self.train_step) / c.kl_anneal_steps)
        return c.kl_anneal_start + (1.0 - c.kl_anneal_start) * frac

    def partner_neighbours(self) -> int:
        c: CDSVAEConfig = self.config
        return c.pair_neighbours if c.pair_share > 0 else 0

    def _codes(self, post: Posterior) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.contrast_code == "mean":
            return post.f_mean, post.z_mean
        return post.f, post.z

    def loss(self, batch: Mapping[str, torch.Tensor], phase: str = "main") -> dict[str, torch.Tensor]:
        c: CDSVAEConfig = self.config
        x = batch["x"]
        feats = self.encoder.frames(x)
        post = self.encode_features(feats)
        f_decoded = self._partner_static(batch, post) if c.pair_share > 0 else post.f
        x_hat = self.decode(f_decoded, post.z)
        recon = reconstruction_loss(x_hat, x, c.recon_loss).mean()
        kl_f = kl_normal_std(post.f_mean.float(), post.f_logvar.float()).mean()
        kl_z = self.kl_dynamics(post).mean()
        beta = self.kl_beta()
        total = c.recon_weight * recon + beta * (c.kl_f_weight * kl_f + c.kl_z_weight * kl_z)
        terms: dict[str, torch.Tensor] = {"recon": recon, "kl_f": kl_f, "kl_z": kl_z}
        if c.kl_anneal_steps:
            terms["kl_beta"] = torch.tensor(beta, device=recon.device)
        f_code, z_code = self._codes(post)
        b, t = x.shape[:2]

        if c.static_contrast_weight > 0:
            noise = self.randn((b, t + 2), like=feats.float())
            order = motion_order(noise[:, :t + 1], c.motion_augment)
            with self._view_context():
                view_feats = reorder_frames(feats, order)  # unmirrored: the same frames, reordered
                if c.motion_flip > 0:  # encode only the mirrored sequences' frames
                    flip = torch.special.ndtr(noise[:, t + 1]) < c.motion_flip
                    rows = flip.nonzero().squeeze(1)
                    if rows.numel():
                        mirrored = self.encoder.frames(reorder_frames(x[rows].flip(-1), order[rows]))
                        view_feats = view_feats.index_copy(0, rows, mirrored.to(view_feats.dtype))
                view = self.encode_features(view_feats)
            term = info_nce(f_code, self._codes(view)[0], c.temperature)
            terms["static_nce"] = term
            total = total + c.static_contrast_weight * term
        if c.dynamic_contrast_weight > 0:
            x_col = colour_augment(x, self.randn((b, 4), like=x.float()), c.content_augment)
            with self._view_context():
                view = self.encode(x_col)
            term = info_nce(z_code, self._codes(view)[1], c.temperature)
            terms["dynamic_nce"] = term
            total = total + c.dynamic_contrast_weight * term
        if c.mi_weight > 0:
            term = mws_mutual_information(post)
            terms["mi_fz"] = term
            total = total + c.mi_weight * term
        if c.prior_swap_weight > 0:
            term = self._prior_swap(f_code, z_code, b, t)
            terms["prior_nce"] = term
            total = total + c.prior_swap_weight * term
        if c.palette_weight > 0:
            z_prior = self.sample_dynamics(b, t, means=True).to(z_code.dtype)
            term = palette_distance(self.decode(f_code, z_prior), sequence_palettes(x, c.palette_size),
                                    offset=int(self.train_step) % 2).mean()
            terms["palette"] = term
            total = total + c.palette_weight * term

        if self.training and phase == "main":
            self.train_step += 1
        return {"loss": total, **terms}

    def _partner_static(self, batch: Mapping[str, torch.Tensor], post: Posterior) -> torch.Tensor:
        """The static codes the reconstruction decodes: the partner's (a posterior sample of
        ``batch["x_pair"]``) in a share ``pair_share`` of the rows, the sequence's own elsewhere."""
        c: CDSVAEConfig = self.config
        if "x_pair" not in batch:
            raise DsvaeError("this model reconstructs from partners' static codes (pair_share > 0) and needs "
                             "their frames as batch['x_pair']: dsvae's trainer passes them")
        x_pair = batch["x_pair"]
        if x_pair.shape != batch["x"].shape:
            raise DsvaeError(f"batch['x_pair'] must have the shape of batch['x'], {tuple(batch['x'].shape)}; "
                             f"got {tuple(x_pair.shape)}")
        with self._view_context():
            f_mean, f_logvar = self.static_posterior(self.encoder.frames(x_pair))
            f_pair = self.reparameterize(f_mean, f_logvar)
        rows = torch.special.ndtr(self.randn((post.f.shape[0],), like=post.f.float())) < c.pair_share
        return torch.where(rows[:, None], f_pair.to(post.f.dtype), post.f)

    def _view_context(self) -> contextlib.AbstractContextManager:
        """Where the contrastive terms' augmented views are encoded: with gradients, or (``view_grad``
        false) as fixed targets, which skips their backward pass."""
        return contextlib.nullcontext() if self.config.view_grad else torch.no_grad()

    def _prior_swap(self, f_code: torch.Tensor, z_code: torch.Tensor, b: int, t: int) -> torch.Tensor:
        """InfoNCE of z against the z of decode(f ~ p(f), z), and of f against the f of
        decode(f, prior-mean dynamics): both re-encoded in one pass."""
        c: CDSVAEConfig = self.config
        f_prior = self.randn((b, c.f_dim), like=f_code.float()).to(f_code.dtype)
        z_prior = self.sample_dynamics(b, t, means=True).to(z_code.dtype)
        f_all = torch.cat([f_prior, f_code])
        z_all = torch.cat([z_code, z_prior])
        again = self.encode(self.decode(f_all, z_all))
        f_again, z_again = self._codes(again)
        return info_nce(z_code, z_again[:b], c.temperature) + info_nce(f_code, f_again[b:], c.temperature)
