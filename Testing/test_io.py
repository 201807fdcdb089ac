"""Tests for mem3d.io on real volumes: grids survive round trips, labels and segments survive,
and bad inputs raise Mem3DError messages that name the file."""

from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
from mem3d import io
from mem3d.errors import Mem3DError

SPLEEN_CT = "ivadomed_data_testing/ct_scan/sub-spleen2/ct/sub-spleen2_ct.nii.gz"
SPLEEN_MASK = (
    "ivadomed_data_testing/ct_scan/derivatives/labels/sub-spleen2/ct/sub-spleen2_ct_seg-manual.nii.gz"
)
T2 = "sct_testing_data/t2/t2.nii.gz"
T2_MASK = "sct_testing_data/t2/t2_seg-manual.nii.gz"
FLOAT_MASK = "ivadomed_data_testing/derivatives/labels/sub-unf01/anat/sub-unf01_T2w_seg-manual.nii.gz"
DICOM_FOLDER = "dcmqi_ct3slice/ct-3slice"
LIVER_MASK = "dcmqi_ct3slice/liver_seg.nrrd"

SLICERIO_DATA = Path(slicerio.__file__).parent / "data"

# NIfTI stores the grid in float32 (and an oblique direction as a quaternion); the other
# formats print doubles with full precision.
GRID_TOLERANCE = {".nii.gz": 1e-5, ".nrrd": 1e-12, ".mha": 1e-12, ".seg.nrrd": 1e-12}


def assert_same_grid(actual: io.Volume, expected: io.Volume, tolerance: float) -> None:
    assert actual.array.shape[:3] == expected.array.shape[:3]
    np.testing.assert_allclose(actual.spacing, expected.spacing, rtol=0, atol=tolerance)
    np.testing.assert_allclose(actual.origin, expected.origin, rtol=0, atol=tolerance * 100)
    np.testing.assert_allclose(actual.direction, expected.direction, rtol=0, atol=tolerance)


def assert_names_file(error: pytest.ExceptionInfo, path: Path) -> None:
    message = str(error.value)
    assert str(path) in message
    assert "\n" not in message


def rotation(axis, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    angle = np.radians(degrees)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def write_sitk(array: np.ndarray, path: Path, is_vector: bool = False) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=is_vector), str(path))
    return path


def grid_like(reference: io.Volume, array: np.ndarray, origin=None) -> io.Volume:
    origin = reference.origin if origin is None else tuple(float(o) for o in origin)
    return io.Volume(array, reference.spacing, origin, reference.direction)


# ---------------------------------------------------------------------------------------------
# Reading


def test_read_image_keeps_pixel_type(data_root, slicerio_sample):
    spleen = io.read_image(data_root / SPLEEN_CT)
    t2 = io.read_image(data_root / T2)
    chest, _ = slicerio_sample

    assert spleen.array.dtype == np.float32
    assert t2.array.dtype == np.int16
    assert chest.array.dtype == np.int32


def test_read_image_axis_order(data_root):
    spleen = io.read_image(data_root / SPLEEN_CT)

    assert spleen.array.shape == (26, 166, 164)
    np.testing.assert_allclose(spleen.spacing, (5.0, 0.794922, 0.794922), atol=1e-5)


def test_read_dicom_series_folder(data_root):
    ct = io.read_image(data_root / DICOM_FOLDER)

    assert ct.array.shape == (3, 512, 512)
    assert np.issubdtype(ct.array.dtype, np.integer)
    np.testing.assert_allclose(ct.spacing, (1.0, 0.810547, 0.810547), atol=1e-5)


def test_liver_mask_on_dicom_grid(data_root):
    ct = io.read_image(data_root / DICOM_FOLDER)
    liver = io.read_annotation(data_root / LIVER_MASK, reference=ct)

    assert liver.labels.shape == ct.array.shape
    assert liver.labels.dtype == np.int16
    assert set(np.unique(liver.labels)) == {0, 1}
    assert [s.name for s in liver.segments] == ["Label 1"]


