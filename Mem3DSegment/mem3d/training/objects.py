"""Training objects: labelled structures, their connected components, and objects derived from
intensity bands, so that a few labelled volumes still yield hundreds of objects to propagate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)

MIN_OBJECT_VOXELS = 60
MIN_OBJECT_SLICES = 3


@dataclass
class TrainingVolume:
    name: str
    image: np.ndarray  # float32, (k, j, i)
    spacing: tuple[float, float, float]  # (k, j, i) in mm


@dataclass
class TrainingObject:
    """One object: the voxels of `labels` equal to `value` inside volume `volume`."""

    volume: int
    labels: np.ndarray
    value: int
    kind: str  # "label", "component" or "derived"

    def mask(self) -> np.ndarray:
        return self.labels == self.value


def _spans_enough(mask_slices: tuple[slice, ...]) -> bool:
    extents = [s.stop - s.start for s in mask_slices]
    return sum(e >= MIN_OBJECT_SLICES for e in extents) >= 2


def label_objects(volume: int, labels: np.ndarray) -> list[TrainingObject]:
    """Return each label value as one object, plus each of its 3D components when it has several."""
    objects = []
    for value in np.unique(labels):
        if value == 0:
            continue
        mask = labels == value
        if mask.sum() < MIN_OBJECT_VOXELS // 4:
            continue
        objects.append(TrainingObject(volume, labels, int(value), "label"))
        components, count = ndimage.label(mask)
        if count > 1:
            objects += _components_as_objects(volume, components, count, "component", limit=40)
    return objects


def _components_as_objects(volume, components, count, kind, limit):
    sizes = ndimage.sum_labels(components > 0, components, index=np.arange(1, count + 1))
    boxes = ndimage.find_objects(components)
    order = np.argsort(sizes)[::-1]
    chosen = []
    for index in order[:limit * 3]:
        if sizes[index] < MIN_OBJECT_VOXELS or not _spans_enough(boxes[index]):
            continue
        chosen.append(int(index) + 1)
        if len(chosen) == limit:
            break
    if not chosen:
        return []
    dtype = np.uint16 if count < 65535 else np.int32
    compact = components.astype(dtype)
    return [TrainingObject(volume, compact, value, kind) for value in chosen]


def derived_objects(volume: int, image: np.ndarray, rng: np.random.Generator,
                    bands: int = 8, per_band: int = 12) -> list[TrainingObject]:
    """3D connected components of smoothed intensity bands, minus ones that fill the volume."""
    finite = image[np.isfinite(image)]
    low, high = np.percentile(finite, (1, 99))
    scaled = np.clip((image - low) / max(high - low, 1e-6), 0, 1).astype(np.float32)
    smooth = ndimage.gaussian_filter(scaled, sigma=1.0)
    objects = []
    for _ in range(bands):
        lower = rng.uniform(0.05, 0.85)
        band = (smooth >= lower) & (smooth <= lower + rng.uniform(0.08, 0.35))
        band = ndimage.binary_opening(band, iterations=1)
        components, count = ndimage.label(band)
        if count == 0:
            continue
        found = _components_as_objects(volume, components, count, "derived", limit=per_band)
        objects += [o for o in found if not _fills_volume(o, image.shape)]
    return objects


def _fills_volume(obj: TrainingObject, shape) -> bool:
    box = ndimage.find_objects((obj.labels == obj.value).astype(np.uint8))[0]
    covered = [(s.stop - s.start) / n for s, n in zip(box, shape)]
    return min(covered) > 0.9
