"""Mem3D logic for Slicer: segments painted on a few slices in, a propagated preview out.

The logic is Qt-free, so it runs inside 3D Slicer and in a plain Python process with the
`slicer-core` package. It converts MRML nodes into the engine's (k, j, i) arrays and back:

- `preview` (or `sessionForPreview` for progress and cancel) resamples the requested segments
  onto the volume's voxel grid, propagates them with the engine and returns a `PreviewResult`.
- `sessionForOrientedImage` does the same on a vtkOrientedImageData grid. The Segment Editor
  effect passes the source volume as the segment editor has aligned it to the segmentation.
- `apply` writes a preview into the segments through Slicer's segment editor logic, which
  honours the editable area, intensity masking and the overwrite mode. It saves one undo state,
  and `undo` restores the segmentation as it was before the last `apply`.

Nothing is written to a segment before `apply`, and a cancelled or failed preview changes no node.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import slicer
import vtk
from mem3d.errors import Mem3DError
from mem3d.planning import checked_slice_range, detect_axis

from . import geometry

log = logging.getLogger(__name__)

AXIS_CHOICES = ("auto", "axial", "coronal", "sagittal")

OVERWRITE_MODES = {
    "all": slicer.vtkMRMLSegmentEditorNode.OverwriteAllSegments,
    "visible": slicer.vtkMRMLSegmentEditorNode.OverwriteVisibleSegments,
    "none": slicer.vtkMRMLSegmentEditorNode.OverwriteNone,
}

MASK_MODES = {
    "everywhere": slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere,
    "inside_all": slicer.vtkMRMLSegmentationNode.EditAllowedInsideAllSegments,
    "inside_visible": slicer.vtkMRMLSegmentationNode.EditAllowedInsideVisibleSegments,
    "outside_all": slicer.vtkMRMLSegmentationNode.EditAllowedOutsideAllSegments,
    "outside_visible": slicer.vtkMRMLSegmentationNode.EditAllowedOutsideVisibleSegments,
    "inside_segment": slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment,
}


@dataclass(frozen=True)
class LeastCertainSlice:
    """The slice with the lowest quality estimate of any propagated segment."""

    segmentId: str
    sliceIndex: int  # index along PreviewResult.axis
    quality: float  # the engine's estimate in [0, 1]
    pointRAS: tuple[float, float, float]  # world RAS on that slice, at the segment's centre


@dataclass
class PreviewResult:
    """A propagated labelmap on a voxel grid, with the segment of each label value."""

    labels: np.ndarray  # (k, j, i) labelmap: 0 is background, n is segmentIds[n - 1]
    segmentIds: list[str]
    quality: dict[str, np.ndarray]  # segment id -> estimate per slice along `axis`, NaN where not computed
    axis: int  # propagation axis of `labels`: 0 = k, 1 = j, 2 = i
    keySlices: list[int]  # slices along `axis` with painted voxels, copied unchanged
    ijkToRAS: np.ndarray  # 4x4: image (i, j, k) indices to the RAS of the node the grid came from
    rasToWorld: np.ndarray  # 4x4: that node's linear parent transform (identity without one)
    extentStart: tuple[int, int, int] = (0, 0, 0)  # (i, j, k) image index of labels[0, 0, 0]
    leastCertain: LeastCertainSlice | None = None
    seconds: float = 0.0
    slicesComputed: int = 0

    def labelValue(self, segmentId: str) -> int:
        try:
            return self.segmentIds.index(segmentId) + 1
        except ValueError:
            raise ValueError(f"segment {segmentId!r} is not in this preview: {self.segmentIds}") from None

    def segmentMask(self, segmentId: str) -> np.ndarray:
        """Return the (k, j, i) boolean mask of one segment."""
        return self.labels == self.labelValue(segmentId)

    def orientedImage(self, segmentId: str | None = None):
        """Return the labels (or one segment as 0/1) as a vtkOrientedImageData on this grid."""
        labels = self.labels if segmentId is None else self.segmentMask(segmentId).astype(np.uint8)
        return geometry.orientedImageFromArray(labels, self.ijkToRAS, self.extentStart)

    def writeToLabelmapNode(self, labelmapNode) -> None:
        """Fill a vtkMRMLLabelMapVolumeNode with the labels and this grid's geometry."""
        slicer.util.updateVolumeFromArray(labelmapNode, np.ascontiguousarray(self.labels))
        shift = np.eye(4)
        shift[:3, 3] = self.extentStart
        labelmapNode.SetIJKToRASMatrix(geometry.vtkMatrixFromNumpy(self.ijkToRAS @ shift))