def test_float_mask_becomes_uint8(data_root):
    annotation = io.read_annotation(data_root / FLOAT_MASK)

    assert annotation.labels.dtype == np.uint8
    assert set(np.unique(annotation.labels)) == {0, 1}
    assert annotation.volume.array is annotation.labels


def test_float_mask_with_300_becomes_uint16(tmp_path):
    array = np.zeros((4, 5, 6), dtype=np.float32)
    array[1, 2, 3] = 300
    path = write_sitk(array, tmp_path / "mask.nii.gz")

    annotation = io.read_annotation(path)

    assert annotation.labels.dtype == np.uint16
    assert annotation.labels[1, 2, 3] == 300


def test_plain_labelmap_default_segments(data_root):
    annotation = io.read_annotation(data_root / SPLEEN_MASK)
    segment = annotation.segments[0]

    assert len(annotation.segments) == 1
    assert segment.label_value == 1
    assert segment.name == "Label 1"
    assert all(0.0 <= c <= 1.0 for c in segment.color)


def test_slicerio_sample_segments(slicerio_sample):
    image, annotation = slicerio_sample
    names = [s.name for s in annotation.segments]
    first = annotation.segments[0]

    assert names == [
        "ribs",
        "cervical vertebral column",
        "thoracic vertebral column",
        "lumbar vertebral column",
        "right lung",
        "left lung",
        "tissue",
    ]
    assert [s.label_value for s in annotation.segments] == list(range(1, 8))
    assert first.color == pytest.approx((0.992157, 0.909804, 0.619608))
    assert first.extra["terminology"]["type"][2] == "Rib"
    assert annotation.labels.shape == image.array.shape
    assert set(np.unique(annotation.labels)) == set(range(8))


# ---------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
@pytest.mark.parametrize("image_name, mask_name", [(SPLEEN_CT, SPLEEN_MASK), (T2, T2_MASK)])
def test_labelmap_round_trip_keeps_grid(data_root, tmp_path, suffix, image_name, mask_name):
    image = io.read_image(data_root / image_name)
    mask = io.read_annotation(data_root / mask_name, reference=image)
    path = tmp_path / f"mask{suffix}"

    io.write_labelmap(mask.labels, image, path)
    written = io.read_image(path)

    assert_same_grid(written, image, GRID_TOLERANCE[suffix])
    assert written.array.dtype == mask.labels.dtype
    np.testing.assert_array_equal(written.array, mask.labels)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".seg.nrrd"])
def test_oblique_grid_round_trip(data_root, tmp_path, suffix):
    t2 = io.read_image(data_root / T2)
    mask = io.read_annotation(data_root / T2_MASK, reference=t2)
    direction = rotation((1.0, 2.0, 0.5), 25.0) @ np.reshape(t2.direction, (3, 3))
    oblique = io.Volume(t2.array, t2.spacing, (12.5, -40.25, 7.0), tuple(direction.ravel()))
    oblique_path = tmp_path / "oblique.nrrd"
    io.write_volume(oblique, oblique_path)
    reference = io.read_image(oblique_path)

    path = tmp_path / f"mask{suffix}"
    io.write_result(mask.labels, reference, mask.segments, path)
    written = io.read_annotation(path, reference=reference)

    assert_same_grid(reference, oblique, 1e-12)
    assert_same_grid(written.volume, reference, GRID_TOLERANCE[suffix])
    np.testing.assert_array_equal(written.labels, mask.labels)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".seg.nrrd"])
def test_label_values_300_and_7_survive(data_root, tmp_path, suffix):
    image = io.read_image(data_root / SPLEEN_CT)
    spleen = io.read_annotation(data_root / SPLEEN_MASK, reference=image)
    labels = spleen.labels.astype(np.uint16) * 300
    labels[0, :10, :10] = 7
    path = tmp_path / f"labels{suffix}"

    io.write_result(labels, image, io.default_segments(np.unique(labels)), path)
    annotation = io.read_annotation(path, reference=image)

    assert annotation.labels.dtype == np.uint16
    assert set(np.unique(annotation.labels)) == {0, 7, 300}
    assert [s.label_value for s in annotation.segments] == [7, 300]
    assert [s.name for s in annotation.segments] == ["Label 7", "Label 300"]
    np.testing.assert_array_equal(annotation.labels, labels)


