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
    """Vectors (N, in_dim) -> images (N, 3, H, W) in [0, 1]; the mirror of FrameEncoder."""

    def __init__(self, widths: Sequence[int], in_dim: int, norm: str = "batch", out_channels: int = 3) -> None:
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

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.net(codes[:, :, None, None])

    def frames(self, codes: torch.Tensor) -> torch.Tensor:
        """Per-frame codes (B, T, in_dim) -> videos (B, T, C, H, W)."""
        b = codes.shape[0]
        images = self(rearrange(codes, "b t d -> (b t) d"))
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
