"""Tests for the Slicer logic of Mem3DSegment against real MRML nodes from `slicer-core`.

The volume is slicerio's chest CT, read with Slicer's own storage node. A randomly initialised
compact model replaces a trained one, so these tests check grids, key slices, masking,
overwrite modes and undo, not segmentation accuracy.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package is not slicer-core", allow_module_level=True)

import slicerio  # noqa: E402
import torch  # noqa: E402

MODULE_FOLDER = Path(__file__).resolve().parents[1] / "Mem3DSegment"
if str(MODULE_FOLDER) not in sys.path:
    sys.path.insert(0, str(MODULE_FOLDER))

import mem3d  # noqa: E402
from mem3d.checkpoints import save_model  # noqa: E402
from mem3d.errors import CancelledError, Mem3DError  # noqa: E402
from mem3d.network import STM, compact_config  # noqa: E402
from Mem3DSegmentLib import geometry, models  # noqa: E402
from Mem3DSegmentLib.logic import Mem3DSegmentLogic, PreviewResult  # noqa: E402
from Mem3DSegmentLib.scene import createScene  # noqa: E402

torch.set_num_threads(1)

SLICERIO_DATA = Path(slicerio.__file__).parent / "data"
CT_FILE = SLICERIO_DATA / "CTChest4.nrrd"
REFERENCE_SEGMENTATION = SLICERIO_DATA / "Segmentation.seg.nrrd"
RIGHT_LUNG = "Segment_5"  # "right lung" in slicerio's sample segmentation

# A crop of the chest CT, (k, j, i), small enough for a test to propagate in well under a second.
SMALL_SHAPE = (9, 36, 40)
SMALL_SPACING = (0.9, 0.8, 2.5)  # (i, j, k) in mm, as vtkMRMLVolumeNode.SetSpacing takes it


# --- Fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "random-compact.safetensors"
    save_model(STM(compact_config()), path, {})
    return str(path)


@pytest.fixture
def mrml():
    return createScene()


@pytest.fixture
def logic():
    return Mem3DSegmentLogic()


def load_ct(mrml):
    volume = mrml.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CTChest4")
    storage = mrml.scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(CT_FILE))
    assert storage.ReadData(volume)
    return volume


@pytest.fixture(scope="module")
def ct_crop() -> np.ndarray:
    """A (k, j, i) block of the chest CT around the right lung, read from the real file."""
    holder = createScene()
    array = slicer.util.arrayFromVolume(load_ct(holder)).copy()
    k, j, i = SMALL_SHAPE
    return array[12:12 + k, 40:40 + j, 20:20 + i].copy()


def small_volume(mrml, ct_crop, ijkToRas: np.ndarray | None = None):
    volume = mrml.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "crop")
    slicer.util.updateVolumeFromArray(volume, ct_crop)
    if ijkToRas is None:
        volume.SetSpacing(*SMALL_SPACING)
        volume.SetOrigin(-20.0, 15.0, -40.0)
    else:
        volume.SetIJKToRASMatrix(geometry.vtkMatrixFromNumpy(ijkToRas))
    return volume


def new_segmentation(mrml, referenceVolume, segmentIds=("painted",)):
    segmentation = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "segmentation")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolume)
    for segmentId in segmentIds:
        segmentation.GetSegmentation().AddEmptySegment(segmentId, segmentId)
    return segmentation


def set_segment(mrml, segmentation, segmentId: str, mask: np.ndarray, ijkToRas: np.ndarray,
                extentStart=(0, 0, 0)):
    image = geometry.orientedImageFromArray(mask.astype(np.uint8), ijkToRas, extentStart)
    assert mrml.segmentationsLogic.SetBinaryLabelmapToSegment(
        image, segmentation, segmentId, mrml.segmentationsLogic.MODE_REPLACE)


def segment_on_grid(segmentation, segmentId: str, volume) -> np.ndarray:
    """Return one segment as a (k, j, i) 0/1 array on the volume's grid."""
    from Mem3DSegmentLib.logic import annotationOnVolumeGrid

    return annotationOnVolumeGrid(segmentation, [segmentId], volume)


def block(shape, slices, rows=slice(8, 22), columns=slice(10, 26), axis: int = 0) -> np.ndarray:
    """Return a 0/1 mask with a rectangle on each given slice along `axis`."""
    mask = np.zeros(shape, dtype=np.uint8)
    along = np.moveaxis(mask, axis, 0)
    for index in slices:
        along[index][rows, columns] = 1
    return mask