def test_segmentation_round_trip_keeps_segments(slicerio_sample, tmp_path):
    image, sample = slicerio_sample
    path = tmp_path / "chest.seg.nrrd"

    io.write_segmentation(sample.labels, image, sample.segments, path)
    written = io.read_annotation(path)

    assert_same_grid(written.volume, image, 1e-12)
    np.testing.assert_array_equal(written.labels, sample.labels)
    for actual, expected in zip(written.segments, sample.segments):
        assert actual.name == expected.name
        assert actual.label_value == expected.label_value
        assert actual.color == pytest.approx(expected.color)
        assert actual.extra["id"] == expected.extra["id"]
        assert actual.extra["terminology"] == expected.extra["terminology"]
    assert len(written.segments) == len(sample.segments)


def test_segmentation_reference_geometry_matches_slicer(slicerio_sample, tmp_path):
    image, sample = slicerio_sample
    path = tmp_path / "chest.seg.nrrd"
    io.write_segmentation(sample.labels, image, sample.segments, path)

    def geometry(file: Path) -> np.ndarray:
        parameters = slicerio.read_segmentation(str(file), skip_voxels=True)["conversionParameters"]
        value = next(p["value"] for p in parameters if p["name"] == "Reference image geometry")
        return np.array([float(v) for v in value.strip(";").split(";")])

    np.testing.assert_allclose(geometry(path), geometry(SLICERIO_DATA / "Segmentation.seg.nrrd"))


def test_write_result_picks_format(slicerio_sample, tmp_path):
    image, sample = slicerio_sample
    segmentation_path = tmp_path / "out.seg.nrrd"
    labelmap_path = tmp_path / "out.nrrd"

    io.write_result(sample.labels, image, sample.segments, segmentation_path)
    io.write_result(sample.labels, image, sample.segments, labelmap_path)

    assert io.read_annotation(segmentation_path).segments[0].name == "ribs"
    assert io.read_annotation(labelmap_path).segments[0].name == "Label 1"


def test_nrrd_with_segment_fields_is_segmentation(tmp_path):
    segmentation = slicerio.read_segmentation(str(SLICERIO_DATA / "Segmentation.seg.nrrd"))
    path = tmp_path / "chest.nrrd"
    slicerio.write_segmentation(str(path), segmentation)

    annotation = io.read_annotation(path)

    assert annotation.segments[0].name == "ribs"
    assert len(annotation.segments) == 7


def test_uncompressed_file_named_nii_gz(data_root, tmp_path):
    path = tmp_path / "plain.nii.gz"
    path.write_bytes(gzip.decompress((data_root / T2_MASK).read_bytes()))

    annotation = io.read_annotation(path)

    expected = io.read_annotation(data_root / T2_MASK)
    np.testing.assert_array_equal(annotation.labels, expected.labels)


def test_many_label_values_warn(tmp_path, caplog):
    path = write_sitk(np.arange(1200, dtype=np.uint16).reshape(12, 10, 10), tmp_path / "many.nrrd")

    with caplog.at_level(logging.WARNING, logger="mem3d.io"):
        annotation = io.read_annotation(path)

    assert len(annotation.segments) == 1199
    assert "check that this is the mask and not the image" in caplog.text


def test_unlisted_label_values_get_segments(slicerio_sample, tmp_path, caplog):
    image, sample = slicerio_sample
    labels = np.array(sample.labels)
    labels[0, :3, :3] = 42
    path = tmp_path / "extra.seg.nrrd"

    with caplog.at_level(logging.WARNING, logger="mem3d.io"):
        io.write_segmentation(labels, image, sample.segments[:6], path)
    annotation = io.read_annotation(path)

    assert [s.label_value for s in annotation.segments] == [1, 2, 3, 4, 5, 6, 7, 42]
    assert [s.name for s in annotation.segments[-2:]] == ["Label 7", "Label 42"]
    assert "belong to no segment" in caplog.text


