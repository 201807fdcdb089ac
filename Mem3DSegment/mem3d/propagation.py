"""Propagation session: key slices in, a labelmap and per-slice quality out.

`PropagationSession.run()` is a generator that yields a `Progress` after every slice, so a
caller can draw progress and cancel by no longer iterating (or calling `close()`). The result
exists only once the generator has finished; a cancelled run leaves no result and changes none
of the inputs. After a correction (`set_annotation`), walks whose key slices did not change are
reused, so only the slices next to the corrected slice are computed again.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from .errors import Mem3DError
from .planning import (
    Walk,
    annotated_slices,
    checked_slice_range,
    detect_axis,
    label_key_slices,
    parse_axis,
    plan_walks,
)
from .preprocessing import box_extent
from .registration import RegistrationSettings, RegistrationWalkRunner
from .runtime import ModelRunner
from .walk import WalkResult, WalkRunner, WalkSettings

# "network" segments each slice with the STM model. "registration" warps the previous slice's
# mask onto the next slice with 2D demons registration and needs no model.
METHODS = ("network", "registration")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    done: int  # slices computed so far in this run
    total: int  # slices planned; walks that stop early at an object's end finish sooner
    label: int
    slice_index: int


@dataclass
class PropagationResult:
    labels: np.ndarray  # (k, j, i), the annotation's dtype and label values
    quality: dict[int, np.ndarray]  # label -> (slices along axis,), NaN where not computed
    axis: int
    key_slices: list[int]
    seconds: float
    slices_computed: int

    def least_certain_slice(self) -> tuple[int, int] | None:
        """Return (label, slice index) with the lowest quality estimate, or None.

        Only slices where the label is in the result count: a slice past the object's end,
        left empty, has nothing to correct.
        """
        other = tuple(a for a in range(3) if a != self.axis)
        best = None
        for label, values in self.quality.items():
            present = (self.labels == label).any(axis=other)
            candidates = np.where(present & ~np.isnan(values), values, np.inf)
            index = int(np.argmin(candidates))
            if np.isfinite(candidates[index]) and (best is None or candidates[index] < best[2]):
                best = (label, index, float(candidates[index]))
        return None if best is None else best[:2]


@dataclass
class PropagationSession:
    """A volume, its annotation, a model and the cached walks of earlier runs.

    `runner` may be None when `method` is "registration".
    """

    runner: ModelRunner | None
    image: np.ndarray  # (k, j, i)
    annotation: np.ndarray  # (k, j, i) integer labels
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)  # (k, j, i) in mm
    axis: int | str | None = "auto"
    key_slices: list[int] | None = None  # default: every slice with any label
    slice_range: tuple[int, int] | None = None  # (first, last) slice along the axis, inclusive
    settings: WalkSettings = field(default_factory=WalkSettings)
    method: str = "network"
    registration_settings: RegistrationSettings = field(default_factory=RegistrationSettings)
    result: PropagationResult | None = None
    _cache: dict = field(default_factory=dict, repr=False)
    _cache_axis: int | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.method not in METHODS:
            raise Mem3DError(f"method {self.method!r} is not one of {', '.join(METHODS)}")
        if self.method == "network" and self.runner is None:
            raise Mem3DError("the network method needs a model runner; load one with "
                             "mem3d.load_runner or choose method='registration'")
        self.image = checked_image(self.image)
        self.spacing = checked_spacing(self.spacing)
        self.set_annotation(self.annotation)

    def set_annotation(self, annotation: np.ndarray) -> None:
        """Replace the annotation, for example after a correction; cached walks stay valid."""
        annotation = np.asarray(annotation)
        if annotation.shape != self.image.shape:
            raise Mem3DError(
                f"annotation shape {annotation.shape} differs from image shape {self.image.shape}; "
                "resample the annotation onto the image grid"
            )
        if not np.issubdtype(annotation.dtype, np.integer):
            raise Mem3DError(f"annotation must hold integer labels, not {annotation.dtype}; "
                             "convert a mask with mask.astype(np.uint8)")
        self.annotation = annotation
        self.result = None

    def resolved_axis(self) -> int:
        axis = parse_axis(self.axis)
        return detect_axis(self.annotation) if axis is None else axis

    def resolved_key_slices(self, axis: int) -> np.ndarray:
        if self.key_slices is not None:
            keys = np.unique(np.asarray(self.key_slices, dtype=int))
            count = self.annotation.shape[axis]
            if keys.size and (keys.min() < 0 or keys.max() >= count):
                raise Mem3DError(f"key slices must lie in 0..{count - 1}, got {keys.tolist()}")
            return keys
        keys = annotated_slices(self.annotation, axis)
        if keys.size == 0:
            raise Mem3DError("the annotation is empty: paint the structure on at least one slice")
        return keys

    def run(self) -> Iterator[Progress]:
        """Propagate every label; yield after each slice; set `self.result` at the end."""
        started = time.monotonic()
        axis = self.resolved_axis()
        keys = self.resolved_key_slices(axis)
        slice_range = checked_slice_range(self.slice_range, self.image.shape[axis])
        image = np.moveaxis(self.image, axis, 0)
        annotation = np.moveaxis(self.annotation, axis, 0)
        pixel_spacing = tuple(self.spacing[a] for a in range(3) if a != axis)
        walker = self._walk_runner(image, annotation, pixel_spacing)
        label_keys, walks = _labels_and_walks(annotation, keys, axis, slice_range,
                                              explicit=self.key_slices is not None)

        if self._cache_axis != axis:  # cached walks ran along another axis
            self._cache.clear()
            self._cache_axis = axis
        walk_keys = {walk: self._walk_key(walk, annotation) for walk in walks}
        pending = [w for w in walks if walk_keys[w] not in self._cache]
        total = sum(len(w.slices) for w in pending)
        log.info("propagation started (%s): shape %s, axis %d, %d key slices, %d labels, "
                 "%d walks (%d reused)", self.method, self.image.shape, axis, keys.size,
                 len(label_keys), len(walks), len(walks) - len(pending))

        done, finished = 0, False
        try:
            for walk in pending:
                walk_result = WalkResult(walk)
                for index in walker.run(walk, walk_result):
                    done += 1
                    yield Progress(done, total, walk.label, index)
                self._cache[walk_keys[walk]] = walk_result
            self._keep_only(set(walk_keys.values()))
            results = [self._cache[walk_keys[w]] for w in walks]
            self.result = assemble(self.annotation, axis, label_keys, results, done, 0.0)
            self.result.seconds = time.monotonic() - started  # assembling included
            finished = True
        finally:
            seconds = time.monotonic() - started
            state = "finished" if finished else "cancelled or failed"
            log.info("propagation %s after %d slices in %.2f s", state, done, seconds)

    def _walk_runner(self, image: np.ndarray, annotation: np.ndarray, pixel_spacing):
        if self.method == "registration":
            return RegistrationWalkRunner(image, annotation, pixel_spacing,
                                          self.registration_settings)
        return WalkRunner(self.runner, image, annotation, pixel_spacing, self.settings)

    def _walk_key(self, walk: Walk, annotation: np.ndarray) -> tuple:
        """Identify a walk by everything its result depends on.

        That is the method and its settings, the spacing, the plan and the key slices' masks.
        Layouts that also encode the other objects' masks ("o") depend on every label there.
        """
        other_objects = self.runner is not None and self.runner.network.config.second_mask == "o"
        digest = hashlib.sha1()
        for index in (walk.start, walk.far_key):
            if index is None:
                continue
            content = annotation[index] if other_objects else annotation[index] == walk.label
            digest.update(np.ascontiguousarray(content).tobytes())
        settings = (self.settings, self.registration_settings, tuple(self.spacing))
        return self.method, settings, walk, digest.hexdigest()

    def _keep_only(self, wanted: set) -> None:
        """Forget cached walks that the current plan no longer uses."""
        for key in list(self._cache):
            if key not in wanted:
                del self._cache[key]


def _labels_and_walks(annotation: np.ndarray, keys: np.ndarray, axis: int, slice_range,
                      explicit: bool):
    """Return each label's key slices and the walks that propagate the labels.

    `annotation` has the axis first. With `explicit` key slices every label shares `keys`;
    otherwise each label's key slices are the slices that hold it. No walk at all, for example
    when every slice is a key slice, is logged as a warning, and the result is then the
    annotation unchanged.
    """
    labels = [int(v) for v in np.unique(annotation[keys]) if v != 0]
    if not labels:
        raise Mem3DError(f"key slices {keys.tolist()} along axis {axis} hold no label; paint "
                         "the structure on them or choose other key slices")
    label_keys = {label: keys if explicit else label_key_slices(annotation, label)
                  for label in labels}
    if slice_range is not None and not any(
            ((k >= slice_range[0]) & (k <= slice_range[1])).any() for k in label_keys.values()):
        raise Mem3DError(f"no key slice lies in the slice range {slice_range}; widen the range "
                         "or paint a slice inside it")
    walks = [w for label in labels
             for w in plan_walks(annotation, label_keys[label], label, slice_range)]
    if not walks:
        log.warning("nothing to propagate: every slice along axis %d within the slice range is "
                    "a key slice, so the result is the annotation unchanged", axis)
    return label_keys, walks


def checked_image(image) -> np.ndarray:
    """Return `image` as an array after checking that it is a 3D volume of real intensities."""
    image = np.asarray(image)
    if image.ndim != 3:
        raise Mem3DError(
            f"image has {image.ndim} dimensions (shape {image.shape}); give a 3D (k, j, i) scalar "
            "volume, for example one time point or one component of a 4D array"
        )
    if image.dtype.kind not in "biuf":
        raise Mem3DError(f"image voxels are {image.dtype}; give integer or floating-point intensities")
    return image


def checked_spacing(spacing) -> tuple[float, float, float]:
    """Return spacing as three floats after checking that each is finite and positive."""
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise Mem3DError(f"spacing {spacing!r} is not three positive (k, j, i) values in mm; "
                         "give the voxel size, for example (2.5, 0.8, 0.8)")
    return values


def _blend_weight(walk: Walk, index: int) -> float:
    """Weight of a walk on a slice between two key slices: 1 at its start, 0 at the far key."""
    if walk.far_key is None:
        return 1.0
    return abs(walk.far_key - index) / abs(walk.far_key - walk.start)


def assemble(annotation: np.ndarray, axis: int, label_keys: dict[int, np.ndarray],
             results: list[WalkResult], computed: int, seconds: float) -> PropagationResult:
    """Blend the walks slice by slice, pick one label per voxel, restore the painted voxels.

    Walks never enter their own label's key slices, so on a key slice a label keeps exactly
    its painted voxels. Another label's walk may fill the rest of that slice.
    """
    labels = sorted(label_keys)
    annotation_ax = np.moveaxis(annotation, axis, 0)
    output = np.zeros_like(annotation)
    output_ax = np.moveaxis(output, axis, 0)
    count, shape = annotation_ax.shape[0], annotation_ax.shape[1:]
    quality = {label: np.full(count, np.nan, dtype=np.float32) for label in labels}
    by_slice: dict[int, list[WalkResult]] = {}
    for result in results:
        for index in result.crops:
            by_slice.setdefault(index, []).append(result)
    for index, slice_results in sorted(by_slice.items()):
        # Outside every crop box no walk has a probability, so the slice stays background there.
        region = _crop_union(index, shape, slice_results)
        rows, cols = slice(region[0], region[1] + 1), slice(region[2], region[3] + 1)
        output_ax[index][rows, cols] = _merge_slice(index, shape, region, labels, slice_results,
                                                    quality, output.dtype)
    key_set = sorted({int(k) for keys in label_keys.values() for k in keys})
    for index in key_set:
        painted = annotation_ax[index] != 0
        output_ax[index][painted] = annotation_ax[index][painted]
    for label, keys in label_keys.items():
        quality[label][keys] = 1.0
    return PropagationResult(output, quality, axis, key_set, seconds, computed)


def _crop_union(index: int, shape, slice_results) -> tuple[int, int, int, int]:
    """Return the extent that covers the crop boxes of every walk on one slice."""
    extents = [box_extent(result.boxes[index], shape) for result in slice_results]
    extents = [e for e in extents if e[0] <= e[1] and e[2] <= e[3]]
    if not extents:
        return 0, -1, 0, -1
    return (min(e[0] for e in extents), max(e[1] for e in extents),
            min(e[2] for e in extents), max(e[3] for e in extents))


def _merge_slice(index, shape, region, labels, slice_results, quality, dtype) -> np.ndarray:
    """Return the labels of one slice's region: the most probable label where it exceeds 0.5."""
    region_shape = (max(region[1] - region[0] + 1, 0), max(region[3] - region[2] + 1, 0))
    probabilities = torch.zeros((len(labels) + 1, *region_shape), dtype=torch.float32)
    probabilities[0] = 0.5
    for label_index, label in enumerate(labels, start=1):
        weighted_quality, total_weight = 0.0, 0.0
        for result in slice_results:
            if result.walk.label != label:
                continue
            weight = _blend_weight(result.walk, index)
            probabilities[label_index] += weight * result.probability(index, shape, region)
            weighted_quality += weight * result.quality[index]
            total_weight += weight
        if total_weight > 0:
            quality[label][index] = weighted_quality / total_weight
    winner = probabilities.argmax(dim=0).numpy()
    values = np.asarray([0, *labels], dtype=dtype)
    return values[winner]