def preview_with_labels(volume, labels: np.ndarray, segmentIds) -> PreviewResult:
    """A preview whose labels the test chooses, on the volume's grid, for apply tests."""
    return PreviewResult(
        labels=labels,
        segmentIds=list(segmentIds),
        quality={},
        axis=0,
        keySlices=[],
        ijkToRAS=geometry.volumeIjkToRas(volume),
        rasToWorld=np.eye(4),
    )


def integer_grid_segmentation(mrml, volume, volumeMask: np.ndarray, segIndexToVolIndex: np.ndarray,
                              segShape) -> tuple:
    """Build a segmentation on another grid whose voxels map onto whole volume voxels.

    `segIndexToVolIndex` is a 4x4 matrix from segmentation (i, j, k) indices to volume indices;
    a segmentation voxel takes the value of the volume voxel that contains its index, so the
    export back onto the volume grid reproduces `volumeMask` exactly.
    """
    segIjkToRas = geometry.volumeIjkToRas(volume) @ segIndexToVolIndex
    k, j, i = np.indices(segShape)
    homogeneous = np.stack([i, j, k, np.ones_like(i)]).reshape(4, -1).astype(float)
    target = np.floor(segIndexToVolIndex @ homogeneous + 1e-6).astype(int)
    vi, vj, vk = target[0], target[1], target[2]
    inside = ((vi >= 0) & (vi < volumeMask.shape[2]) & (vj >= 0) & (vj < volumeMask.shape[1])
              & (vk >= 0) & (vk < volumeMask.shape[0]))
    segMask = np.zeros(int(np.prod(segShape)), dtype=np.uint8)
    segMask[inside] = volumeMask[vk[inside], vj[inside], vi[inside]]
    segMask = segMask.reshape(segShape)

    reference = mrml.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "segmentation grid")
    slicer.util.updateVolumeFromArray(reference, np.zeros(segShape, dtype=np.uint8))
    reference.SetIJKToRASMatrix(geometry.vtkMatrixFromNumpy(segIjkToRas))
    segmentation = new_segmentation(mrml, reference)
    set_segment(mrml, segmentation, "painted", segMask, segIjkToRas)
    return segmentation, segIjkToRas


def along_axis(array: np.ndarray, axis: int, index: int) -> np.ndarray:
    return np.take(array, index, axis=axis)


# --- Scene setup --------------------------------------------------------------------------------


def test_scene_setup_creates_labelmap_segments(mrml, ct_crop):
    volume = small_volume(mrml, ct_crop)
    segmentation = new_segmentation(mrml, volume, ("a",))
    segment = segmentation.GetSegmentation().GetSegment("a")
    assert segment.GetRepresentation("Binary labelmap") is not None
    assert mrml.scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode") > 0


# --- Preview: agreement with the engine, axes and key slices ---------------------------------


def test_preview_matches_engine_exactly(mrml, logic, model_path):
    volume = load_ct(mrml)
    reference = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "reference")
    storage = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(REFERENCE_SEGMENTATION))
    assert storage.ReadData(reference)
    lung = segment_on_grid(reference, RIGHT_LUNG, volume)
    painted = np.zeros_like(lung)
    painted[[14, 22]] = lung[[14, 22]]
    segmentation = new_segmentation(mrml, volume, ("lung",))
    set_segment(mrml, segmentation, "lung", painted, geometry.volumeIjkToRas(volume))

    result = logic.preview(volume, segmentation, ["lung"], model=model_path, device="cpu")

    image = slicer.util.arrayFromVolume(volume)
    spacing = geometry.spacingKji(geometry.volumeIjkToRas(volume))
    expected = mem3d.propagate(image.copy(), painted, spacing=spacing, axis=0, model=model_path,
                               device="cpu")
    assert result.labels.shape == image.shape
    assert np.array_equal(result.labels, expected.labels)
    assert result.keySlices == [14, 22]
    assert set(result.quality) == {"lung"}
    np.testing.assert_array_equal(result.quality["lung"], expected.quality[1])


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_key_slices_detected_along_each_axis(mrml, logic, model_path, ct_crop, axis):
    volume = small_volume(mrml, ct_crop)
    keys = [2, 6]
    painted = block(SMALL_SHAPE, keys, rows=slice(3, 8), columns=slice(4, 9), axis=axis)
    segmentation = new_segmentation(mrml, volume)
    set_segment(mrml, segmentation, "painted", painted, geometry.volumeIjkToRas(volume))

    result = logic.preview(volume, segmentation, model=model_path, device="cpu")

    assert result.axis == axis
    assert result.keySlices == keys
    for key in keys:
        assert np.array_equal(along_axis(result.labels, axis, key), along_axis(painted, axis, key))