def test_mhd_writes_header_and_data(data_root, tmp_path):
    image = io.read_image(data_root / SPLEEN_CT)
    spleen = io.read_annotation(data_root / SPLEEN_MASK, reference=image)

    io.write_labelmap(spleen.labels, image, tmp_path / "mask.mhd")

    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.mhd", "mask.zraw"]
    np.testing.assert_array_equal(io.read_image(tmp_path / "mask.mhd").array, spleen.labels)


# ---------------------------------------------------------------------------------------------
# Segmentations on a grid other than the image's


def write_sample_on_grid(sample, image, labels, first_voxel_kji, path: Path) -> Path:
    """Write `labels` as a .seg.nrrd whose voxel (0, 0, 0) is image voxel `first_voxel_kji`."""
    origin = image.ijk_to_lps() @ np.array([*first_voxel_kji[::-1], 1.0])
    io.write_segmentation(labels, grid_like(image, labels, origin[:3]), sample.segments, path)
    return path


def test_cropped_segmentation_padded_onto_image(slicerio_sample, tmp_path):
    image, sample = slicerio_sample
    crop = (slice(5, 30), slice(10, 100), slice(20, 120))
    path = write_sample_on_grid(
        sample, image, sample.labels[crop], (5, 10, 20), tmp_path / "cropped.seg.nrrd"
    )
    expected = np.zeros_like(sample.labels)
    expected[crop] = sample.labels[crop]

    annotation = io.read_annotation(path, reference=image)

    assert_same_grid(annotation.volume, image, 1e-9)
    np.testing.assert_array_equal(annotation.labels, expected)
    assert [s.name for s in annotation.segments] == [s.name for s in sample.segments]


def test_segmentation_outside_image_is_cropped(slicerio_sample, tmp_path, caplog):
    image, sample = slicerio_sample
    larger = np.zeros((sample.labels.shape[0] + 2,) + sample.labels.shape[1:], np.uint8)
    larger[2:] = sample.labels
    larger[0, :4, :4] = 1
    path = write_sample_on_grid(sample, image, larger, (-2, 0, 0), tmp_path / "larger.seg.nrrd")

    with caplog.at_level(logging.WARNING, logger="mem3d.io"):
        annotation = io.read_annotation(path, reference=image)

    np.testing.assert_array_equal(annotation.labels, sample.labels)
    assert "16 labelled voxels lie outside the image" in caplog.text


def test_misaligned_segmentation_raises(slicerio_sample, tmp_path):
    image, sample = slicerio_sample
    path = write_sample_on_grid(
        sample, image, np.array(sample.labels), (0, 0.5, 0), tmp_path / "shifted.seg.nrrd"
    )

    with pytest.raises(Mem3DError) as raised:
        io.read_annotation(path, reference=image)

    message = str(raised.value)
    assert_names_file(raised, path)
    assert "not aligned" in message
    assert message.count("size 128x128x34") == 2


def test_layers_without_overlap_are_merged(tmp_path):
    segmentation = slicerio.read_segmentation(str(SLICERIO_DATA / "SegmentationOverlapping.seg.nrrd"))
    voxels = segmentation["voxels"]
    voxels[1][voxels[0] != 0] = 0
    path = tmp_path / "layers.seg.nrrd"
    slicerio.write_segmentation(str(path), segmentation)

    annotation = io.read_annotation(path)
    sphere = annotation.segments[-1]

    assert len(annotation.segments) == 8
    assert sphere.name == "overlapping sphere"
    assert sphere.label_value == 8
    np.testing.assert_array_equal(annotation.labels == 8, voxels[1].transpose(2, 1, 0) == 1)
    np.testing.assert_array_equal(annotation.labels * (annotation.labels < 8), voxels[0].transpose(2, 1, 0))


