"""Benchmark: metrics, baselines, the registration method, case lists and one small real run."""

from __future__ import annotations

import json
import math

import mem3d
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from mem3d.errors import Mem3DError
from mem3d.evaluation import metrics
from mem3d.evaluation.baselines import contour_interpolation, copy_nearest_key_slice
from mem3d.evaluation.cases import load_case, packaged_list, read_cases, resolve_axis
from mem3d.propagation import PropagationSession
from mem3d.registration import RegistrationSettings

SPLEEN_CT = "ivadomed_data_testing/ct_scan/sub-spleen2/ct/sub-spleen2_ct.nii.gz"
SPLEEN_MASK = (
    "ivadomed_data_testing/ct_scan/derivatives/labels/sub-spleen2/ct/sub-spleen2_ct_seg-manual.nii.gz"
)
GM_T2S = "sct_testing_data/t2s/t2s.nii.gz"
GM_T2S_MASK = "sct_testing_data/t2s/t2s_gmseg_manual.nii.gz"
# ITK's SWIG-generated modules emit one DeprecationWarning per wrapped type when imported.
pytestmark = pytest.mark.filterwarnings("ignore:builtin type .* has no __module__ attribute")

METHODS = {"network", "registration", "registration-true-extent", "copy", "contour-interpolation"}


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def cube(shape=(20, 20, 20), start=(5, 5, 5), side=8) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[start[0]:start[0] + side, start[1]:start[1] + side, start[2]:start[2] + side] = True
    return mask


def key_slice_annotation(reference: np.ndarray, key: int) -> np.ndarray:
    annotation = np.zeros(reference.shape, dtype=np.uint8)
    annotation[key] = reference[key]
    return annotation


def read_reference(data_root, image_path, mask_path):
    from mem3d.io import read_annotation, read_image

    image = read_image(data_root / image_path)
    annotation = read_annotation(data_root / mask_path, reference=image)
    return image, annotation.labels == 1


# --- metrics ----------------------------------------------------------------------------------


def test_dice_identical_masks_is_one():
    assert metrics.dice(cube(), cube()) == 1.0


def test_dice_disjoint_and_empty_masks():
    assert metrics.dice(cube(start=(0, 0, 0), side=4), cube(start=(10, 10, 10), side=4)) == 0.0
    empty = np.zeros((5, 5, 5), dtype=bool)
    assert metrics.dice(empty, empty) == 1.0


def test_dice_half_overlap():
    reference = cube(start=(0, 0, 0), side=4)
    prediction = cube(start=(2, 0, 0), side=4)
    assert metrics.dice(reference, prediction) == pytest.approx(0.5)


@pytest.mark.parametrize("axis,spacing", [(0, (2.5, 1.0, 1.0)), (1, (1.0, 0.7, 1.0)), (2, (1.0, 1.0, 3.0))])
def test_hd95_of_shifted_cube_is_shift_in_mm(axis, spacing):
    reference = cube()
    prediction = np.roll(reference, 2, axis=axis)
    assert metrics.hausdorff_95(reference, prediction, spacing) == pytest.approx(2 * spacing[axis])


def test_hd95_identical_masks_is_zero():
    assert metrics.hausdorff_95(cube(), cube(), (1.0, 1.0, 1.0)) == 0.0


def test_hd95_empty_prediction_is_infinite():
    empty = np.zeros((20, 20, 20), dtype=bool)
    assert math.isinf(metrics.hausdorff_95(cube(), empty, (1.0, 1.0, 1.0)))
    assert metrics.hausdorff_95(empty, empty, (1.0, 1.0, 1.0)) == 0.0


def test_slice_dice_covers_union_of_extents():
    reference = cube(start=(2, 5, 5), side=4)  # slices 2..5
    prediction = cube(start=(4, 5, 5), side=4)  # slices 4..7
    per_slice = metrics.slice_dice(reference, prediction, axis=0)
    assert sorted(per_slice) == [2, 3, 4, 5, 6, 7]
    assert per_slice[2] == 0.0
    assert per_slice[4] == 1.0
    assert metrics.mean_slice_dice(per_slice) == pytest.approx(2 / 6)


# --- baselines --------------------------------------------------------------------------------


def test_copy_fills_extent_from_nearest_key():
    reference = np.zeros((10, 6, 6), dtype=bool)
    reference[2:8, 1:3, 1:3] = True
    reference[7, 3:5, 3:5] = True
    prediction = copy_nearest_key_slice(reference, 0, keys=[3, 7], slice_range=(2, 7))
    np.testing.assert_array_equal(prediction[2], reference[3])
    np.testing.assert_array_equal(prediction[5], reference[3])  # tie between 3 and 7: lower key
    np.testing.assert_array_equal(prediction[6], reference[7])
    assert not prediction[:2].any()
    assert not prediction[8:].any()


