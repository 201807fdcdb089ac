"""Property-based tests: file round trips keep the grid, and propagation keeps key slices.

Hypothesis draws small volumes with random shapes, spacings, origins, directions (rotations and
reflections) and label values. Examples are few and tiny so the file runs in seconds.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mem3d
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from mem3d.io import Volume, read_annotation, write_result

SUFFIXES = [".nrrd", ".nii.gz", ".mha", ".seg.nrrd"]

sizes = st.integers(min_value=1, max_value=6)
spacings = st.floats(min_value=0.05, max_value=20.0)
coordinates = st.floats(min_value=-500.0, max_value=500.0)
angles = st.floats(min_value=-np.pi, max_value=np.pi)


def rotation(alpha: float, beta: float, gamma: float, reflect: bool) -> np.ndarray:
    """Return an orthonormal 3x3 matrix: rotations about z, y and x, then an optional mirror."""
    ca, sa = np.cos(alpha), np.sin(alpha)
    cb, sb = np.cos(beta), np.sin(beta)
    cg, sg = np.cos(gamma), np.sin(gamma)
    about_z = np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]])
    about_y = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    about_x = np.array([[1, 0, 0], [0, cg, -sg], [0, sg, cg]])
    matrix = about_z @ about_y @ about_x
    if reflect:
        matrix[:, 2] *= -1
    return matrix


def random_labels(shape, max_label: int, seed: int) -> np.ndarray:
    """Return a sparse labelmap with values drawn from 0, 1 and max_label."""
    rng = np.random.default_rng(seed)
    dtype = np.uint8
    if max_label > 255:
        dtype = np.uint16 if max_label <= 65535 else np.int32
    values = np.array([0, 0, 0, 1, max_label], dtype=dtype)
    return values[rng.integers(0, len(values), size=shape)]


@settings(max_examples=25, deadline=None, database=None)
@given(
    shape=st.tuples(sizes, sizes, sizes),
    spacing=st.tuples(spacings, spacings, spacings),
    origin=st.tuples(coordinates, coordinates, coordinates),
    euler=st.tuples(angles, angles, angles),
    reflect=st.booleans(),
    max_label=st.sampled_from([1, 255, 300, 70000]),
    suffix=st.sampled_from(SUFFIXES),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_labelmap_file_round_trip_keeps_grid(shape, spacing, origin, euler, reflect, max_label,
                                             suffix, seed):
    labels = random_labels(shape, max_label, seed)
    direction = tuple(float(d) for d in rotation(*euler, reflect).ravel())
    grid = Volume(labels, spacing, origin, direction)

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"labels{suffix}"
        write_result(labels, grid, [], path)
        read = read_annotation(path)

    assert read.labels.shape == shape
    np.testing.assert_array_equal(read.labels, labels)
    # NIfTI stores spacing and origin as float32 and the direction as a float32 quaternion.
    np.testing.assert_allclose(read.volume.spacing, spacing, rtol=1e-5)
    np.testing.assert_allclose(read.volume.origin, origin, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(read.volume.direction, direction, atol=1e-5)


@settings(max_examples=15, deadline=None, database=None)
@given(
    shape=st.tuples(st.integers(2, 6), st.integers(8, 24), st.integers(8, 24)),
    spacing=st.tuples(*[st.floats(min_value=0.3, max_value=8.0)] * 3),
    label_values=st.lists(st.integers(1, 1000), min_size=1, max_size=3, unique=True),
    image_dtype=st.sampled_from([np.int8, np.uint16, np.int32, np.float32, np.float64]),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_key_slices_come_back_unchanged(random_model, shape, spacing, label_values, image_dtype,
                                        seed):
    rng = np.random.default_rng(seed)
    image = (rng.random(shape) * 100).astype(image_dtype)
    dtype = np.uint8 if max(label_values) <= 255 else np.uint16
    annotation = np.zeros(shape, dtype)
    keys = np.sort(rng.choice(shape[0], size=rng.integers(1, shape[0] + 1), replace=False))
    for key in keys:
        for value in label_values:
            row, col = rng.integers(0, shape[1] - 2), rng.integers(0, shape[2] - 2)
            annotation[key, row:row + rng.integers(1, 8), col:col + rng.integers(1, 8)] = value

    result = mem3d.propagate(image, annotation, spacing, axis=0, model=random_model, device="cpu")

    assert result.labels.dtype == annotation.dtype
    assert result.key_slices == keys.tolist()
    painted = annotation != 0
    np.testing.assert_array_equal(result.labels[painted], annotation[painted])
    present = set(np.unique(annotation[keys]).tolist()) - {0}
    assert set(np.unique(result.labels).tolist()) <= present | {0}
    for label in present:
        own_keys = np.flatnonzero((annotation == label).any(axis=(1, 2)))
        np.testing.assert_array_equal(result.labels[own_keys] == label,
                                      annotation[own_keys] == label)
        assert (result.quality[label][own_keys] == 1.0).all()
