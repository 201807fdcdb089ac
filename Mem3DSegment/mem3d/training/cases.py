"""Training case lists: image and optional labelmap files, from a folder or a CSV file.

A CSV file has the columns `image`, `labelmap` (empty for an unlabelled volume) and, optionally,
`threshold`: a labelmap that is a probability map becomes the mask of values >= threshold. Relative
paths are resolved against a data root. A path of the form `pkg:PACKAGE/relative/path` names a
file inside an installed Python package, such as `pkg:slicerio/data/CTChest4.nrrd`.
"""

from __future__ import annotations

import csv
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ..errors import Mem3DError

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


@dataclass(frozen=True)
class TrainingCase:
    image: Path
    labelmap: Path | None
    threshold: float | None = None


def resolve_path(text: str, root: Path) -> Path:
    """Resolve a case path: `pkg:` paths inside an installed package, others against `root`."""
    if text.startswith("pkg:"):
        package, _, relative = text[4:].partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise Mem3DError(f"package {package!r} for {text} is not installed; pip install it")
        return Path(list(spec.submodule_search_locations)[0]) / relative
    path = Path(text)
    return path if path.is_absolute() else root / path


def read_case_list(path: Path, root: Path | None = None) -> list[TrainingCase]:
    """Read a CSV case list; paths are relative to `root` (default: the CSV's folder)."""
    root = root or path.parent
    cases = []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            if "image" not in row:
                raise Mem3DError(f"{path} needs a header with the columns image,labelmap")
            image = resolve_path(row["image"].strip(), root)
            labelmap_text = (row.get("labelmap") or "").strip()
            labelmap = resolve_path(labelmap_text, root) if labelmap_text else None
            threshold_text = (row.get("threshold") or "").strip()
            threshold = float(threshold_text) if threshold_text else None
            cases.append(TrainingCase(image, labelmap, threshold))
    missing = [str(c.image) for c in cases if not c.image.exists()]
    missing += [str(c.labelmap) for c in cases if c.labelmap and not c.labelmap.exists()]
    if missing:
        raise Mem3DError(f"{len(missing)} files in {path} not found, first: {missing[0]}")
    return cases


def find_cases(folder: Path) -> list[TrainingCase]:
    """Pair each image in a folder with `NAME_seg.*` or `NAME_label.*` when that file exists."""
    images = sorted(p for p in folder.rglob("*") if p.name.endswith(IMAGE_SUFFIXES))
    label_words = ("_seg", "_label", "-seg", "-label")
    cases = []
    for image in images:
        stem = _stem(image)
        if any(word in stem for word in label_words):
            continue
        labelmap = None
        for other in images:
            other_stem = _stem(other)
            if other_stem.startswith(stem) and any(w in other_stem[len(stem):] for w in label_words):
                labelmap = other
                break
        cases.append(TrainingCase(image, labelmap))
    return cases


def _stem(path: Path) -> str:
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def load_cases(source: Path, root: Path | None = None) -> list[TrainingCase]:
    if not source.exists():
        raise Mem3DError(f"training cases not found: {source}")
    cases = find_cases(source) if source.is_dir() else read_case_list(source, root)
    if not cases:
        raise Mem3DError(f"no training images found in {source}")
    return cases
