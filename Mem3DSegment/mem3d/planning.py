"""Choose the propagation axis and key slices, and plan the walks that cover each object.

Arrays are (k, j, i); axis 0 is k. By default each label's key slices are the slices along the
axis that hold that label, so segments painted on different slices propagate independently.
When the caller lists the key slices explicitly, they are key slices of every label, and on a
key slice 0 means background: a label absent from a listed key slice ends before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import Mem3DError

# For bare arrays, which carry no orientation, anatomical names stand for array axes as in a
# volume stored axially: axial slices are k slices. Files use `axis_for_direction` instead.
AXIS_NAMES = {"axial": 0, "coronal": 1, "sagittal": 2, "0": 0, "1": 1, "2": 2, "k": 0, "j": 1, "i": 2}
# Row of the LPS direction matrix that each anatomical slice orientation is perpendicular to.
ANATOMICAL_NORMALS = {"sagittal": 0, "coronal": 1, "axial": 2}


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


def axis_for_direction(axis, direction) -> int | None:
    """Return the array axis for an axis name given a volume's 3x3 direction matrix (row-major).

    An anatomical name picks the array axis whose index direction is closest to the slice
    normal (superior for axial, posterior for coronal, left for sagittal), so a volume stored
    sagittally still gets axial slices. Numbers and "auto" are handled as by `parse_axis`.
    """
    name = str(axis).lower()
    if name not in ANATOMICAL_NORMALS:
        return parse_axis(axis)
    directions = np.asarray(direction, dtype=float).reshape(3, 3)
    # Column n of the direction matrix is the direction of index axis n = (i, j, k).
    index_axis = int(np.argmax(np.abs(directions[ANATOMICAL_NORMALS[name]])))
    return 2 - index_axis


def annotated_slices(annotation: np.ndarray, axis: int) -> np.ndarray:
    other = tuple(a for a in range(3) if a != axis)
    return np.flatnonzero(annotation.any(axis=other))


def _is_sparse(slices: np.ndarray) -> bool:
    """True for one slice, or for several with gaps between them: painted slices, not a block."""
    return slices.size == 1 or slices.size < slices[-1] - slices[0] + 1


def detect_axis(annotation: np.ndarray) -> int:
    """Pick the axis along which the annotation lies on separate slices.

    A mask painted on axial slices covers one slice, or several with gaps, along k, but a
    contiguous run of slices along j and i. Among the axes with that pattern (all axes when none
    has it), the one with the fewest slices wins. When two tie, the caller must give the axis.
    """
    slices = [annotated_slices(annotation, axis) for axis in range(3)]
    if slices[0].size == 0:
        raise Mem3DError("the annotation is empty: paint the structure on at least one slice")
    candidates = [axis for axis in range(3) if _is_sparse(slices[axis])] or [0, 1, 2]
    counts = {axis: slices[axis].size for axis in candidates}
    fewest = min(counts.values())
    tied = [axis for axis in candidates if counts[axis] == fewest]
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

    `far_key` is the key slice at `stop` when the object is present there too. It joins the
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


def label_key_slices(annotation_along_axis: np.ndarray, label: int) -> np.ndarray:
    """Return the slices (axis first) that hold `label`: its key slices by default."""
    return np.flatnonzero((annotation_along_axis == label).any(axis=(1, 2)))


def plan_walks(annotation_along_axis: np.ndarray, key_slices: np.ndarray, label: int,
               slice_range: tuple[int, int] | None = None) -> list[Walk]:
    """Plan the walks for one label; `annotation_along_axis` has the axis first.

    `key_slices` are the label's key slices: a walk stops at the next one, and a key slice
    without the label ends the label there. `slice_range` (first, last), inclusive, limits where
    the object may be propagated.
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