def test_anatomical_axis_names_follow_directions(mrml, logic, model_path, ct_crop):
    # The volume's k axis points along R, its i axis along S: "sagittal" is k, "axial" is i.
    ijkToRas = np.array([[0.0, 0.0, 2.5, 0.0], [0.0, 0.8, 0.0, 0.0], [0.9, 0.0, 0.0, 0.0],
                         [0.0, 0.0, 0.0, 1.0]])
    volume = small_volume(mrml, ct_crop, ijkToRas)
    painted = block(SMALL_SHAPE, [4], rows=slice(3, 8), columns=slice(4, 9), axis=0)
    segmentation = new_segmentation(mrml, volume)
    set_segment(mrml, segmentation, "painted", painted, ijkToRas)

    assert logic.preview(volume, segmentation, axis="sagittal", model=model_path, device="cpu").axis == 0
    assert logic.preview(volume, segmentation, axis="coronal", model=model_path, device="cpu").axis == 1
    assert logic.preview(volume, segmentation, axis="axial", model=model_path, device="cpu").axis == 2


def test_axis_from_slice_normal_on_oblique_volume(mrml, ct_crop):
    angle = np.radians(25)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    ijkToRas = np.eye(4)
    ijkToRas[:3, :3] = rotation @ np.diag([0.9, 0.8, 2.5])
    volume = small_volume(mrml, ct_crop, ijkToRas)

    assert geometry.axisFromSliceNormal(volume, (0, 0, 1)) == 0
    assert geometry.axisFromSliceNormal(volume, (0, 1, 0)) == 1
    assert geometry.axisFromSliceNormal(volume, (1, 0, 0)) == 2
    assert geometry.axisFromSliceNormal(volume, (0.2, -0.1, -3.0)) == 0


def test_slice_normal_follows_parent_transform(mrml, ct_crop):
    volume = small_volume(mrml, ct_crop)
    transform = mrml.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    toParent = np.array([[0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0],
                         [0.0, 0.0, 0.0, 1.0]])  # rotates the volume's S axis onto R
    transform.SetMatrixTransformToParent(geometry.vtkMatrixFromNumpy(toParent))
    volume.SetAndObserveTransformNodeID(transform.GetID())

    assert geometry.axisFromSliceNormal(volume, (1, 0, 0)) == 0


def test_tied_axis_uses_view_normal(mrml, logic, model_path, ct_crop):
    volume = small_volume(mrml, ct_crop)
    painted = np.zeros(SMALL_SHAPE, dtype=np.uint8)
    painted[4, 10, 12] = 1  # one voxel covers one slice along every axis
    segmentation = new_segmentation(mrml, volume)
    set_segment(mrml, segmentation, "painted", painted, geometry.volumeIjkToRas(volume))

    with pytest.raises(Mem3DError, match="choose Axial, Coronal or Sagittal"):
        logic.preview(volume, segmentation, model=model_path, device="cpu")
    result = logic.preview(volume, segmentation, model=model_path, device="cpu", viewNormalRAS=(0, 1, 0))
    assert result.axis == 1


def test_empty_segments_rejected(mrml, logic, model_path, ct_crop):
    volume = small_volume(mrml, ct_crop)
    segmentation = new_segmentation(mrml, volume)

    with pytest.raises(Mem3DError, match="paint the structure"):
        logic.preview(volume, segmentation, model=model_path, device="cpu")


def test_unknown_segment_rejected(mrml, logic, model_path, ct_crop):
    volume = small_volume(mrml, ct_crop)
    segmentation = new_segmentation(mrml, volume)

    with pytest.raises(ValueError, match="not in segmentation"):
        logic.preview(volume, segmentation, ["missing"], model=model_path, device="cpu")


