"""Shared pytest fixtures: the development data folder and slicerio's sample chest CT."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]

# Slicer puts the scripted module's folder on sys.path, so the engine package is importable
# without installing it. The tests do the same when `pip install -e .` has not been run.
try:
    import mem3d  # noqa: F401
except ModuleNotFoundError:
    sys.path.insert(0, str(REPOSITORY_ROOT / "Mem3DSegment"))

DATA_ROOT_VARIABLE = "MEM3D_DATA_ROOT"


def find_data_root() -> Path | None:
    """Return the development data folder, or None where it is absent.

    The folder is $MEM3D_DATA_ROOT, or `shared/data` beside the repository folder.
    """
    configured = os.environ.get(DATA_ROOT_VARIABLE)
    root = Path(configured) if configured else REPOSITORY_ROOT.parent / "shared" / "data"
    return root if root.is_dir() else None


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The development data folder; tests that request it are skipped where it is absent."""
    root = find_data_root()
    if root is None:
        pytest.skip(
            f"development data not found; set {DATA_ROOT_VARIABLE} to the folder that contains "
            "sct_testing_data, ivadomed_data_testing and dcmqi_ct3slice"
        )
    return root


@pytest.fixture(scope="session")
def slicerio_sample():
    """(image Volume, Annotation) of slicerio's chest CT with 7 segments, loaded once per session.

    The arrays are read-only because tests share them: copy before changing voxels.
    """
    from mem3d.io import load_slicerio_sample

    image, annotation = load_slicerio_sample()
    image.array.setflags(write=False)
    annotation.labels.setflags(write=False)
    return image, annotation


@pytest.fixture(scope="session")
def random_model(tmp_path_factory) -> Path:
    """A compact model file with untrained weights: for geometry and bookkeeping, not accuracy."""
    import torch
    from mem3d.checkpoints import save_model
    from mem3d.network import STM, compact_config

    torch.set_num_threads(1)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "random-compact.safetensors"
    save_model(STM(compact_config()), path, {"name": "random test model"})
    return path