def test_overlapping_segments_raise(slicerio_sample):
    image, _ = slicerio_sample
    path = SLICERIO_DATA / "SegmentationOverlapping.seg.nrrd"

    with pytest.raises(Mem3DError) as raised:
        io.read_annotation(path, reference=image)

    message = str(raised.value)
    assert_names_file(raised, path)
    assert "overlapping segments are not supported" in message
    assert "'overlapping sphere'" in message


def test_labelmap_on_other_grid_raises(data_root):
    t2 = io.read_image(data_root / T2)
    path = data_root / SPLEEN_MASK

    with pytest.raises(Mem3DError) as raised:
        io.read_annotation(path, reference=t2)

    message = str(raised.value)
    assert_names_file(raised, path)
    assert "size 164x166x26" in message
    assert "size 60x55x52" in message
    assert "Resample" in message


# ---------------------------------------------------------------------------------------------
# Input errors


@pytest.mark.parametrize("name", ["absent.nii.gz", "absent.seg.nrrd", "absent_folder"])
def test_missing_input_raises(tmp_path, name):
    path = tmp_path / name

    with pytest.raises(Mem3DError, match="not found") as raised:
        io.read_annotation(path)
    assert_names_file(raised, path)

    with pytest.raises(Mem3DError, match="not found"):
        io.read_image(path)