def test_vector_volume_uses_first_component(mrml, logic, model_path, ct_crop):
    scalar = small_volume(mrml, ct_crop)
    vector = mrml.scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
    slicer.util.updateVolumeFromArray(vector, np.stack([ct_crop, ct_crop // 2, ct_crop * 0], axis=-1))
    vector.SetIJKToRASMatrix(geometry.vtkMatrixFromNumpy(geometry.volumeIjkToRas(scalar)))
    painted = block(SMALL_SHAPE, [2, 6], rows=slice(9, 20), columns=slice(10, 22))
    segmentation = new_segmentation(mrml, scalar)
    set_segment(mrml, segmentation, "painted", painted, geometry.volumeIjkToRas(scalar))

    fromVector = logic.preview(vector, segmentation, model=model_path, device="cpu")
    fromScalar = logic.preview(scalar, segmentation, model=model_path, device="cpu")

    assert np.array_equal(fromVector.labels, fromScalar.labels)


# --- Preview: segmentations on other grids -----------------------------------------------------

# Segmentation index -> volume index matrices whose voxels map onto whole volume voxels.
_HALF_SPACING = np.diag([0.5, 0.5, 0.5, 1.0])
_SHIFTED_EXTENT = np.array([[1.0, 0, 0, 3], [0, 1.0, 0, -2], [0, 0, 1.0, 1], [0, 0, 0, 1]])
_FLIPPED_AND_PERMUTED = np.array([[0, 0, 1.0, 0], [0, -1.0, 0, 35], [1.0, 0, 0, 0], [0, 0, 0, 1]])


@pytest.mark.parametrize(
    ("segIndexToVolIndex", "segShape"),
    [
        (_HALF_SPACING, (18, 72, 80)),
        (_SHIFTED_EXTENT, (6, 40, 30)),
        (_FLIPPED_AND_PERMUTED, (40, 36, 9)),
    ],
    ids=["finer spacing", "shifted extent", "flipped and permuted directions"],
)
def test_other_grid_segmentation_on_volume_grid(mrml, logic, model_path, ct_crop,
                                                      segIndexToVolIndex, segShape):
    volume = small_volume(mrml, ct_crop)
    painted = block(SMALL_SHAPE, [3, 5], rows=slice(9, 20), columns=slice(10, 22))
    segmentation, segIjkToRas = integer_grid_segmentation(mrml, volume, painted, segIndexToVolIndex,
                                                          segShape)
    stored = segmentation.GetSegmentation().GetSegment("painted").GetRepresentation("Binary labelmap")
    np.testing.assert_allclose(geometry.imageIjkToRas(stored), segIjkToRas)

    result = logic.preview(volume, segmentation, ["painted"], model=model_path, device="cpu")

    assert result.labels.shape == SMALL_SHAPE
    np.testing.assert_array_equal(result.ijkToRAS, geometry.volumeIjkToRas(volume))
    assert result.axis == 0
    assert result.keySlices == [3, 5]
    for key in (3, 5):
        assert np.array_equal(result.labels[key], painted[key])


def test_oblique_segmentation_on_volume_grid(mrml, logic, model_path, ct_crop):
    volume = small_volume(mrml, ct_crop)
    angle = np.radians(30)
    segIjkToRas = geometry.volumeIjkToRas(volume).copy()
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    segIjkToRas[:3, :3] = rotation @ np.diag([0.6, 0.6, 2.5])
    segIjkToRas[:3, 3] += (-6.0, 4.0, 0.0)
    reference = mrml.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "oblique grid")
    slicer.util.updateVolumeFromArray(reference, np.zeros((9, 60, 60), dtype=np.uint8))
    reference.SetIJKToRASMatrix(geometry.vtkMatrixFromNumpy(segIjkToRas))
    segmentation = new_segmentation(mrml, reference)
    segMask = np.zeros((9, 60, 60), dtype=np.uint8)
    segMask[4, 15:40, 20:45] = 1
    set_segment(mrml, segmentation, "painted", segMask, segIjkToRas)

    result = logic.preview(volume, segmentation, ["painted"], model=model_path, device="cpu")

    exported = segment_on_grid(segmentation, "painted", volume)
    assert result.labels.shape == SMALL_SHAPE
    assert result.keySlices == [4]
    assert exported[4].sum() > 50
    assert np.array_equal(result.labels[4], exported[4])


def test_oriented_image_path_covers_whole_grid(mrml, logic, model_path, ct_crop):
    volume = small_volume(mrml, ct_crop)
    painted = block(SMALL_SHAPE, [4], rows=slice(9, 20), columns=slice(10, 22))
    segmentation = new_segmentation(mrml, volume)
    set_segment(mrml, segmentation, "painted", painted, geometry.volumeIjkToRas(volume))
    # The source image as a segment editor aligns it: the same voxels, indexed from (5, 3, 0).
    shift = np.eye(4)
    shift[:3, 3] = (-5, -3, 0)
    source = geometry.orientedImageFromArray(ct_crop, geometry.volumeIjkToRas(volume) @ shift, (5, 3, 0))

    run = logic.sessionForOrientedImage(source, segmentation, ["painted"], model=model_path, device="cpu")
    for _ in run.steps():
        pass
    fromImage = run.result
    fromVolume = logic.preview(volume, segmentation, ["painted"], model=model_path, device="cpu")

    assert fromImage.labels.shape == SMALL_SHAPE
    assert fromImage.extentStart == (5, 3, 0)
    assert np.array_equal(fromImage.labels, fromVolume.labels)
    output = fromImage.orientedImage()
    assert output.GetExtent() == source.GetExtent()
    assert slicer.vtkOrientedImageDataResample.DoGeometriesMatch(output, source)


def test_segmentation_parent_transform_followed(mrml, logic, model_path, ct_crop):
    volume = small_volume(mrml, ct_crop)
    painted = block(SMALL_SHAPE, [4], rows=slice(9, 20), columns=slice(10, 22))
    transform = mrml.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    toParent = np.eye(4)
    toParent[:3, 3] = (0.0, 0.0, 2.5)  # one slice up along S
    transform.SetMatrixTransformToParent(geometry.vtkMatrixFromNumpy(toParent))
    segmentation = new_segmentation(mrml, volume)
    segmentation.SetAndObserveTransformNodeID(transform.GetID())
    set_segment(mrml, segmentation, "painted", painted, geometry.volumeIjkToRas(volume))

    result = logic.preview(volume, segmentation, ["painted"], model=model_path, device="cpu")

    assert result.keySlices == [5]
    assert np.array_equal(result.labels[5], painted[4])


# --- Preview: range, progress, cancel, reuse ---------------------------------------------------


def test_slice_range_limits_propagation(mrml, logic, model_path, ct_crop):
    volume = small_volume(mrml, ct_crop)
    painted = block(SMALL_SHAPE, [4], rows=slice(9, 20), columns=slice(10, 22))
    segmentation = new_segmentation(mrml, volume)
    set_segment(mrml, segmentation, "painted", painted, geometry.volumeIjkToRas(volume))
    computed = []

    result = logic.preview(volume, segmentation, model=model_path, device="cpu", sliceRange=(3, 5),
                           progress=lambda step: computed.append(step.slice_index))

    assert set(computed) <= {3, 5}
    assert not result.labels[:3].any()
    assert not result.labels[6:].any()
    with pytest.raises(Mem3DError, match="slice range"):
        logic.preview(volume, segmentation, model=model_path, device="cpu", sliceRange=(5, 9))


def test_preview_leaves_scene_unchanged(mrml, logic, model_path, ct_crop):
    volume = small_volume(mrml, ct_crop)
    painted = block(SMALL_SHAPE, [2, 6])
    segmentation = new_segmentation(mrml, volume)
    set_segment(mrml, segmentation, "painted", painted, geometry.volumeIjkToRas(volume))
    nodesBefore = mrml.scene.GetNumberOfNodes()

    logic.preview(volume, segmentation, model=model_path, device="cpu")

    assert mrml.scene.GetNumberOfNodes() == nodesBefore
    assert np.array_equal(segment_on_grid(segmentation, "painted", volume), painted)


def test_cancel_leaves_no_result(mrml, logic, model_path, ct_crop):
    volume = small_volume(mrml, ct_crop)
    painted = block(SMALL_SHAPE, [4])
    segmentation = new_segmentation(mrml, volume)
    set_segment(mrml, segmentation, "painted", painted, geometry.volumeIjkToRas(volume))
    run = logic.sessionForPreview(volume, segmentation, model=model_path, device="cpu")
    steps = run.steps()

    next(steps)
    steps.close()

    assert run.result is None
    assert run.session.result is None

    def cancel(step):
        raise CancelledError("cancelled by the test")

    with pytest.raises(CancelledError):
        logic.preview(volume, segmentation, model=model_path, device="cpu", progress=cancel)
    assert np.array_equal(segment_on_grid(segmentation, "painted", volume), painted)


def test_correction_reuses_unchanged_walks(mrml, logic, model_path, ct_crop):
    volume = small_volume(mrml, ct_crop)
    painted = block(SMALL_SHAPE, [1, 4, 7], rows=slice(9, 20), columns=slice(10, 22))
    segmentation = new_segmentation(mrml, volume)
    set_segment(mrml, segmentation, "painted", painted, geometry.volumeIjkToRas(volume))
    first = logic.preview(volume, segmentation, model=model_path, device="cpu")

    corrected = painted.copy()
    corrected[7, 9:20, 10:16] = 0
    set_segment(mrml, segmentation, "painted", corrected, geometry.volumeIjkToRas(volume))
    second = logic.preview(volume, segmentation, model=model_path, device="cpu")

    assert first.slicesComputed > 0
    assert second.slicesComputed < first.slicesComputed
    assert np.array_equal(second.labels[7], corrected[7])


def test_least_certain_point_on_slice(mrml, logic, model_path, ct_crop):
    volume = small_volume(mrml, ct_crop)
    painted = block(SMALL_SHAPE, [2, 6], rows=slice(9, 20), columns=slice(10, 22))
    segmentation = new_segmentation(mrml, volume)
    set_segment(mrml, segmentation, "painted", painted, geometry.volumeIjkToRas(volume))

    result = logic.preview(volume, segmentation, model=model_path, device="cpu")

    least = result.leastCertain
    assert least is not None
    assert least.segmentId == "painted"
    assert least.quality == pytest.approx(np.nanmin(result.quality["painted"]))
    rasToIjk = np.linalg.inv(geometry.volumeIjkToRas(volume))
    ijk = rasToIjk @ np.array([*least.pointRAS, 1.0])
    assert ijk[2] == pytest.approx(least.sliceIndex)


def test_labelmap_node_written_with_volume_geometry(mrml, logic, model_path, ct_crop):
    volume = small_volume(mrml, ct_crop)
    painted = block(SMALL_SHAPE, [4])
    segmentation = new_segmentation(mrml, volume)
    set_segment(mrml, segmentation, "painted", painted, geometry.volumeIjkToRas(volume))
    result = logic.preview(volume, segmentation, model=model_path, device="cpu")
    labelmap = mrml.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")

    result.writeToLabelmapNode(labelmap)

    assert np.array_equal(slicer.util.arrayFromVolume(labelmap), result.labels)
    np.testing.assert_allclose(geometry.volumeIjkToRas(labelmap), geometry.volumeIjkToRas(volume))


# --- Apply: overwrite modes, masking, undo -----------------------------------------------------


def _two_segment_scene(mrml, ct_crop):
    """A volume with segments "target" (painted on slice 4) and "other" (a block that the
    propagated target overlaps on slices 2 to 6)."""
    volume = small_volume(mrml, ct_crop)
    ijkToRas = geometry.volumeIjkToRas(volume)
    segmentation = new_segmentation(mrml, volume, ("target", "other"))
    set_segment(mrml, segmentation, "target", block(SMALL_SHAPE, [4]), ijkToRas)
    other = np.zeros(SMALL_SHAPE, dtype=np.uint8)
    other[2:7, 15:30, 18:34] = 1
    set_segment(mrml, segmentation, "other", other, ijkToRas)
    labels = block(SMALL_SHAPE, range(2, 7))
    return volume, segmentation, other, labels


@pytest.mark.parametrize(
    ("mode", "hideOther", "otherKept"),
    [("none", False, True), ("all", False, False), ("visible", False, False), ("visible", True, True)],
)
def test_apply_overwrite_modes(mrml, logic, ct_crop, mode, hideOther, otherKept):
    volume, segmentation, other, labels = _two_segment_scene(mrml, ct_crop)
    if hideOther:
        segmentation.GetDisplayNode().SetSegmentVisibility("other", False)
    preview = preview_with_labels(volume, labels, ["target"])

    logic.apply(segmentation, volume, preview, overwriteMode=mode)

    assert np.array_equal(segment_on_grid(segmentation, "target", volume), labels)
    otherAfter = segment_on_grid(segmentation, "other", volume)
    if otherKept:
        assert np.array_equal(otherAfter, other)
    else:
        assert np.array_equal(otherAfter, other & (1 - labels))


def test_apply_default_keeps_other_segments(mrml, logic, ct_crop):
    volume, segmentation, other, labels = _two_segment_scene(mrml, ct_crop)

    logic.apply(segmentation, volume, preview_with_labels(volume, labels, ["target"]))

    assert np.array_equal(segment_on_grid(segmentation, "other", volume), other)


def test_apply_inside_mask_segment_only(mrml, logic, ct_crop):
    volume, segmentation, other, labels = _two_segment_scene(mrml, ct_crop)
    keyOutsideMask = block(SMALL_SHAPE, [4]) & (1 - other)

    logic.apply(segmentation, volume, preview_with_labels(volume, labels, ["target"]),
                maskMode="inside_segment", maskSegmentId="other")

    target = segment_on_grid(segmentation, "target", volume)
    # Inside the mask the propagated voxels are set, and outside it the segment keeps its voxels.
    assert np.array_equal(target, (labels & other) | keyOutsideMask)


def test_apply_uses_editor_node_settings(mrml, logic, ct_crop):
    volume, segmentation, other, labels = _two_segment_scene(mrml, ct_crop)
    editorNode = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    editorNode.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedOutsideAllSegments)
    editorNode.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteNone)

    logic.apply(segmentation, volume, preview_with_labels(volume, labels, ["target"]),
                segmentEditorNode=editorNode)

    target = segment_on_grid(segmentation, "target", volume)
    expected = (labels & (1 - other)) | block(SMALL_SHAPE, [4])
    assert np.array_equal(target, expected)
    assert np.array_equal(segment_on_grid(segmentation, "other", volume), other)


