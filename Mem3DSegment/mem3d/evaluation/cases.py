"""Benchmark cases: an image, a reference labelmap, one label value and a name.

A case list is a CSV file with the columns `image`, `labelmap`, `label` and `name`. Relative
paths start from a data root, and `pkg:PACKAGE/relative/path` names a file inside an installed
Python package (as in the training lists).

Each case is put in one split by comparing its image file with the model's case lists: "seen"
when the image is in the training list, "validation" when it is in the validation list, and
"held-out" otherwise. Reports keep the splits apart, because a model scores higher on images it
was trained on.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import Mem3DError
from ..planning import axis_for_direction
from ..training.cases import resolve_path
from .metrics import extent

CASE_COLUMNS = ("image", "labelmap", "label", "name")
SPLITS = ("held-out", "validation", "seen")
# A case needs the key slice and at least one slice on each side of it.
MIN_EXTENT_SLICES = 3


def packaged_list(name: str) -> Path:
    """Return the path of a CSV list shipped in `mem3d/data`."""
    return Path(str(resources.files("mem3d") / "data" / name))


@dataclass(frozen=True)
class BenchmarkCase:
    name: str
    image: Path
    labelmap: Path
    label: int
    split: str  # one of SPLITS


@dataclass
class LoadedCase:
    """A case's arrays: the image, the boolean reference mask and where the object lies."""

    case: BenchmarkCase
    image: np.ndarray  # (k, j, i)
    reference: np.ndarray  # (k, j, i) bool
    spacing: tuple[float, float, float]  # (k, j, i) in mm
    axis: int  # propagation axis, an array axis
    extent: tuple[int, int]  # (first, last) slice of the reference along the axis, inclusive

    @property
    def middle(self) -> int:
        """The round-1 key slice: the middle slice of the reference's extent."""
        return (self.extent[0] + self.extent[1]) // 2


def _canonical(path: Path) -> str:
    return os.path.realpath(path)


def list_images(csv_path: Path, data_root: Path) -> set[str]:
    """Return the canonical image paths of a training or validation list.

    Rows whose `pkg:` package is not installed are left out: such an image cannot be a
    benchmark case on this machine either.
    """
    images = set()
    with open(csv_path, newline="") as handle:
        for row in csv.DictReader(handle):
            text = (row.get("image") or "").strip()
            if not text:
                continue
            try:
                images.add(_canonical(resolve_path(text, data_root)))
            except Mem3DError:
                continue
    return images


def read_cases(csv_path: Path, data_root: Path, training_list: Path,
               validation_list: Path | None) -> list[BenchmarkCase]:
    """Read a benchmark case list and put each case in a split; check that every file exists."""
    if not csv_path.is_file():
        raise Mem3DError(f"benchmark case list not found: {csv_path}")
    training = list_images(training_list, data_root)
    validation = list_images(validation_list, data_root) if validation_list else set()
    cases = []
    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing_columns = [c for c in CASE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing_columns:
            raise Mem3DError(f"{csv_path} lacks the columns {', '.join(missing_columns)}; "
                             f"its header must be {','.join(CASE_COLUMNS)}")
        for line, row in enumerate(reader, start=2):
            cases.append(_case_from_row(row, line, csv_path, data_root, training, validation))
    if not cases:
        raise Mem3DError(f"{csv_path} lists no cases")
    names = [case.name for case in cases]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise Mem3DError(f"{csv_path}: case names must be unique, repeated: {', '.join(duplicates)}")
    missing = [str(p) for c in cases for p in (c.image, c.labelmap) if not p.exists()]
    if missing:
        raise Mem3DError(f"{len(missing)} files in {csv_path} not found (data root {data_root}), "
                         f"first: {missing[0]}; set --data-root or $MEM3D_DATA_ROOT")
    return cases


def _case_from_row(row: dict, line: int, csv_path: Path, data_root: Path, training: set,
                   validation: set) -> BenchmarkCase:
    try:
        label = int(row["label"])
    except (TypeError, ValueError):
        raise Mem3DError(f"{csv_path} line {line}: label {row['label']!r} is not an integer") from None
    if label <= 0:
        raise Mem3DError(f"{csv_path} line {line}: label must be positive, not {label}")
    image = resolve_path(row["image"].strip(), data_root)
    labelmap = resolve_path(row["labelmap"].strip(), data_root)
    canonical = _canonical(image)
    if canonical in training:
        split = "seen"
    elif canonical in validation:
        split = "validation"
    else:
        split = "held-out"
    name = (row.get("name") or "").strip() or f"{image.name}:{label}"
    return BenchmarkCase(name, image, labelmap, label, split)


def resolve_axis(axis: str, direction: tuple[float, ...]) -> int:
    """Return the array axis for "axial", "coronal" or "sagittal", or for 0, 1 or 2."""
    resolved = axis_for_direction(axis, direction)
    if resolved is None:
        raise Mem3DError(f"benchmark axis {axis!r} is not one of axial, coronal, sagittal, 0, 1, 2")
    return resolved


def load_case(case: BenchmarkCase, axis: str) -> LoadedCase | str:
    """Read a case's files; return the loaded case, or the reason to skip it."""
    from ..io import read_annotation, read_image

    image = read_image(case.image)
    annotation = read_annotation(case.labelmap, reference=image)
    reference = annotation.labels == case.label
    if not reference.any():
        return f"label {case.label} does not occur in {case.labelmap}"
    array_axis = resolve_axis(axis, image.direction)
    first, last = extent(reference, array_axis)
    if last - first + 1 < MIN_EXTENT_SLICES:
        return (f"the object spans {last - first + 1} slices along axis {array_axis}, fewer than "
                f"{MIN_EXTENT_SLICES}")
    return LoadedCase(case, image.array, reference, tuple(image.spacing), array_axis, (first, last))