def test_contour_interpolation_fills_between_keys():
    reference = cube(shape=(12, 24, 24), start=(2, 6, 6), side=9)
    prediction = contour_interpolation(reference, 0, keys=[2, 10], spacing=(1.0, 1.0, 1.0))
    assert prediction.shape == reference.shape
    assert metrics.dice(reference, prediction) > 0.95
    assert not prediction[:2].any()


def test_contour_interpolation_needs_two_keys():
    with pytest.raises(ValueError, match="two key slices"):
        contour_interpolation(cube(), 0, keys=[8], spacing=(1.0, 1.0, 1.0))


# --- registration method ----------------------------------------------------------------------


def test_registration_keeps_key_slice_and_grid(data_root):
    image, reference = read_reference(data_root, SPLEEN_CT, SPLEEN_MASK)
    key = 12
    annotation = key_slice_annotation(reference, key)
    result = mem3d.propagate(image.array, annotation, image.spacing, axis=0,
                             method="registration")
    assert result.labels.shape == image.array.shape
    assert result.labels.dtype == annotation.dtype
    assert set(np.unique(result.labels)) <= {0, 1}
    np.testing.assert_array_equal(result.labels[key], annotation[key])
    assert result.quality[1][key] == 1.0
    computed = result.quality[1][~np.isnan(result.quality[1])]
    assert np.all((computed >= 0) & (computed <= 1))


def test_registration_spleen_true_extent_dice(data_root):
    image, reference = read_reference(data_root, SPLEEN_CT, SPLEEN_MASK)
    first, last = metrics.extent(reference, 0)
    middle = (first + last) // 2
    session = mem3d.open_session(image.array, key_slice_annotation(reference, middle),
                                 image.spacing, axis=0, slice_range=(first, last),
                                 method="registration",
                                 registration_settings=RegistrationSettings(detect_object_end=False))
    for _ in session.run():
        pass
    prediction = session.result.labels == 1
    assert metrics.extent(prediction, 0) == (first, last)
    assert metrics.dice(reference, prediction) > 0.5


def test_registration_stops_near_spleen_ends(data_root):
    image, reference = read_reference(data_root, SPLEEN_CT, SPLEEN_MASK)
    first, last = metrics.extent(reference, 0)
    middle = (first + last) // 2
    result = mem3d.propagate(image.array, key_slice_annotation(reference, middle), image.spacing,
                             axis=0, method="registration")
    predicted_first, predicted_last = metrics.extent(result.labels == 1, 0)
    assert predicted_first > 0
    assert predicted_last < image.array.shape[0] - 1
    assert metrics.dice(reference, result.labels == 1) > 0.5


def test_registration_loads_no_model(monkeypatch, slicerio_sample):
    import mem3d.api

    def fail(*args, **kwargs):
        raise AssertionError("load_runner was called for the registration method")

    monkeypatch.setattr(mem3d.api, "load_runner", fail)
    image, reference = slicerio_sample
    labels = np.where(reference.labels == 5, 5, 0).astype(reference.labels.dtype)
    key = 20
    annotation = np.zeros_like(labels)
    annotation[key] = labels[key]
    result = mem3d.api.propagate(image.array, annotation, image.spacing, axis=0,
                                 method="registration")
    assert set(np.unique(result.labels)) <= {0, 5}
    np.testing.assert_array_equal(result.labels[key], annotation[key])


def test_session_rejects_unknown_method_and_missing_runner():
    image = np.zeros((4, 8, 8), dtype=np.float32)
    annotation = np.zeros((4, 8, 8), dtype=np.uint8)
    with pytest.raises(Mem3DError, match="not one of"):
        PropagationSession(None, image, annotation, method="optical-flow")
    with pytest.raises(Mem3DError, match="needs a model runner"):
        PropagationSession(None, image, annotation, method="network")
    with pytest.raises(Mem3DError, match="not one of"):
        mem3d.open_session(image, annotation, method="optical-flow")


def test_propagate_command_registration(data_root, tmp_path, capsys):
    from mem3d.cli import main
    from mem3d.io import read_annotation, read_image, write_labelmap

    image = read_image(data_root / GM_T2S)
    reference = read_annotation(data_root / GM_T2S_MASK, reference=image).labels
    annotation = key_slice_annotation(reference, 4)
    annotation_path = tmp_path / "key.nii.gz"
    write_labelmap(annotation, image, annotation_path)
    output = tmp_path / "out.nii.gz"
    assert main(["propagate", str(data_root / GM_T2S), str(annotation_path), "-o", str(output),
                 "--method", "registration", "--no-progress"]) == 0
    written = read_annotation(output, reference=image).labels
    assert written.shape == reference.shape
    np.testing.assert_array_equal(written[4], annotation[4])
    assert "slices propagated" in capsys.readouterr().out