def test_corrupt_files_raise(data_root, tmp_path):
    source = (data_root / SPLEEN_CT).read_bytes()
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(source[: len(source) // 2])
    uncompressed = tmp_path / "truncated.nii"
    uncompressed.write_bytes(gzip.decompress(source)[:-1000])
    metaimage = tmp_path / "truncated.mha"
    sitk.WriteImage(sitk.ReadImage(str(data_root / T2)), str(metaimage), useCompression=True)
    metaimage.write_bytes(metaimage.read_bytes()[:-1000])
    garbage = tmp_path / "garbage.nrrd"
    garbage.write_bytes(b"not an image\n" * 20)
    segmentation = (SLICERIO_DATA / "Segmentation.seg.nrrd").read_bytes()
    truncated_segmentation = tmp_path / "truncated.seg.nrrd"
    truncated_segmentation.write_bytes(segmentation[: len(segmentation) // 2])

    for path in (truncated, uncompressed, metaimage, garbage):
        with pytest.raises(Mem3DError, match="cannot read image") as raised:
            io.read_image(path)
        assert_names_file(raised, path)
    with pytest.raises(Mem3DError, match="cannot read segmentation") as raised:
        io.read_annotation(truncated_segmentation)
    assert_names_file(raised, truncated_segmentation)


def test_folder_without_dicom_raises(tmp_path):
    with pytest.raises(Mem3DError, match="no DICOM series") as raised:
        io.read_image(tmp_path)
    assert_names_file(raised, tmp_path)


@pytest.mark.parametrize(
    "shape, is_vector, expected",
    [
        ((2, 3, 4, 5), False, "4D image"),
        ((3, 4, 5, 3), True, "3 components per voxel"),
        ((4, 5), False, "2D image"),
    ],
)
def test_image_shape_errors(tmp_path, shape, is_vector, expected):
    path = write_sitk(np.zeros(shape, np.uint8), tmp_path / "bad.nrrd", is_vector)

    with pytest.raises(Mem3DError, match=expected) as raised:
        io.read_image(path)
    assert_names_file(raised, path)
    with pytest.raises(Mem3DError, match=expected):
        io.read_annotation(path)


def test_four_d_error_says_how_to_fix(tmp_path):
    path = write_sitk(np.zeros((2, 3, 4, 5), np.float32), tmp_path / "series.nii.gz")

    with pytest.raises(Mem3DError, match="extracted") as raised:
        io.read_image(path)
    assert_names_file(raised, path)


@pytest.mark.parametrize(
    "value, expected",
    [(0.5, "non-integer values such as 0.5"), (-1.0, "negative values"), (np.nan, "NaN")],
)
def test_invalid_label_values_raise(tmp_path, value, expected):
    array = np.zeros((3, 4, 5), dtype=np.float32)
    array[1, 1, 1] = value
    # NRRD, because the SimpleITK 2.5.7 NIfTI round trip turns NaN into 0.
    path = write_sitk(array, tmp_path / "mask.nrrd")

    with pytest.raises(Mem3DError, match=expected) as raised:
        io.read_annotation(path)
    assert_names_file(raised, path)


# ---------------------------------------------------------------------------------------------
# Write errors


def test_failed_write_leaves_no_file(slicerio_sample, tmp_path, monkeypatch):
    image, sample = slicerio_sample

    def write_half_then_fail(image_to_write, file_name, *args, **kwargs):
        Path(file_name).write_bytes(b"partial")
        raise RuntimeError("ITK ERROR: no space left on device")

    monkeypatch.setattr(sitk, "WriteImage", write_half_then_fail)
    with pytest.raises(Mem3DError, match="failed to write"):
        io.write_labelmap(sample.labels, image, tmp_path / "out.nrrd")

    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_previous_output(slicerio_sample, tmp_path, monkeypatch):
    image, sample = slicerio_sample
    path = tmp_path / "out.seg.nrrd"
    path.write_bytes(b"previous result")

    def write_half_then_fail(file_name, *args, **kwargs):
        Path(file_name).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(slicerio, "write_segmentation", write_half_then_fail)
    with pytest.raises(Mem3DError, match="No space left on device"):
        io.write_segmentation(sample.labels, image, sample.segments, path)

    assert path.read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["out.seg.nrrd"]


def test_interrupted_write_leaves_no_file(slicerio_sample, tmp_path, monkeypatch):
    image, sample = slicerio_sample

    def write_half_then_interrupt(image_to_write, file_name, *args, **kwargs):
        Path(file_name).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(sitk, "WriteImage", write_half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        io.write_result(sample.labels, image, sample.segments, tmp_path / "out.nii.gz")

    assert list(tmp_path.iterdir()) == []


def test_unwritable_folder_raises(slicerio_sample, tmp_path, monkeypatch):
    image, sample = slicerio_sample

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(io.tempfile, "mkdtemp", deny)
    with pytest.raises(Mem3DError, match="Permission denied") as raised:
        io.write_result(sample.labels, image, sample.segments, tmp_path / "out.nrrd")
    assert_names_file(raised, tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write to read-only folders"
)
def test_read_only_folder_raises(slicerio_sample, tmp_path):
    image, sample = slicerio_sample
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(Mem3DError, match="cannot write to folder") as raised:
            io.write_result(sample.labels, image, sample.segments, folder / "out.nrrd")
    finally:
        folder.chmod(0o700)
    assert_names_file(raised, folder)
    assert list(folder.iterdir()) == []


def test_missing_output_folder_raises(slicerio_sample, tmp_path):
    image, sample = slicerio_sample
    folder = tmp_path / "absent"

    with pytest.raises(Mem3DError, match="output folder not found") as raised:
        io.write_result(sample.labels, image, sample.segments, folder / "out.nrrd")
    assert_names_file(raised, folder)


def test_unsupported_extension_raises(slicerio_sample, tmp_path):
    image, sample = slicerio_sample

    with pytest.raises(Mem3DError, match="unsupported file extension"):
        io.write_result(sample.labels, image, sample.segments, tmp_path / "out.png")
    assert list(tmp_path.iterdir()) == []


def test_wrong_label_shape_raises(slicerio_sample, tmp_path):
    image, sample = slicerio_sample

    with pytest.raises(ValueError, match="differs from the reference grid"):
        io.write_labelmap(sample.labels[1:], image, tmp_path / "out.nrrd")


def test_data_root_fixture_is_a_folder(data_root):
    assert data_root.is_dir()
    assert (data_root / DICOM_FOLDER).is_dir()


def test_slicerio_sample_is_read_only(slicerio_sample):
    image, annotation = slicerio_sample

    assert not image.array.flags.writeable
    assert not annotation.labels.flags.writeable