def test_apply_outside_all_shrinks_segment(mrml, logic, ct_crop):
    volume, segmentation, other, _ = _two_segment_scene(mrml, ct_crop)
    ijkToRas = geometry.volumeIjkToRas(volume)
    set_segment(mrml, segmentation, "target", block(SMALL_SHAPE, [3, 4, 5]), ijkToRas)
    labels = block(SMALL_SHAPE, [4])

    logic.apply(segmentation, volume, preview_with_labels(volume, labels, ["target"]),
                maskMode="outside_all")

    # The edited segment's own voxels are editable, so slices 3 and 5 are cleared outside
    # "other". Inside "other" nothing is editable, and the old voxels stay.
    expected = labels | (block(SMALL_SHAPE, [3, 4, 5]) & other)
    assert np.array_equal(segment_on_grid(segmentation, "target", volume), expected)


def test_apply_intensity_range_masks(mrml, logic, ct_crop):
    volume, segmentation, other, labels = _two_segment_scene(mrml, ct_crop)
    editorNode = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    editorNode.SetSourceVolumeIntensityMask(True)
    editorNode.SetSourceVolumeIntensityMaskRange(-2000.0, -500.0)  # air and lung, in HU
    editorNode.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteNone)

    logic.apply(segmentation, volume, preview_with_labels(volume, labels, ["target"]),
                segmentEditorNode=editorNode)

    inRange = ((ct_crop >= -2000) & (ct_crop <= -500)).astype(np.uint8)
    expected = (labels & inRange) | block(SMALL_SHAPE, [4])
    assert 0 < (labels & inRange).sum() < labels.sum()
    assert np.array_equal(segment_on_grid(segmentation, "target", volume), expected)