# --- cases ------------------------------------------------------------------------------------


def test_default_case_list_splits(data_root):
    cases = {case.name: case for case in read_cases(
        packaged_list("benchmark_cases.csv"), data_root, packaged_list("training_cases.csv"),
        packaged_list("validation_cases.csv"))}
    for name in ("spleen-ct", "cord-t2", "cord-unf01-t2w"):
        assert cases[name].split == "held-out"
    assert cases["cord-t1"].split == "validation"
    for name in ("gm-t2s", "gm-t2s-uncropped", "gm-mt1", "chest-ribs", "chest-tissue"):
        assert cases[name].split == "seen"
    assert [cases[f"chest-{n}"].label for n in ("ribs", "left-lung", "tissue")] == [1, 6, 7]


def test_axial_axis_follows_image_orientation(data_root):
    cases = {case.name: case for case in read_cases(
        packaged_list("benchmark_cases.csv"), data_root, packaged_list("training_cases.csv"), None)}
    # cord-t2 is stored with k along left-right and j along inferior-superior.
    assert load_case(cases["cord-t2"], "axial").axis == 1
    assert load_case(cases["spleen-ct"], "axial").axis == 0
    assert load_case(cases["spleen-ct"], "2").axis == 2
    identity = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert resolve_axis("sagittal", identity) == 2


def test_case_list_rejects_missing_columns(tmp_path, data_root):
    bad = tmp_path / "cases.csv"
    bad.write_text("image,labelmap\na.nii.gz,b.nii.gz\n")
    with pytest.raises(Mem3DError, match="lacks the columns label, name"):
        read_cases(bad, data_root, packaged_list("training_cases.csv"), None)


# --- whole benchmark --------------------------------------------------------------------------


def test_benchmark_small_case(data_root, random_model, tmp_path, capsys):
    from mem3d.cli import main

    cases = tmp_path / "cases.csv"
    cases.write_text(f"image,labelmap,label,name\n{GM_T2S},{GM_T2S_MASK},1,gm-t2s\n")
    output = tmp_path / "results.json"
    report = tmp_path / "report"
    status = main(["benchmark", "--cases", str(cases), "--data-root", str(data_root),
                   "--model", str(random_model), "--device", "cpu", "--threads", "1",
                   "--rounds", "2", "--no-scaling", "--json", str(output), "--report", str(report)])
    assert status == 0
    results = json.loads(output.read_text())

    assert results["cases"][0]["status"] == "ok"
    assert results["cases"][0]["split"] == "seen"
    runs = results["runs"]
    assert {run["method"] for run in runs} == METHODS
    for run in runs:
        assert 0.0 <= run["dice"] <= 1.0
        assert all(0.0 <= value <= 1.0 for value in run["slices"]["dice"])
        assert run["hd95_mm"] is None or run["hd95_mm"] >= 0
        assert run["seconds"] >= 0
        assert run["case"] == "gm-t2s"
    by_key = {(r["method"], r["strategy"], r["round"]): r for r in runs}
    assert set(by_key) >= {("network", "oracle", 1), ("network", "quality", 2),
                           ("copy", "oracle", 1), ("contour-interpolation", "oracle", 2),
                           ("registration-true-extent", "quality", 2)}
    assert ("contour-interpolation", "oracle", 1) not in by_key
    assert ("copy", "quality", 1) not in by_key
    assert len(by_key[("network", "oracle", 2)]["key_slices"]) == 2
    assert by_key[("copy", "oracle", 1)]["key_slices"] == [results["cases"][0]["middle_slice"]]
    assert {row["split"] for row in results["summary"]} == {"seen", "all"}

    assert (report / "report.md").is_file()
    for plot in ("dice_vs_key_slices.png", "slice_dice_vs_distance.png"):
        assert (report / plot).stat().st_size > 0
    assert "contour-interpolation" in capsys.readouterr().out


def test_scaling_run_registration():
    from mem3d.evaluation.scaling import run_scaling

    records = run_scaling(["48x40x16"], ["registration"], model=None, device="cpu", threads=1,
                          log_line=lambda line: None)
    assert len(records) == 1
    record = records[0]
    assert record["shape"] == [48, 40, 16]
    assert record["slices_computed"] > 0
    assert record["peak_rss_mb"] >= record["rss_before_mb"] > 0
    assert record["dice"] > 0.5