@dataclass
class _Grid:
    """Engine input on one voxel grid, and how that grid sits in the scene."""

    image: np.ndarray  # (k, j, i) intensities, possibly a view on VTK memory
    annotation: np.ndarray  # (k, j, i) label n for the n-th requested segment
    ijkToRAS: np.ndarray
    rasToWorld: np.ndarray
    extentStart: tuple[int, int, int]
    source: tuple  # identifies the image and its modification time, for session reuse


@dataclass(frozen=True)
class _SessionKey:
    source: tuple
    shape: tuple
    ijkToRAS: bytes
    axis: int
    sliceRange: tuple[int, int] | None
    model: str | None
    device: str


class PreviewRun:
    """A prepared propagation: iterate `steps()` to the end for progress, then read `result`.

    `result` is set when the `steps()` generator is exhausted. Closing the generator (or no
    longer iterating it) cancels the run: `result` then stays None and no node is changed.
    """

    def __init__(self, session, segmentIds: list[str], grid: _Grid, axis: int):
        self.session = session  # mem3d.propagation.PropagationSession
        self.segmentIds = segmentIds
        self.axis = axis
        self.result: PreviewResult | None = None
        self._grid = grid

    def steps(self) -> Iterator:
        """Yield a mem3d.propagation.Progress after every computed slice."""
        self.result = None
        yield from self.session.run()
        self.result = self._makeResult(self.session.result)

    def _makeResult(self, engineResult) -> PreviewResult:
        grid = self._grid
        quality = {
            self.segmentIds[label - 1]: values for label, values in engineResult.quality.items()
        }
        return PreviewResult(
            labels=engineResult.labels,
            segmentIds=list(self.segmentIds),
            quality=quality,
            axis=engineResult.axis,
            keySlices=list(engineResult.key_slices),
            ijkToRAS=grid.ijkToRAS,
            rasToWorld=grid.rasToWorld,
            extentStart=grid.extentStart,
            leastCertain=self._leastCertain(engineResult),
            seconds=engineResult.seconds,
            slicesComputed=engineResult.slices_computed,
        )

    def _leastCertain(self, engineResult) -> LeastCertainSlice | None:
        found = engineResult.least_certain_slice()
        if found is None:
            return None
        label, index = found
        axis = engineResult.axis
        alongAxis = np.moveaxis(engineResult.labels, axis, 0)
        inPlane = np.argwhere(alongAxis[index] == label)
        if inPlane.size == 0:
            # The segment vanished on that slice, so point at where it lies on the other slices.
            inPlane = np.argwhere((alongAxis == label).any(axis=0))
        if inPlane.size == 0:
            centre = (np.asarray(alongAxis.shape[1:], dtype=float) - 1) / 2
        else:
            centre = inPlane.mean(axis=0)
        positionKji = np.insert(centre, axis, index)
        ijk = geometry.arrayIndexToIjk(positionKji, self._grid.extentStart)
        world = self._grid.rasToWorld @ self._grid.ijkToRAS @ ijk
        return LeastCertainSlice(
            segmentId=self.segmentIds[label - 1],
            sliceIndex=int(index),
            quality=float(engineResult.quality[label][index]),
            pointRAS=(float(world[0]), float(world[1]), float(world[2])),
        )


