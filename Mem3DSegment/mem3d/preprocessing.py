"""Crop a square region around an object, resize it to the network input, and paste it back.

Training and inference share these functions, so the network gets crops made the same way in
both. A crop is square in millimetres: with anisotropic in-plane spacing its sides differ in
pixels, and resizing to the square network input makes the pixels isotropic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# The crop spans the object's bounding box times this factor, so an object that grows from one
# slice to the next stays inside it.
CROP_MARGIN = 2.0
# Smallest crop side in pixels of the network input's source slice; tiny objects are upsampled.
MIN_CROP_PIXELS = 24
# Percentiles of the key slice's crop that map to 0 and 1.
WINDOW_PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class CropBox:
    """A crop in slice pixels: centre (row, column) and side lengths (rows, columns)."""

    center: tuple[float, float]
    size: tuple[float, float]

    def moved_to(self, center: tuple[float, float]) -> "CropBox":
        return CropBox(center, self.size)


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Return (row_min, row_max, col_min, col_max), inclusive, or None for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def mask_center(mask: np.ndarray) -> tuple[float, float] | None:
    box = bounding_box(mask)
    if box is None:
        return None
    return (box[0] + box[1]) / 2.0, (box[2] + box[3]) / 2.0


def crop_box_for_mask(
    mask: np.ndarray, pixel_spacing: tuple[float, float], margin: float = CROP_MARGIN
) -> CropBox:
    """Return a crop square in mm around a non-empty 2D mask, `margin` times its larger side."""
    box = bounding_box(mask)
    if box is None:
        raise ValueError("cannot place a crop around an empty mask")
    r0, r1, c0, c1 = box
    row_mm = (r1 - r0 + 1) * pixel_spacing[0]
    col_mm = (c1 - c0 + 1) * pixel_spacing[1]
    side_mm = max(row_mm, col_mm) * margin
    min_mm = MIN_CROP_PIXELS * min(pixel_spacing)
    side_mm = max(side_mm, min_mm)
    size = (side_mm / pixel_spacing[0], side_mm / pixel_spacing[1])
    return CropBox(((r0 + r1) / 2.0, (c0 + c1) / 2.0), size)


def grown_box(box: CropBox, mask: np.ndarray, pixel_spacing: tuple[float, float],
              margin: float = CROP_MARGIN) -> CropBox:
    """Recentre `box` on a 2D mask, enlarged when the mask's own crop would be larger.

    The box never shrinks, so a walk that starts on a small end slice of an object keeps the
    whole object inside the crop where it grows. An empty mask leaves the box as it is.
    """
    center = mask_center(mask)
    if center is None:
        return box
    own = crop_box_for_mask(mask, pixel_spacing, margin)
    return CropBox(center, (max(box.size[0], own.size[0]), max(box.size[1], own.size[1])))


def _sampling_grid(box: CropBox, shape: tuple[int, int], out_size: int) -> torch.Tensor:
    """Return a grid_sample grid (1, out, out, 2) that reads `box` out of a slice of `shape`."""
    rows, cols = shape
    steps = (torch.arange(out_size, dtype=torch.float32) + 0.5) / out_size - 0.5
    row_pix = box.center[0] + steps * box.size[0]
    col_pix = box.center[1] + steps * box.size[1]
    # grid_sample with align_corners=False maps -1 and 1 to the outer edges of the slice.
    row_norm = (row_pix + 0.5) / rows * 2 - 1
    col_norm = (col_pix + 0.5) / cols * 2 - 1
    grid_r, grid_c = torch.meshgrid(row_norm, col_norm, indexing="ij")
    return torch.stack([grid_c, grid_r], dim=-1).unsqueeze(0)


def extract_crop(
    slices: torch.Tensor, box: CropBox, out_size: int, mode: str = "bilinear"
) -> torch.Tensor:
    """Read `box` out of slices (N, rows, cols) into (N, out_size, out_size).

    Outside the slice the border value is repeated, so the crop never invents a dark frame.
    """
    grid = _sampling_grid(box, tuple(slices.shape[-2:]), out_size).to(slices.device)
    grid = grid.expand(slices.shape[0], -1, -1, -1)
    sampled = F.grid_sample(
        slices.unsqueeze(1).float(), grid, mode=mode, padding_mode="border", align_corners=False
    )
    return sampled.squeeze(1)


def box_extent(box: CropBox, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Return (row_first, row_last, col_first, col_last), inclusive, of `box` inside `shape`.

    A box that lies outside the slice gives an empty extent (last < first).
    """
    rows, cols = shape
    r_first = max(int(np.floor(box.center[0] - box.size[0] / 2)), 0)
    r_last = min(int(np.ceil(box.center[0] + box.size[0] / 2)), rows - 1)
    c_first = max(int(np.floor(box.center[1] - box.size[1] / 2)), 0)
    c_last = min(int(np.ceil(box.center[1] + box.size[1] / 2)), cols - 1)
    return r_first, r_last, c_first, c_last


