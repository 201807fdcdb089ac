"""The embedded default model: its file, its metadata, the demo and accuracy on a held-out CT."""

from __future__ import annotations

import mem3d
import numpy as np
import pytest
import torch
from mem3d.cli import main
from mem3d.registry import DEFAULT_MODEL, resolve_model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    torch.set_num_threads(1)


def test_default_model_is_small_and_described(capsys):
    path = resolve_model(DEFAULT_MODEL)
    assert path.stat().st_size <= 20 * 1024 * 1024
    assert main(["models", "info", DEFAULT_MODEL]) == 0
    output = capsys.readouterr().out
    assert "mem3d-compact" in output
    assert "tensors missing: 0" in output


def test_default_model_parameter_budget():
    from mem3d.checkpoints import load_model
    from mem3d.network import count_parameters

    loaded = load_model(resolve_model(DEFAULT_MODEL))
    assert count_parameters(loaded.network) <= 8_000_000
    assert loaded.metadata["prior"] == "registration"
    assert loaded.metadata["training"]["steps"] > 0


def test_spleen_from_middle_slice(data_root):
    from mem3d.io import read_annotation, read_image

    folder = data_root / "ivadomed_data_testing" / "ct_scan"
    image = read_image(folder / "sub-spleen2" / "ct" / "sub-spleen2_ct.nii.gz")
    labels = read_annotation(
        folder / "derivatives" / "labels" / "sub-spleen2" / "ct" / "sub-spleen2_ct_seg-manual.nii.gz"
    ).labels
    present = np.flatnonzero(labels.any(axis=(1, 2)))
    middle = (present[0] + present[-1]) // 2
    annotation = np.zeros_like(labels)
    annotation[middle] = labels[middle]
    result = mem3d.propagate(image.array, annotation, image.spacing, device="cpu")
    predicted, reference = result.labels > 0, labels > 0
    dice = 2 * (predicted & reference).sum() / (predicted.sum() + reference.sum())
    assert dice > 0.80  # measured 0.845 with the shipped model


def test_demo_prints_dice_per_segment(tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path / "demo")]) == 0
    output = capsys.readouterr().out
    assert "right lung" in output
    assert "mean" in output
    assert (tmp_path / "demo" / "result.seg.nrrd").exists()
    assert (tmp_path / "demo" / "montage.png").exists()
