"""Shared building blocks: the DCGAN-style frame encoder and its mirrored decoder.

For ``widths = (w1, ..., wk)`` the encoder halves the resolution k times
(image size = 4 * 2**k: 64 for four widths) and ends with a 4x4 convolution to
a ``out_dim`` feature vector; the decoder mirrors it from a vector back to an
image in [0, 1]. Frames are processed as one batch of B*T images.
"""

from __future__ import annotations

from typing import Sequence

import torch
from einops import rearrange
from torch import nn

NORMS = ("batch", "group", "none")


def image_size_for(widths: Sequence[int]) -> int:
    return 4 * 2 ** len(widths)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


class FrameEncoder(nn.Module):
    """Images (N, 3, H, W) -> features (N, out_dim). DCGAN-64: conv(4, 2, 1) blocks + LeakyReLU(0.2)."""

    def __init__(self, widths: Sequence[int], out_dim: int, norm: str = "batch", out_act: str = "tanh",
                 in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for i, w in enumerate(widths):
            layers.append(nn.Conv2d(c_in, w, 4, 2, 1, bias=(i == 0 or norm == "none")))
            if i > 0:
                layers.append(_norm(norm, w))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            c_in = w
        layers.append(nn.Conv2d(c_in, out_dim, 4, 1, 0, bias=norm == "none"))
        if out_act == "tanh":
            layers += [_norm(norm, out_dim), nn.Tanh()]
        elif out_act == "lrelu":
            layers += [_norm(norm, out_dim), nn.LeakyReLU(0.2, inplace=True)]
        elif out_act != "none":
            raise ValueError(out_act)
        self.net = nn.Sequential(*layers)
        self.image_size = image_size_for(widths)
        self.out_dim = out_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).flatten(1)

    def frames(self, x: torch.Tensor) -> torch.Tensor:
        """Videos (B, T, C, H, W) -> per-frame features (B, T, out_dim), all frames in one batch."""
        b = x.shape[0]
        feats = self(rearrange(x, "b t c h w -> (b t) c h w"))
        return rearrange(feats, "(b t) d -> b t d", b=b)


class FrameDecoder(nn.Module):
    """Vectors (N, in_dim) -> images (N, 3, H, W) in [0, 1]; the mirror of FrameEncoder.

    With ``film_blocks = k > 0`` the k finest hidden blocks are also modulated by a conditioning
    vector of ``cond_dim`` values (FiLM: ``h * (1 + gamma(c)) + beta(c)`` per channel, after the
    block's norm; ``gamma`` and ``beta`` linear in c and initialised to zero, so an untrained
    modulation is the identity). The DSVAE can pass its static code f this way, so that f sets the
    colours near the output instead of only through the 4x4 bottleneck.
    """

    def __init__(self, widths: Sequence[int], in_dim: int, norm: str = "batch", out_channels: int = 3,
                 cond_dim: int = 0, film_blocks: int = 0) -> None:
        super().__init__()
        rev = list(widths)[::-1]
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(in_dim, rev[0], 4, 1, 0, bias=norm == "none"),
            _norm(norm, rev[0]),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        for c_in, c_out in zip(rev[:-1], rev[1:]):
            layers += [
                nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=norm == "none"),
                _norm(norm, c_out),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        layers += [nn.ConvTranspose2d(rev[-1], out_channels, 4, 2, 1), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)
        self.image_size = image_size_for(widths)
        self.in_dim = in_dim
        if not 0 <= film_blocks <= len(rev) or (film_blocks > 0) != (cond_dim > 0):
            raise ValueError(f"film_blocks must be in [0, {len(rev)}] and > 0 exactly when cond_dim > 0, "
                             f"got film_blocks={film_blocks}, cond_dim={cond_dim}")
        self.cond_dim = cond_dim
        #: index of the first modulated hidden block (blocks run coarse to fine)
        self.film_first = len(rev) - film_blocks
        self.film = nn.ModuleList(nn.Linear(cond_dim, 2 * c) for c in rev[self.film_first:]) if film_blocks else None
        if self.film is not None:
            for lin in self.film:
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)

    def input_layers(self) -> list[nn.Module]:
        """The layers that read the codes (and the conditioning vector) themselves: the first transposed
        convolution and the FiLM maps."""
        return [self.net[0]] + ([self.film] if self.film is not None else [])

    def forward(self, codes: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = codes[:, :, None, None]
        if self.film is None:
            if cond is not None:
                raise ValueError("this FrameDecoder takes no conditioning vector (cond_dim=0)")
            return self.net(h)
        if cond is None or cond.shape != (codes.shape[0], self.cond_dim):
            got = None if cond is None else tuple(cond.shape)
            raise ValueError(f"FrameDecoder needs a conditioning vector ({codes.shape[0]}, {self.cond_dim}), got {got}")
        # net = [conv, norm, act] per hidden block, then [conv, sigmoid]: modulate after each norm
        for i, layer in enumerate(self.net):
            h = layer(h)
            block = i // 3
            if i % 3 == 1 and self.film_first <= block < len(self.net) // 3:
                gamma, beta = self.film[block - self.film_first](cond.to(h.dtype)).chunk(2, dim=-1)
                h = h * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]
        return h

    def frames(self, codes: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Per-frame codes (B, T, in_dim) -> videos (B, T, C, H, W); ``cond`` (B, T, cond_dim) if
        the decoder is conditioned."""
        b = codes.shape[0]
        flat = None if cond is None else rearrange(cond, "b t d -> (b t) d")
        images = self(rearrange(codes, "b t d -> (b t) d"), flat)
        return rearrange(images, "(b t) c h w -> b t c h w", b=b)


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int = 2) -> nn.Sequential:
    """A small MLP with LeakyReLU activations (``layers`` linear layers)."""
    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(d, hidden), nn.LeakyReLU(0.2, inplace=True)]
        d = hidden
    mods.append(nn.Linear(d, out_dim))
    return nn.Sequential(*mods)
