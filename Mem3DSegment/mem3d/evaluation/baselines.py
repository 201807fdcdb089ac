"""Baselines that the benchmark compares the network with.

- copy: every slice of the object's true extent gets the mask of its nearest key slice.
- contour interpolation: ITK's morphological contour interpolation between key slices, the
  method behind Slicer's "Fill between slices". It needs two key slices and fills nothing
  beyond the outermost ones.
- registration: the engine's `method="registration"` session (2D demons between neighbouring
  slices), on its own or given the true extent; see `registration_session`.
"""

from __future__ import annotations

import numpy as np

from ..propagation import PropagationSession
from ..registration import RegistrationSettings


def nearest_key(index: int, keys: list[int]) -> int:
    """Return the key slice nearest to `index`; of two at the same distance, the lower one."""
    return min(keys, key=lambda key: (abs(key - index), key))


def copy_nearest_key_slice(reference: np.ndarray, axis: int, keys: list[int],
                           slice_range: tuple[int, int]) -> np.ndarray:
    """Copy the reference mask of the nearest key slice onto every slice in `slice_range`.

    `reference` is a boolean (k, j, i) mask; only its key slices are read. `slice_range` is the
    (first, last) slice of the object's true extent, inclusive.
    """
    reference_ax = np.moveaxis(reference, axis, 0)
    prediction = np.zeros_like(reference)
    prediction_ax = np.moveaxis(prediction, axis, 0)
    first, last = slice_range
    for index in range(first, last + 1):
        prediction_ax[index] = reference_ax[nearest_key(index, keys)]
    for key in keys:
        prediction_ax[key] = reference_ax[key]
    return prediction


def contour_interpolation(reference: np.ndarray, axis: int, keys: list[int],
                          spacing: tuple[float, float, float]) -> np.ndarray:
    """Interpolate the reference masks of the key slices with ITK's contour interpolation.

    Uses `itk.morphological_contour_interpolator` (package itk-morphologicalcontourinterpolation)
    along `axis`. Key slices where the reference is empty carry no contour for it and are
    ignored. Raises ValueError with fewer than two key slices that hold the object.
    """
    import itk

    reference_ax = np.moveaxis(reference, axis, 0)
    drawn = [key for key in keys if reference_ax[key].any()]
    if len(drawn) < 2:
        raise ValueError(f"contour interpolation needs two key slices with the object, got {drawn}")
    sparse = np.zeros(reference.shape, dtype=np.uint8)
    sparse_ax = np.moveaxis(sparse, axis, 0)
    for key in drawn:
        sparse_ax[key] = reference_ax[key]
    image = itk.image_from_array(sparse)
    image.SetSpacing(tuple(float(s) for s in reversed(spacing)))
    # ITK orders image axes (i, j, k), the reverse of the array's (k, j, i).
    interpolated = itk.morphological_contour_interpolator(image, axis=2 - axis, label=1)
    prediction = itk.array_from_image(interpolated).astype(bool)
    for key in keys:
        np.moveaxis(prediction, axis, 0)[key] = reference_ax[key]
    return prediction


def registration_session(image: np.ndarray, spacing: tuple[float, float, float], axis: int,
                         true_extent: tuple[int, int] | None) -> PropagationSession:
    """Return a registration session; with `true_extent` it runs to exactly that extent.

    Told the extent, the session propagates over (first, last) and its stop rule is off. On its
    own, the walks from the outermost key slices end where the stop rule of
    `mem3d.registration` decides. Key slices and their annotation are set per round by the caller.
    """
    settings = RegistrationSettings(detect_object_end=true_extent is None)
    return PropagationSession(
        runner=None,
        image=image,
        annotation=np.zeros(image.shape, dtype=np.uint8),
        spacing=spacing,
        axis=axis,
        key_slices=[],
        slice_range=true_extent,
        method="registration",
        registration_settings=settings,
    )
