"""Load training cases into volumes and objects, and draw batches of augmented clips."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import Mem3DError
from ..io import read_annotation, read_image
from . import augment
from .cases import TrainingCase
from .clips import ClipSettings, sample_clip
from .objects import TrainingObject, TrainingVolume, derived_objects, label_objects

log = logging.getLogger(__name__)


@dataclass
class ObjectPool:
    volumes: list[TrainingVolume]
    labelled: list[TrainingObject]
    derived: list[TrainingObject]

    def describe(self) -> str:
        return (f"{len(self.volumes)} volumes, {len(self.labelled)} labelled objects, "
                f"{len(self.derived)} derived objects")


def load_pool(cases: list[TrainingCase], seed: int, derive: bool = True) -> ObjectPool:
    """Read every case; the same image named twice is read once."""
    rng = np.random.default_rng(seed)
    volumes, labelled, derived, index_of = [], [], [], {}
    for case in cases:
        if case.image not in index_of:
            image = read_image(case.image)
            volume = TrainingVolume(str(case.image), image.array.astype(np.float32), image.spacing)
            index_of[case.image] = len(volumes)
            volumes.append(volume)
            if derive and min(volume.image.shape) >= 3:
                derived += derived_objects(index_of[case.image], volume.image, rng)
        index = index_of[case.image]
        if case.labelmap is not None:
            labels = _read_labels(case, volumes[index])
            labelled += label_objects(index, labels)
    pool = ObjectPool(volumes, labelled, derived)
    if not labelled and not derived:
        raise Mem3DError("the training cases yield no objects; add labelmaps or larger volumes")
    log.info("training pool: %s", pool.describe())
    return pool


def _read_labels(case: TrainingCase, volume: TrainingVolume) -> np.ndarray:
    annotation = read_annotation(case.labelmap)
    labels = annotation.labels
    if case.threshold is not None:
        labels = (labels >= case.threshold).astype(np.uint8)
    if labels.shape != volume.image.shape:
        raise Mem3DError(
            f"labelmap {case.labelmap} has shape {labels.shape}, its image {volume.image.shape}"
        )
    return labels


class ClipBatcher:
    """Draw batches of augmented clips: a share `labelled_share` from labelled objects."""

    def __init__(self, pool: ObjectPool, settings: ClipSettings, seed: int,
                 labelled_share: float = 0.5):
        self.pool = pool
        self.settings = settings
        self.labelled_share = labelled_share if pool.derived else 1.0
        if not pool.labelled:
            self.labelled_share = 0.0
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)

    def sample_object(self) -> TrainingObject:
        source = self.pool.labelled if self.rng.random() < self.labelled_share else self.pool.derived
        return source[int(self.rng.integers(len(source)))]

    def clips(self, count: int):
        images, masks = [], []
        while len(images) < count:
            obj = self.sample_object()
            clip = sample_clip(self.pool.volumes[obj.volume], obj, self.settings, self.rng)
            if clip is not None:
                images.append(clip[0])
                masks.append(clip[1])
        return torch.stack(images), torch.stack(masks)

    def batch(self, count: int, augmented: bool = True):
        images, masks = self.clips(count)
        if augmented:
            images, masks = augment.spatial(images, masks, self.generator)
            images = augment.intensity(images, self.generator)
        return images, masks
