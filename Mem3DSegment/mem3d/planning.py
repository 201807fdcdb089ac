"""Choose the propagation axis and key slices, and plan the walks that cover each object.

Arrays are (k, j, i); axis 0 is k. A key slice is a slice along the axis that holds any label.
On a key slice, 0 means background: an object absent from a key slice ends before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import Mem3DError

AXIS_NAMES = {"axial": 0, "coronal": 1, "sagittal": 2, "0": 0, "1": 1, "2": 2, "k": 0, "j": 1, "i": 2}


def parse_axis(axis) -> int | None:
    """Return 0, 1 or 2, or None for "auto"."""
    if axis is None or str(axis).lower() == "auto":
        return None
    if isinstance(axis, (int, np.integer)) and int(axis) in (0, 1, 2):
        return int(axis)
    name = str(axis).lower()
    if name not in AXIS_NAMES:
        raise Mem3DError(f"axis {axis!r} is not one of auto, axial, coronal, sagittal, 0, 1, 2")
    return AXIS_NAMES[name]


def annotated_slices(annotation: np.ndarray, axis: int) -> np.ndarray:
    other = tuple(a for a in range(3) if a != axis)
    return np.flatnonzero(annotation.any(axis=other))


def detect_axis(annotation: np.ndarray) -> int:
    """Pick the axis along which the annotation lies in the fewest slices.

    A mask painted on one axial slice covers 1 slice along k and many along j and i. When two
    axes tie for the fewest slices, the drawing does not tell the axis, and the caller must.
    """
    counts = [annotated_slices(annotation, axis).size for axis in range(3)]
    if counts[0] == 0:
        raise Mem3DError("the annotation is empty: paint the structure on at least one slice")
    fewest = min(counts)
    tied = [axis for axis in range(3) if counts[axis] == fewest]
    if len(tied) > 1:
        raise Mem3DError(
            f"cannot tell the propagation axis: the annotation covers {fewest} slices along "
            f"each of axes {tied} (k, j, i = 0, 1, 2); give the axis, e.g. --axis axial"
        )
    return tied[0]


def checked_slice_range(slice_range, count: int) -> tuple[int, int] | None:
    """Return (first, last) as ints after checking 0 <= first <= last < count."""
    if slice_range is None:
        return None
    first, last = (int(value) for value in slice_range)
    if not 0 <= first <= last < count:
        raise Mem3DError(
            f"slice range ({first}, {last}) is not within 0..{count - 1} along the propagation axis "
            "with first <= last; choose slices inside the volume"
        )
    return first, last


@dataclass(frozen=True)
class Walk:
    """Propagate one object from key slice `start` in `direction` up to `stop` (exclusive).

    `far_key` is the key slice at `stop` when the object is present there too; it joins the
    memory, and the slices in between blend this walk with the opposite one.
    """

    label: int
    start: int
    direction: int
    stop: int
    far_key: int | None = None

    @property
    def slices(self) -> range:
        return range(self.start + self.direction, self.stop, self.direction)


def plan_walks(annotation_along_axis: np.ndarray, key_slices: np.ndarray, label: int,
               slice_range: tuple[int, int] | None = None) -> list[Walk]:
    """Plan the walks for one label; `annotation_along_axis` has the axis first.

    `slice_range` (first, last), inclusive, limits where the object may be propagated.
    """
    count = annotation_along_axis.shape[0]
    first, last = (0, count - 1) if slice_range is None else slice_range
    keys = [int(s) for s in key_slices if first <= s <= last]
    present = {s for s in keys if (annotation_along_axis[s] == label).any()}
    walks = []
    for index, key in enumerate(keys):
        if key not in present:
            continue
        below = keys[index - 1] if index > 0 else first - 1
        above = keys[index + 1] if index + 1 < len(keys) else last + 1
        walks.append(Walk(label, key, -1, below, below if below in present else None))
        walks.append(Walk(label, key, 1, above, above if above in present else None))
    return [w for w in walks if len(w.slices) > 0]