class Mem3DSegmentLogic:
    """Propagate segments through a volume with the mem3d engine and write them back.

    One session is kept between previews of the same image, axis, range and model, so a
    correction painted on one slice recomputes only the slices next to it.
    """

    def __init__(self):
        self._session = None
        self._sessionKey: _SessionKey | None = None
        self._editorLogic = None  # vtkSlicerSegmentEditorLogic used by apply and undo
        self._editorNode = None  # its hidden vtkMRMLSegmentEditorNode

    # --- Preview ---------------------------------------------------------------------------------

    def preview(self, volumeNode, segmentationNode, segmentIds: Sequence[str] | None = None,
                axis="auto", model: str | None = None, device: str = "auto",
                sliceRange: tuple[int, int] | None = None,
                progress: Callable | None = None, viewNormalRAS=None) -> PreviewResult:
        """Propagate segments through a volume and return the result on the volume's grid.

        segmentIds: segments to propagate. None takes the visible segments (all segments when
            the segmentation has no display node). Label n of the result is segmentIds[n - 1].
        axis: "auto", "axial", "coronal", "sagittal" (the volume axis nearest to that anatomical
            direction) or an array axis 0, 1, 2 (k, j, i). "auto" takes the axis along which
            the painted voxels cover the fewest slices, or `viewNormalRAS` when that ties.
        model: engine model name or checkpoint path, or None for the embedded default model.
        device: "auto", "cpu" or "cuda".
        sliceRange: (first, last) slice indices along the axis, inclusive, that limit the
            propagation. None propagates until each segment ends.
        progress: called with a mem3d Progress after every slice. Raising
            mem3d.errors.CancelledError from it cancels the run.
        viewNormalRAS: normal of the slice view the user painted in, in world RAS.
        """
        run = self.sessionForPreview(volumeNode, segmentationNode, segmentIds, axis, model, device,
                                     sliceRange, viewNormalRAS)
        return self._finish(run, progress)

    def sessionForPreview(self, volumeNode, segmentationNode, segmentIds: Sequence[str] | None = None,
                          axis="auto", model: str | None = None, device: str = "auto",
                          sliceRange: tuple[int, int] | None = None, viewNormalRAS=None) -> PreviewRun:
        """Prepare `preview` without running it; see `preview` for the arguments."""
        if volumeNode is None or volumeNode.GetImageData() is None:
            raise ValueError("the volume node is missing or has no image data; load a volume first")
        segmentIds = requestedSegmentIds(segmentationNode, segmentIds)
        annotation = annotationOnVolumeGrid(segmentationNode, segmentIds, volumeNode)
        imageData = volumeNode.GetImageData()
        image = slicer.util.arrayFromVolume(volumeNode)
        if image.ndim == 4:  # several components per voxel, for example RGB, so use the first
            image = image[..., 0]
        grid = _Grid(
            image=image,
            annotation=annotation,
            ijkToRAS=geometry.volumeIjkToRas(volumeNode),
            rasToWorld=geometry.nodeToWorld(volumeNode),
            extentStart=(0, 0, 0),
            source=("volume", volumeNode.GetID(), imageData.GetMTime()),
        )
        return self._prepareRun(grid, segmentIds, axis, model, device, sliceRange, viewNormalRAS)

    def sessionForOrientedImage(self, sourceImage, segmentationNode, segmentIds: Sequence[str],
                                axis="auto", model: str | None = None, device: str = "auto",
                                sliceRange: tuple[int, int] | None = None,
                                viewNormalRAS=None) -> PreviewRun:
        """Prepare a propagation on the whole grid of `sourceImage` (a vtkOrientedImageData).

        `sourceImage` is in the segmentation node's coordinates, as the segment editor's source
        volume image is. The segments are merged onto its full extent, so the result is not
        limited to the neighbourhood of the painted voxels. Label n is segmentIds[n - 1], the
        convention of Slicer's auto-complete effects.
        """
        segmentIds = requestedSegmentIds(segmentationNode, segmentIds)
        merged = slicer.vtkOrientedImageData()
        if not segmentationNode.GenerateMergedLabelmapForAllSegments(
                merged, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY, sourceImage,
                _stringArray(segmentIds)):
            raise RuntimeError(
                f"failed to merge segments {segmentIds} of {segmentationNode.GetName()!r} onto the "
                "source volume grid"
            )
        extent = sourceImage.GetExtent()
        if tuple(merged.GetExtent()) != tuple(extent):
            raise RuntimeError(
                f"merged segments have extent {merged.GetExtent()}, expected the source extent {extent}"
            )
        grid = _Grid(
            image=geometry.arrayFromOrientedImage(sourceImage),
            annotation=geometry.arrayFromOrientedImage(merged).copy(),
            ijkToRAS=geometry.imageIjkToRas(sourceImage),
            rasToWorld=geometry.nodeToWorld(segmentationNode),
            extentStart=(extent[0], extent[2], extent[4]),
            source=("image", sourceImage.GetAddressAsString("vtkOrientedImageData"),
                    sourceImage.GetMTime()),
        )
        return self._prepareRun(grid, segmentIds, axis, model, device, sliceRange, viewNormalRAS)

    def resolveAxis(self, axis, annotation: np.ndarray, ijkToWorld: np.ndarray, viewNormalRAS=None) -> int:
        """Return the array axis (0 = k, 1 = j, 2 = i) for an axis choice; see `preview`."""
        if isinstance(axis, (int, np.integer)) and not isinstance(axis, bool):
            if int(axis) not in (0, 1, 2):
                raise ValueError(f"axis {axis} is not an array axis 0, 1 or 2")
            return int(axis)
        name = str(axis).lower()
        if name in geometry.ANATOMICAL_NORMALS:
            return geometry.arrayAxisForDirection(ijkToWorld, geometry.ANATOMICAL_NORMALS[name])
        if name != "auto":
            raise ValueError(f"axis {axis!r} is not one of {', '.join(AXIS_CHOICES)}, 0, 1, 2")
        if not annotation.any():
            raise Mem3DError(
                "the segments to propagate contain no voxel inside the volume; paint the structure "
                "on at least one slice"
            )
        try:
            return detect_axis(annotation)
        except Mem3DError:
            if viewNormalRAS is None:
                raise Mem3DError(
                    "cannot tell the propagation axis from the painted voxels, because they extend "
                    "equally far along two volume axes; choose Axial, Coronal or Sagittal as the axis"
                ) from None
            return geometry.arrayAxisForDirection(ijkToWorld, viewNormalRAS)

    def _prepareRun(self, grid: _Grid, segmentIds, axis, model, device, sliceRange,
                    viewNormalRAS) -> PreviewRun:
        import mem3d

        ijkToWorld = grid.rasToWorld @ grid.ijkToRAS
        axisIndex = self.resolveAxis(axis, grid.annotation, ijkToWorld, viewNormalRAS)
        checkedRange = checked_slice_range(sliceRange, grid.annotation.shape[axisIndex])
        key = _SessionKey(
            source=grid.source,
            shape=grid.image.shape,
            ijkToRAS=grid.ijkToRAS.tobytes(),
            axis=axisIndex,
            sliceRange=checkedRange,
            model=None if model is None else str(model),
            device=str(device),
        )
        if self._session is not None and key == self._sessionKey:
            # The engine reuses the walks whose key slices did not change.
            self._session.set_annotation(grid.annotation)
        else:
            self._session, self._sessionKey = None, None  # free the old session before loading
            self._session = mem3d.open_session(
                np.array(grid.image, copy=True),
                grid.annotation,
                spacing=geometry.spacingKji(grid.ijkToRAS),
                axis=axisIndex,
                model=model,
                device=device,
                slice_range=checkedRange,
            )
            self._sessionKey = key
        log.info("prepared propagation of %d segments on a %s grid along axis %d",
                 len(segmentIds), grid.image.shape, axisIndex)
        return PreviewRun(self._session, list(segmentIds), grid, axisIndex)

    @staticmethod
    def _finish(run: PreviewRun, progress: Callable | None) -> PreviewResult:
        steps = run.steps()
        try:
            for step in steps:
                if progress is not None:
                    progress(step)
        finally:
            steps.close()
        return run.result

    # --- Apply and undo --------------------------------------------------------------------------

    def apply(self, segmentationNode, volumeNode, preview: PreviewResult, segmentEditorNode=None,
              overwriteMode: str | int | None = None, maskMode: str | int | None = None,
              maskSegmentId: str | None = None) -> None:
        """Write a preview into its segments as one undoable edit.

        Each segment of the preview is set to its propagated voxels through Slicer's segment
        editor logic, which keeps voxels outside the editable area and treats other segments by
        the overwrite mode.
        segmentEditorNode: a vtkMRMLSegmentEditorNode whose mask mode, mask segment, intensity
            range and overwrite mode are used, for example the Segment Editor's own node.
        overwriteMode: "all", "visible" or "none" (or the vtkMRMLSegmentEditorNode constant);
            overrides segmentEditorNode. Without either, "none": other segments keep their voxels.
        maskMode: editable area, one of MASK_MODES' names or the vtkMRMLSegmentationNode
            EditAllowed* constant; overrides segmentEditorNode. Default "everywhere".
        maskSegmentId: the segment that bounds the editable area for maskMode "inside_segment".
        """
        segmentation = segmentationNode.GetSegmentation()
        missing = [s for s in preview.segmentIds if segmentation.GetSegment(s) is None]
        if missing:
            raise ValueError(
                f"segments {missing} of the preview are no longer in {segmentationNode.GetName()!r}; "
                "compute the preview again"
            )
        editorLogic = self._segmentEditorLogic(segmentationNode, volumeNode)
        editorNode = editorLogic.GetSegmentEditorNode()
        configureEditorNode(editorNode, segmentEditorNode, overwriteMode, maskMode, maskSegmentId,
                            segmentation)
        modifier = modifierLabelmap(preview, segmentationNode, editorLogic)

        started = time.monotonic()
        if not editorLogic.SaveStateForUndo():
            log.warning("could not save an undo state for %s; apply cannot be undone",
                        segmentationNode.GetName())
        wasModifying = segmentationNode.StartModify()
        try:
            for labelValue, segmentId in enumerate(preview.segmentIds, start=1):
                # The selected segment is the edited one, which masks such as "outside all
                # segments" leave editable, as the Segment Editor does for the segment it edits.
                editorNode.SetSelectedSegmentID(segmentId)
                binary = binaryLabelmap(modifier, labelValue)
                editorLogic.ModifySegmentByLabelmap(
                    segmentationNode, segmentId, binary, editorLogic.ModificationModeSet, False, False)
        finally:
            segmentationNode.EndModify(wasModifying)
        log.info("applied %d segments to %s in %.2f s", len(preview.segmentIds),
                 segmentationNode.GetName(), time.monotonic() - started)

    def canUndo(self) -> bool:
        return self._editorLogic is not None and bool(self._editorLogic.CanUndo())

    def undo(self) -> bool:
        """Restore the segmentation of the last `apply` as it was before; False when nothing to undo."""
        if not self.canUndo():
            return False
        self._editorLogic.Undo()
        return True

    def _segmentEditorLogic(self, segmentationNode, volumeNode):
        scene = segmentationNode.GetScene()
        if scene is None:
            raise ValueError(f"segmentation {segmentationNode.GetName()!r} is not in a scene")
        if self._editorNode is None or self._editorNode.GetScene() is not scene:
            self._editorNode = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode", "Mem3DSegment apply")
            self._editorNode.SetHideFromEditors(True)
            self._editorNode.SetSaveWithScene(False)
            self._editorLogic = slicer.vtkSlicerSegmentEditorLogic()
            self._editorLogic.SetMRMLScene(scene)
            self._editorLogic.SetSegmentEditorNode(self._editorNode)
        self._editorLogic.SetSegmentationNode(segmentationNode)
        self._editorLogic.SetSourceVolumeNode(volumeNode)
        return self._editorLogic

    # --- Models ----------------------------------------------------------------------------------

    def releaseSession(self) -> None:
        """Drop the kept session (its copy of the volume and its walks); models stay loaded."""
        self._session, self._sessionKey = None, None

    def unloadModels(self) -> None:
        """Drop the kept session and every loaded model, freeing their (GPU) memory."""
        self._session, self._sessionKey = None, None
        try:
            import mem3d

            mem3d.unload()
        except ImportError:  # torch is not installed, so no model was ever loaded
            pass