def test_undo_restores_state_before_apply(mrml, logic, ct_crop):
    volume, segmentation, other, labels = _two_segment_scene(mrml, ct_crop)
    targetBefore = segment_on_grid(segmentation, "target", volume)

    logic.apply(segmentation, volume, preview_with_labels(volume, labels, ["target"]), overwriteMode="all")
    assert not np.array_equal(segment_on_grid(segmentation, "other", volume), other)

    assert logic.undo()
    assert np.array_equal(segment_on_grid(segmentation, "target", volume), targetBefore)
    assert np.array_equal(segment_on_grid(segmentation, "other", volume), other)
    assert not logic.undo()


def test_apply_rejects_missing_segment(mrml, logic, ct_crop):
    volume, segmentation, other, labels = _two_segment_scene(mrml, ct_crop)
    targetBefore = segment_on_grid(segmentation, "target", volume)
    preview = preview_with_labels(volume, np.maximum(labels, 2 * (1 - labels) * other), ["target", "gone"])

    with pytest.raises(ValueError, match="no longer in"):
        logic.apply(segmentation, volume, preview)

    assert np.array_equal(segment_on_grid(segmentation, "target", volume), targetBefore)
    with pytest.raises(ValueError, match="needs an existing mask segment"):
        logic.apply(segmentation, volume, preview_with_labels(volume, labels, ["target"]),
                    maskMode="inside_segment")


