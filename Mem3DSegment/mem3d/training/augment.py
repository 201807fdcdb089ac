"""Augmentation of a batch of clips (B, T, H, W): one spatial and one intensity change per clip,
the same for every slice of that clip.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def spatial(images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator):
    """Flip, rotate, scale and deform elastically each clip; masks stay binary."""
    b, t, h, w = images.shape
    angle = (torch.rand(b, generator=generator) - 0.5) * 2 * math.radians(25)
    scale = 0.85 + 0.3 * torch.rand(b, generator=generator)
    flip = torch.where(torch.rand(b, 2, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * flip[:, 0], -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin, cos * flip[:, 1]
    grid = F.affine_grid(theta, (b, 1, h, w), align_corners=False)
    # Elastic part: a smooth random displacement from a coarse 5x5 field.
    coarse = torch.randn(b, 2, 5, 5, generator=generator) * 0.03
    grid = grid + F.interpolate(coarse, size=(h, w), mode="bicubic").permute(0, 2, 3, 1)
    warp = lambda x, mode: F.grid_sample(  # noqa: E731
        x, grid, mode=mode, padding_mode="border", align_corners=False
    )
    return warp(images, "bilinear"), (warp(masks, "bilinear") > 0.5).float()


def intensity(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Gamma, contrast, MR-like inversion, blur and noise; the result stays in [0, 1]."""
    b = images.shape[0]

    def per_clip(low, high):
        return (low + (high - low) * torch.rand(b, 1, 1, 1, generator=generator))

    gamma = torch.exp(per_clip(-0.4, 0.4))
    out = images.clamp(0, 1) ** gamma
    invert = torch.rand(b, 1, 1, 1, generator=generator) < 0.15
    out = torch.where(invert, 1 - out, out)
    out = (out - 0.5) * per_clip(0.75, 1.25) + 0.5 + per_clip(-0.1, 0.1)
    blurred = F.avg_pool2d(out, 3, stride=1, padding=1, count_include_pad=False)
    blur = torch.rand(b, 1, 1, 1, generator=generator) < 0.2
    out = torch.where(blur, blurred, out)
    noise = torch.randn(out.shape, generator=generator) * per_clip(0.0, 0.05)
    return (out + noise).clamp(0, 1)
