"""Overlap and distance metrics between a reference mask and a predicted mask.

Masks are boolean arrays on the same grid; spacing is per array axis, in mm.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def dice(reference: np.ndarray, prediction: np.ndarray) -> float:
    """Return the Dice coefficient 2|A and B| / (|A| + |B|); 1.0 when both masks are empty."""
    total = int(reference.sum()) + int(prediction.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(reference, prediction).sum()) / total


def occupied_slices(mask: np.ndarray, axis: int) -> np.ndarray:
    """Return the indices of the slices along `axis` that contain any voxel of `mask`."""
    other = tuple(a for a in range(mask.ndim) if a != axis)
    return np.flatnonzero(mask.any(axis=other))


def extent(mask: np.ndarray, axis: int) -> tuple[int, int] | None:
    """Return (first, last) occupied slice along `axis`, inclusive, or None for an empty mask."""
    slices = occupied_slices(mask, axis)
    if slices.size == 0:
        return None
    return int(slices[0]), int(slices[-1])


def slice_dice(reference: np.ndarray, prediction: np.ndarray, axis: int) -> dict[int, float]:
    """Return the Dice per slice along `axis`, for every slice where either mask is not empty."""
    reference_ax = np.moveaxis(reference, axis, 0)
    prediction_ax = np.moveaxis(prediction, axis, 0)
    union = np.union1d(occupied_slices(reference, axis), occupied_slices(prediction, axis))
    return {int(index): dice(reference_ax[index], prediction_ax[index]) for index in union}


def mean_slice_dice(per_slice: dict[int, float]) -> float:
    """Return the mean of `slice_dice` values; NaN when neither mask has any voxel."""
    if not per_slice:
        return math.nan
    return float(np.mean(list(per_slice.values())))


def surface(mask: np.ndarray) -> np.ndarray:
    """Return the voxels of `mask` with at least one face neighbour outside it.

    Voxels on the array's border count as surface, because the outside of the array is background.
    """
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1),
                                    border_value=0)
    return np.logical_and(mask, np.logical_not(eroded))


def hausdorff_95(reference: np.ndarray, prediction: np.ndarray,
                 spacing: tuple[float, ...]) -> float:
    """Return the 95th percentile Hausdorff distance in mm between two masks' surfaces.

    The distances from every surface voxel of each mask to the nearest surface voxel of the other
    are pooled, and the 95th percentile of the pooled distances is returned (a symmetric,
    percentile form of the Hausdorff distance). Returns 0.0 when both masks are empty and
    `math.inf` when exactly one is empty, because no distance exists then.
    """
    reference = np.asarray(reference, dtype=bool)
    prediction = np.asarray(prediction, dtype=bool)
    reference_empty, prediction_empty = not reference.any(), not prediction.any()
    if reference_empty and prediction_empty:
        return 0.0
    if reference_empty or prediction_empty:
        return math.inf

    # Work on the bounding box of both masks plus one voxel, so that the distance transforms
    # stay small on large volumes. Distances between the two surfaces are unchanged.
    both = np.logical_or(reference, prediction)
    box = []
    for axis in range(both.ndim):
        first, last = extent(both, axis)
        box.append(slice(max(first - 1, 0), last + 2))
    box = tuple(box)
    reference_surface = surface(reference[box])
    prediction_surface = surface(prediction[box])

    to_prediction = ndimage.distance_transform_edt(~prediction_surface, sampling=spacing)
    to_reference = ndimage.distance_transform_edt(~reference_surface, sampling=spacing)
    distances = np.concatenate([to_prediction[reference_surface], to_reference[prediction_surface]])
    return float(np.percentile(distances, 95))
