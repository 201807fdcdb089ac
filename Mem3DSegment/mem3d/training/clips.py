"""Clips of slices for training: a key slice with its mask and the slices that follow it.

A clip walks from a key slice along a random axis with a random step. A share of clips starts
next to an end of the object and walks past it, so that the network is trained on empty target slices
and learns where an object stops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..preprocessing import crop_box_for_mask, extract_crop, intensity_window, normalise
from .objects import TrainingObject, TrainingVolume

# Largest distance between two slices of a clip, in mm, unless the volume's slices are thicker.
MAX_STEP_MM = 6.0


@dataclass(frozen=True)
class ClipSettings:
    frames: int = 5
    size: int = 128
    end_fraction: float = 0.3  # share of clips that start near an object end, walking outward
    margin_range: tuple[float, float] = (1.6, 2.6)  # crop side / object side, drawn uniformly
    center_jitter: float = 0.08  # standard deviation of the crop centre shift, in crop sides


def _choose_step(slice_spacing: float, rng: np.random.Generator) -> int:
    largest = max(1, int(MAX_STEP_MM // max(slice_spacing, 1e-3)))
    return int(rng.integers(1, min(largest, 3) + 1))


def _choose_start(present: np.ndarray, settings: ClipSettings, rng) -> tuple[int, int]:
    """Return the key slice and the walking direction (+1 or -1)."""
    if rng.random() < settings.end_fraction:
        if rng.random() < 0.5:
            return int(present[min(int(rng.integers(0, 3)), present.size - 1)]), -1
        return int(present[max(present.size - 1 - int(rng.integers(0, 3)), 0)]), 1
    return int(rng.choice(present)), int(rng.choice((-1, 1)))


def sample_clip(volume: TrainingVolume, obj: TrainingObject, settings: ClipSettings,
                rng: np.random.Generator):
    """Return (images, masks), each (frames, size, size) float32, or None if none fits."""
    axis = int(rng.integers(0, 3))
    mask = np.moveaxis(obj.mask(), axis, 0)
    image = np.moveaxis(volume.image, axis, 0)
    spacing = [volume.spacing[a] for a in range(3) if a != axis]
    present = np.flatnonzero(mask.any(axis=(1, 2)))
    if present.size == 0:
        return None
    step = _choose_step(volume.spacing[axis], rng)
    start, direction = _choose_start(present, settings, rng)
    offsets = np.arange(settings.frames) * step
    frames = start + direction * offsets
    if frames.min() < 0 or frames.max() >= mask.shape[0]:
        frames = start - direction * offsets
        if frames.min() < 0 or frames.max() >= mask.shape[0]:
            return None
    margin = rng.uniform(*settings.margin_range)
    box = crop_box_for_mask(mask[start], tuple(spacing), margin)
    shift = rng.normal(0, settings.center_jitter, size=2) * np.asarray(box.size)
    box = box.moved_to((box.center[0] + shift[0], box.center[1] + shift[1]))
    images = extract_crop(torch.from_numpy(np.ascontiguousarray(image[frames], np.float32)),
                          box, settings.size)
    masks = extract_crop(torch.from_numpy(mask[frames].astype(np.float32)), box, settings.size)
    masks = (masks > 0.5).float()
    if masks[0].sum() < 1:
        return None
    images = normalise(images, intensity_window(images[0]))
    return images, masks