# --- Helpers -------------------------------------------------------------------------------------


def _stringArray(values: Sequence[str]):
    array = vtk.vtkStringArray()
    for value in values:
        array.InsertNextValue(value)
    return array


def requestedSegmentIds(segmentationNode, segmentIds: Sequence[str] | None) -> list[str]:
    """Return the segment ids to propagate, checked against the segmentation."""
    if segmentationNode is None:
        raise ValueError("the segmentation node is missing; select a segmentation")
    segmentation = segmentationNode.GetSegmentation()
    if segmentIds is None:
        displayNode = segmentationNode.GetDisplayNode()
        if displayNode is not None:
            visible = vtk.vtkStringArray()
            displayNode.GetVisibleSegmentIDs(visible)
            ids = [visible.GetValue(n) for n in range(visible.GetNumberOfValues())]
        else:
            ids = [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]
    else:
        ids = [str(segmentId) for segmentId in segmentIds]
    missing = [segmentId for segmentId in ids if segmentation.GetSegment(segmentId) is None]
    if missing:
        raise ValueError(f"segments {missing} are not in segmentation {segmentationNode.GetName()!r}")
    if len(set(ids)) != len(ids):
        raise ValueError(f"segment ids {ids} contain duplicates; list each segment once")
    if not ids:
        raise Mem3DError("no segment to propagate: show or create the segments that you painted")
    return ids