def test_apply_preview_of_other_grid_to_segmentation(mrml, logic, model_path, ct_crop):
    volume = small_volume(mrml, ct_crop)
    painted = block(SMALL_SHAPE, [3, 5], rows=slice(9, 20), columns=slice(10, 22))
    segmentation, segIjkToRas = integer_grid_segmentation(mrml, volume, painted, _HALF_SPACING, (18, 72, 80))
    labels = block(SMALL_SHAPE, range(2, 7), rows=slice(9, 20), columns=slice(10, 22))

    logic.apply(segmentation, volume, preview_with_labels(volume, labels, ["painted"]))

    assert np.array_equal(segment_on_grid(segmentation, "painted", volume), labels)


def test_preview_then_apply_writes_result(mrml, logic, model_path, ct_crop):
    volume = small_volume(mrml, ct_crop)
    painted = block(SMALL_SHAPE, [2, 6], rows=slice(9, 20), columns=slice(10, 22))
    segmentation = new_segmentation(mrml, volume)
    set_segment(mrml, segmentation, "painted", painted, geometry.volumeIjkToRas(volume))
    result = logic.preview(volume, segmentation, model=model_path, device="cpu")

    logic.apply(segmentation, volume, result)

    assert np.array_equal(segment_on_grid(segmentation, "painted", volume), result.segmentMask("painted"))


# --- Model settings and downloads ---------------------------------------------------------------


