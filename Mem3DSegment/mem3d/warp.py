"""Quick 2D demons registration in torch, to warp a mask from one slice onto its neighbour.

The compact model can take as prior the previous slice's mask warped onto the current slice, so
it corrects a registration instead of predicting from an unmoved mask. This batched version runs
inside the training step and the propagation loop. It works on the network's input crops, which
are already scaled to [0, 1] with the same intensity window.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ITERATIONS = 30
FIELD_SMOOTHING = 1.5  # standard deviation of the Gaussian applied to the field, in pixels
# The field is computed on crops downsampled by this factor, then upsampled: neighbouring slices
# move little, and it makes the registration about four times cheaper.
DOWNSAMPLE = 2


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(round(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def _smooth(field: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian smoothing of each channel of (B, C, H, W)."""
    channels = field.shape[1]
    size = kernel.numel()
    rows = kernel.view(1, 1, size, 1).expand(channels, 1, size, 1)
    cols = kernel.view(1, 1, 1, size).expand(channels, 1, 1, size)
    field = F.conv2d(F.pad(field, (0, 0, size // 2, size // 2), mode="replicate"), rows,
                     groups=channels)
    return F.conv2d(F.pad(field, (size // 2, size // 2, 0, 0), mode="replicate"), cols,
                    groups=channels)


def _gradient(image: torch.Tensor) -> torch.Tensor:
    """Central differences of (B, 1, H, W), as (B, 2, H, W): d/drow, d/dcol."""
    padded = F.pad(image, (1, 1, 1, 1), mode="replicate")
    d_row = (padded[:, :, 2:, 1:-1] - padded[:, :, :-2, 1:-1]) / 2
    d_col = (padded[:, :, 1:-1, 2:] - padded[:, :, 1:-1, :-2]) / 2
    return torch.cat([d_row, d_col], dim=1)


def warp(image: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
    """Sample image (B, C, H, W) at x + displacement(x); displacement (B, 2, H, W) in pixels."""
    b, _, h, w = image.shape
    rows = torch.arange(h, dtype=torch.float32, device=image.device).view(1, h, 1)
    cols = torch.arange(w, dtype=torch.float32, device=image.device).view(1, 1, w)
    sample_rows = (rows + displacement[:, 0]) * 2 / (h - 1) - 1
    sample_cols = (cols + displacement[:, 1]) * 2 / (w - 1) - 1
    grid = torch.stack([sample_cols, sample_rows], dim=-1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


@torch.no_grad()
def demons(fixed: torch.Tensor, moving: torch.Tensor, iterations: int = ITERATIONS,
           sigma: float = FIELD_SMOOTHING) -> torch.Tensor:
    """Return the displacement (B, 2, H, W) such that moving(x + u(x)) matches fixed(x).

    This is Thirion's demons with the fixed image's gradient as the force and Gaussian smoothing
    of the whole field after each update. Fixed and moving are (B, 1, H, W) in [0, 1].
    """
    fixed, moving = fixed.float(), moving.float()
    kernel = _gaussian_kernel(sigma).to(fixed.device)
    gradient = _gradient(fixed)
    gradient_norm = (gradient ** 2).sum(dim=1, keepdim=True)
    displacement = torch.zeros_like(gradient)
    for _ in range(iterations):
        difference = warp(moving, displacement) - fixed
        denominator = gradient_norm + difference ** 2
        update = difference * gradient / denominator.clamp(min=1e-6)
        update = torch.where(denominator > 1e-6, update, torch.zeros_like(update))
        displacement = _smooth(displacement - update, kernel)
    return displacement


def warp_prior(current: torch.Tensor, previous: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """Warp the previous slice's mask onto the current slice; all (B, 1, H, W)."""
    size = current.shape[-2:]
    small_current = F.avg_pool2d(current.float(), DOWNSAMPLE)
    small_previous = F.avg_pool2d(previous.float(), DOWNSAMPLE)
    displacement = demons(small_current, small_previous) * DOWNSAMPLE
    displacement = F.interpolate(displacement, size=size, mode="bilinear", align_corners=False)
    return warp(prior.float(), displacement).clamp(0, 1)