def annotationOnVolumeGrid(segmentationNode, segmentIds: list[str], volumeNode) -> np.ndarray:
    """Return a (k, j, i) labelmap on the volume's grid: label n for segmentIds[n - 1].

    Slicer's export resamples segments whose geometry (spacing, extent, directions or parent
    transform) differs from the volume's onto the volume grid with nearest-neighbour
    interpolation. The temporary labelmap node and the nodes it creates are removed again.
    """
    scene = segmentationNode.GetScene()
    if scene is None:
        raise ValueError(f"segmentation {segmentationNode.GetName()!r} is not in a scene")
    with temporaryNodes(scene):
        labelmapNode = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentationNode, _stringArray(segmentIds), labelmapNode, volumeNode,
                slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY):
            raise RuntimeError(
                f"failed to export segments {segmentIds} of {segmentationNode.GetName()!r} onto "
                f"the grid of {volumeNode.GetName()!r}"
            )
        annotation = slicer.util.arrayFromVolume(labelmapNode).copy()
    expected = tuple(reversed(volumeNode.GetImageData().GetDimensions()))
    if annotation.shape != expected:
        raise RuntimeError(f"exported labelmap has shape {annotation.shape}, expected {expected}")
    return annotation


@contextlib.contextmanager
def temporaryNodes(scene):
    """Remove every node that is added to `scene` inside the block, also after an error."""
    before = {scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())}
    try:
        yield
    finally:
        added = [scene.GetNthNode(n) for n in range(scene.GetNumberOfNodes())]
        for node in added:
            if node.GetID() not in before and node.GetScene() is scene:
                scene.RemoveNode(node)