def test_model_settings_resolve():
    assert models.modelForSettings("default") is None
    assert models.modelForSettings("vmn-youtube-vos") == "vmn-youtube-vos"
    assert models.modelForSettings("file", "/models/mine.safetensors") == "/models/mine.safetensors"
    with pytest.raises(ValueError, match="needs a model file"):
        models.modelForSettings("file", "")
    with pytest.raises(ValueError, match="not one of"):
        models.modelForSettings("other")


def test_download_progress_parsed():
    output = " 12%|#2        | 40.0M/330M\r 47%|####7     | 155M/330M\r"
    assert models.parseDownloadPercent(output) == 47
    assert models.parseDownloadPercent("Downloading...\nFrom: https://example.org/x") is None


def test_partial_downloads_removed(tmp_path):
    partial = tmp_path / ".vmn-youtube-vos-ab12.download"
    partial.mkdir()
    (partial / "vmn-youtube-vos.pth").write_bytes(b"partial")
    other = tmp_path / ".mem3d-compact-cd34.download"
    other.mkdir()
    finished = tmp_path / "vmn-youtube-vos.pth"
    finished.write_bytes(b"complete")

    removed = models.removePartialDownloads("vmn-youtube-vos", tmp_path)

    assert removed == [partial]
    assert not partial.exists()
    assert other.exists()
    assert finished.exists()


def test_download_command_runs_engine_cli(tmp_path):
    program, arguments, environment = models.downloadCommand("vmn-youtube-vos", str(tmp_path))

    assert arguments == ["-m", "mem3d.cli", "models", "download", "vmn-youtube-vos"]
    assert environment[models.CACHE_DIR_VARIABLE] == str(tmp_path)
    assert str(models.engineFolder()) in environment["PYTHONPATH"].split(":")
    assert Path(program).name
    with pytest.raises(ValueError, match="can be downloaded"):
        models.downloadCommand("mem3d-compact")


def test_unload_models_forgets_session(mrml, logic, model_path, ct_crop):
    volume = small_volume(mrml, ct_crop)
    segmentation = new_segmentation(mrml, volume)
    set_segment(mrml, segmentation, "painted", block(SMALL_SHAPE, [4]), geometry.volumeIjkToRas(volume))
    logic.preview(volume, segmentation, model=model_path, device="cpu")

    logic.unloadModels()

    assert logic._session is None
    from mem3d import api

    assert not api._runners


def test_settings_round_trip_and_fallbacks():
    store = {}

    class Store:
        def value(self, key, default):
            return store.get(key, default)

        def setValue(self, key, value):
            store[key] = value

    assert models.readSettings(Store()) == models.EngineSettings()
    chosen = models.EngineSettings("file", "/models/mine.safetensors", "cpu", "/tmp/cache")
    models.writeSettings(Store(), chosen)
    assert models.readSettings(Store()) == chosen
    assert models.readSettings(Store()).model == "/models/mine.safetensors"
    store[models.SETTINGS_DEVICE] = "tpu"
    store[models.SETTINGS_MODEL_CHOICE] = "removed-model"
    fallback = models.readSettings(Store())
    assert fallback.device == "auto"
    assert fallback.model is None


def _python_command(code: str, cacheFolder: Path):
    return sys.executable, ["-c", code], {models.CACHE_DIR_VARIABLE: str(cacheFolder)}


def test_download_reports_progress_and_exit(tmp_path):
    code = "import sys; sys.stderr.write(' 30%|###  | 3M/10M\\r100%|#####| 10M/10M\\n')"
    download = models.ModelDownload("vmn-youtube-vos", str(tmp_path))
    download.start(_python_command(code, tmp_path))
    try:
        download._process.wait(30)
        state = download.poll()
    finally:
        download.close()

    assert not state.running
    assert state.returnCode == 0
    assert state.percent == 100


def test_download_cancel_removes_partial_file(tmp_path):
    staging = tmp_path / ".vmn-youtube-vos-x1.download"
    code = (
        "import pathlib, sys, time; folder = pathlib.Path(sys.argv[1]); folder.mkdir();"
        "(folder / 'part').write_bytes(b'x'); sys.stderr.write(' 5%|'); sys.stderr.flush(); time.sleep(60)"
    )
    download = models.ModelDownload("vmn-youtube-vos", str(tmp_path))
    program, arguments, environment = _python_command(code, tmp_path)
    download.start((program, [*arguments, str(staging)], environment))
    try:
        for _ in range(300):
            state = download.poll()
            if state.percent is not None:
                break
            time.sleep(0.02)
        assert state.running
        assert state.percent == 5
        download.cancel()
        assert download._process.poll() is not None
    finally:
        download.close()

    assert not staging.exists()