def paste_crop(crop: torch.Tensor, box: CropBox, shape: tuple[int, int],
               region: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """Resample a crop (out, out) back onto a slice of `shape`; zero outside the box.

    With `region`, an extent as `box_extent` returns it, only that part of the slice is returned.
    """
    out_size = crop.shape[-1]
    region = region or (0, shape[0] - 1, 0, shape[1] - 1)
    result = torch.zeros((max(region[1] - region[0] + 1, 0), max(region[3] - region[2] + 1, 0)),
                         dtype=torch.float32, device=crop.device)
    r_first, r_last, c_first, c_last = box_extent(box, shape)
    r_first, r_last = max(r_first, region[0]), min(r_last, region[1])
    c_first, c_last = max(c_first, region[2]), min(c_last, region[3])
    if r_last < r_first or c_last < c_first:
        return result
    # Position of each slice pixel in the crop's normalised coordinates.
    r = torch.arange(r_first, r_last + 1, dtype=torch.float32, device=crop.device)
    c = torch.arange(c_first, c_last + 1, dtype=torch.float32, device=crop.device)
    r_norm = (r - box.center[0]) / box.size[0] * 2
    c_norm = (c - box.center[1]) / box.size[1] * 2
    grid_r, grid_c = torch.meshgrid(r_norm, c_norm, indexing="ij")
    grid = torch.stack([grid_c, grid_r], dim=-1).unsqueeze(0)
    inside = (grid.abs() <= 1).all(dim=-1)
    values = F.grid_sample(
        crop.view(1, 1, out_size, out_size).float(), grid, mode="bilinear",
        padding_mode="border", align_corners=False,
    )[0, 0]
    rows = slice(r_first - region[0], r_last - region[0] + 1)
    cols = slice(c_first - region[2], c_last - region[2] + 1)
    result[rows, cols] = values * inside[0]
    return result


def intensity_window(values: np.ndarray | torch.Tensor) -> tuple[float, float]:
    """Return the intensities at WINDOW_PERCENTILES of finite `values`, never equal."""
    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values
    finite = array[np.isfinite(array)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(finite, WINDOW_PERCENTILES)
    if high - low < 1e-6:
        high = low + 1.0
    return float(low), float(high)


def normalise(crop: torch.Tensor, window: tuple[float, float]) -> torch.Tensor:
    """Map the window to [0, 1] and clip; NaN and infinite voxels become 0."""
    low, high = window
    scaled = (crop - low) / (high - low)
    return torch.nan_to_num(scaled, nan=0.0, posinf=1.0, neginf=0.0).clamp_(0.0, 1.0)


def object_intensity_range(crop: torch.Tensor, mask: torch.Tensor,
                           percentiles: tuple[float, float]) -> tuple[float, float]:
    """Return the intensities at `percentiles` of the crop's pixels inside a boolean mask."""
    values = crop[mask].numpy()
    if values.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(values, percentiles)
    return float(low), float(high)


def intensity_agreement(crop: torch.Tensor, mask: torch.Tensor,
                        intensity_range: tuple[float, float]) -> float:
    """Return the fraction of the mask's pixels whose intensity lies in `intensity_range`.

    An empty mask scores 0.
    """
    values = crop[mask]
    if values.numel() == 0:
        return 0.0
    low, high = intensity_range
    return float(((values >= low) & (values <= high)).float().mean())