def _modeValue(mode, names: dict, what: str) -> int:
    if isinstance(mode, (int, np.integer)) and not isinstance(mode, bool):
        if int(mode) not in names.values():
            raise ValueError(f"{what} {mode} is not one of the constants {sorted(names.values())}")
        return int(mode)
    if str(mode) not in names:
        raise ValueError(f"{what} {mode!r} is not one of {', '.join(names)}")
    return names[str(mode)]


def configureEditorNode(editorNode, sourceSettings, overwriteMode, maskMode, maskSegmentId,
                        segmentation) -> None:
    """Copy masking and overwrite settings onto the logic's own segment editor node."""
    if sourceSettings is not None:
        editorNode.SetMaskMode(sourceSettings.GetMaskMode())
        editorNode.SetMaskSegmentID(sourceSettings.GetMaskSegmentID())
        editorNode.SetOverwriteMode(sourceSettings.GetOverwriteMode())
        editorNode.SetSourceVolumeIntensityMask(sourceSettings.GetSourceVolumeIntensityMask())
        editorNode.SetSourceVolumeIntensityMaskRange(sourceSettings.GetSourceVolumeIntensityMaskRange())
    else:
        editorNode.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere)
        editorNode.SetMaskSegmentID(None)
        editorNode.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteNone)
        editorNode.SetSourceVolumeIntensityMask(False)
    if overwriteMode is not None:
        editorNode.SetOverwriteMode(_modeValue(overwriteMode, OVERWRITE_MODES, "overwrite mode"))
    if maskMode is not None:
        editorNode.SetMaskMode(_modeValue(maskMode, MASK_MODES, "mask mode"))
    if maskSegmentId is not None:
        editorNode.SetMaskSegmentID(maskSegmentId)
    if editorNode.GetMaskMode() == slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment:
        maskSegment = editorNode.GetMaskSegmentID()
        if not maskSegment or segmentation.GetSegment(maskSegment) is None:
            raise ValueError(
                f"mask mode 'inside_segment' needs an existing mask segment, got {maskSegment!r}"
            )


