"""Run one walk: propagate one object slice by slice from a key slice in one direction.

Each slice is cropped around where the object was on the previous slice. The crop is a square in
mm, set on the key slice and enlarged when the object outgrows it. It is resized to the network
input and segmented from the memory bank, with the previous slice's mask as prior. Crops are
pasted into full slices only when the result is assembled, so a walk stores about 32 KB per
slice whatever the slice size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .memory import MemoryBank
from .planning import Walk
from .preprocessing import (
    CROP_MARGIN,
    CropBox,
    crop_box_for_mask,
    extract_crop,
    grown_box,
    intensity_agreement,
    intensity_window,
    mask_center,
    normalise,
    object_intensity_range,
    paste_crop,
)
from .runtime import ModelRunner
from .warp import warp_prior


@dataclass(frozen=True)
class WalkSettings:
    recent_memory: int = 3  # predicted slices kept in memory besides the key slices
    stop_after_empty: int = 2  # consecutive empty slices after which the object has ended
    min_object_pixels: int = 4  # a prediction smaller than this, in input pixels, is empty
    crop_margin: float = CROP_MARGIN
    # "previous": the prior input is the previous slice's mask as it is. "registration": the
    # previous mask warped onto the current slice by quick demons (mem3d.warp). "auto": what the
    # model was trained with, from its metadata.
    prior: str = "auto"
    # On a walk from an outermost key slice, a prediction of which less than this fraction of
    # pixels lies within the 5th-95th percentile intensities of the key slice's object counts as
    # empty: past the object's end, the network tends to keep a mask on neighbouring tissue.
    # NOTE: 0.2 was chosen against 0, 0.35 and 0.5 on the training and validation cases of the
    # benchmark (mean Dice 0.595 against 0.565 without the rule), not on the held-out ones.
    min_intensity_agreement: float = 0.2


@dataclass
class WalkResult:
    """Per slice: the crop box, the probability crop (float16) and the quality estimate."""

    walk: Walk
    boxes: dict[int, CropBox] = field(default_factory=dict)
    crops: dict[int, torch.Tensor] = field(default_factory=dict)
    quality: dict[int, float] = field(default_factory=dict)
    ended_at: int | None = None  # first slice judged empty for good, if the object ended

    def probability(self, index: int, shape: tuple[int, int], region=None) -> torch.Tensor | None:
        """Return the probability on a slice of `shape`, or on its `region` (see paste_crop)."""
        if index not in self.crops:
            return None
        return paste_crop(self.crops[index].float(), self.boxes[index], shape, region)


def confidence_proxy(probability: torch.Tensor) -> float:
    """Estimate quality when the model has no quality head: 1 - mean uncertainty.

    Uncertainty is 2 min(p, 1 - p), averaged over pixels with p > 0.05 (the prediction and its
    uncertain rim). A slice with no such pixel is confidently empty and scores 1.
    """
    region = probability > 0.05
    if not bool(region.any()):
        return 1.0
    p = probability[region]
    return float(1 - (2 * torch.minimum(p, 1 - p)).mean())


class WalkRunner:
    """Propagate the objects of one volume; `image` and `annotation` have the axis first."""

    def __init__(self, runner: ModelRunner, image: np.ndarray, annotation: np.ndarray,
                 pixel_spacing: tuple[float, float], settings: WalkSettings):
        self.runner = runner
        self.image = image
        self.annotation = annotation
        self.pixel_spacing = pixel_spacing
        self.settings = settings
        self.size = runner.input_size

    def _slice(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.image[index], dtype=np.float32))

    def _crop(self, index: int, box: CropBox, window) -> torch.Tensor:
        return normalise(extract_crop(self._slice(index)[None], box, self.size)[0], window)

    def _mask_crop(self, mask: np.ndarray, box: CropBox) -> torch.Tensor:
        crop = extract_crop(torch.from_numpy(mask.astype(np.float32))[None], box, self.size)[0]
        return (crop > 0.5).float()

    def _encode_key(self, memory, index, label, box, window) -> None:
        slice_labels = self.annotation[index]
        mask = self._mask_crop(slice_labels == label, box)
        others = self._mask_crop((slice_labels != label) & (slice_labels != 0), box)
        memory.add_key_slice(*self.runner.encode_memory(self._crop(index, box, window), mask, others))

    def _warped_prior(self) -> bool:
        prior = self.runner.prior_mode if self.settings.prior == "auto" else self.settings.prior
        if prior not in ("previous", "registration"):
            raise ValueError(f"prior must be 'auto', 'previous' or 'registration', not {prior!r}")
        return prior == "registration"

    def _key_intensity_range(self, walk: Walk, box: CropBox, window):
        """Intensity range of the key object, or None where the end rule does not apply."""
        if walk.far_key is not None or self.settings.min_intensity_agreement <= 0:
            return None
        mask = self._mask_crop(self.annotation[walk.start] == walk.label, box) > 0.5
        return object_intensity_range(self._crop(walk.start, box, window), mask, (5.0, 95.0))

    def _is_empty(self, image: torch.Tensor, probability: torch.Tensor, key_range) -> bool:
        inside = probability > 0.5
        if int(inside.sum()) < self.settings.min_object_pixels:
            return True
        if key_range is None:
            return False
        return intensity_agreement(image, inside, key_range) < self.settings.min_intensity_agreement

    def run(self, walk: Walk, result: WalkResult):
        """Fill `result` slice by slice, yielding each slice index after it is done."""
        # Key slices: the crop, intensity window and memory that the whole walk uses.
        key_mask = self.annotation[walk.start] == walk.label
        box = crop_box_for_mask(key_mask, self.pixel_spacing, self.settings.crop_margin)
        window = intensity_window(extract_crop(self._slice(walk.start)[None], box, self.size))
        memory = MemoryBank(self.settings.recent_memory)
        self._encode_key(memory, walk.start, walk.label, box, window)
        if walk.far_key is not None:
            far_center = mask_center(self.annotation[walk.far_key] == walk.label)
            self._encode_key(memory, walk.far_key, walk.label, box.moved_to(far_center), window)
        warped = self._warped_prior()
        key_range = self._key_intensity_range(walk, box, window)

        previous = torch.from_numpy(key_mask.astype(np.float32))
        previous_index = walk.start
        empty_run = 0
        for index in walk.slices:
            # Crop around the previous slice's mask and build the prior from it.
            previous_mask = previous.numpy() > 0.5
            box = grown_box(box, previous_mask, self.pixel_spacing, self.settings.crop_margin)
            image = self._crop(index, box, window)
            prior = extract_crop(previous[None], box, self.size)[0]
            if warped and previous_mask.any():
                previous_image = self._crop(previous_index, box, window)
                prior = warp_prior(image[None, None], previous_image[None, None], prior[None, None])[0, 0]
            previous_index = index

            # Segment, and decide whether the object has ended.
            probability, quality = self.runner.segment(image, prior, *memory.tensors(self.runner.device))
            empty = self._is_empty(image, probability, key_range)
            if empty:
                probability = torch.zeros_like(probability)
            empty_run = empty_run + 1 if empty else 0
            result.boxes[index], result.crops[index] = box, probability.half()
            result.quality[index] = confidence_proxy(probability) if quality is None else quality
            yield index
            if empty_run >= self.settings.stop_after_empty:
                result.ended_at = index
                return

            memory.add_predicted(*self.runner.encode_memory(image, probability, None))
            previous = paste_crop(probability, box, previous.shape)