def modifierLabelmap(preview: PreviewResult, segmentationNode, editorLogic):
    """Return the preview labels as an image in the segmentation's reference geometry.

    The segment editor logic applies intensity masking only to a modifier labelmap with the
    geometry of its aligned source volume, so a preview computed on another grid is resampled
    (nearest neighbour) onto the segmentation's reference geometry first.
    """
    image = preview.orientedImage()
    toSegmentation = np.linalg.inv(geometry.nodeToWorld(segmentationNode)) @ preview.rasToWorld
    if not np.allclose(toSegmentation, np.eye(4)):
        image.SetImageToWorldMatrix(geometry.vtkMatrixFromNumpy(toSegmentation @ preview.ijkToRAS))
    if not editorLogic.UpdateReferenceGeometryImage():
        return image
    reference = editorLogic.GetReferenceGeometryImage()
    if slicer.vtkOrientedImageDataResample.DoGeometriesMatch(image, reference):
        return image
    resampled = slicer.vtkOrientedImageData()
    if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            image, reference, resampled, False, False):
        raise RuntimeError("failed to resample the preview onto the segmentation's geometry")
    return resampled


def binaryLabelmap(labelmap, labelValue: int):
    """Return a 0/1 image of one label value, with the geometry and extent of `labelmap`."""
    extent = labelmap.GetExtent()
    mask = (geometry.arrayFromOrientedImage(labelmap) == labelValue).astype(np.uint8)
    return geometry.orientedImageFromArray(mask, geometry.imageIjkToRas(labelmap),
                                           (extent[0], extent[2], extent[4]))
