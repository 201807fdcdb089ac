"""The "Mem3D" Segment Editor effect: propagate segments painted on a few slices through the volume.

Built on Slicer's auto-complete effect base, which owns the preview segmentation, auto-update,
Cancel and Apply (one undo state, honouring the editable area, masking and overwrite settings).
This class adds the options, the progress dialog and the jump to the least certain slice; the
propagation itself runs in Mem3DSegmentLib.logic.
"""

from __future__ import annotations

import logging
import os

import qt
import slicer
import vtk
from SegmentEditorEffects import AbstractScriptedSegmentEditorAutoCompleteEffect
from slicer.i18n import tr as _

log = logging.getLogger(__name__)

ICON_PATH = os.path.join(os.path.dirname(__file__), "Resources", "Icons", "Mem3D.png")

# Effect parameters stored on the segment editor node (the effect name prefixes them).
AXIS_PARAMETER = "Axis"
RANGE_ENABLED_PARAMETER = "RangeEnabled"
FIRST_SLICE_PARAMETER = "FirstSlice"
LAST_SLICE_PARAMETER = "LastSlice"


class SegmentEditorEffect(AbstractScriptedSegmentEditorAutoCompleteEffect):
    """Preview of all visible segments propagated with a space-time memory network.

    Like every auto-complete effect it is not per segment (the base sets perSegment to False):
    it works on all visible segments together, so propagated segments never overlap.
    """

    def __init__(self, scriptedEffect):
        AbstractScriptedSegmentEditorAutoCompleteEffect.__init__(self, scriptedEffect)
        scriptedEffect.name = "Mem3D"  # not translated: modules look effects up by this name
        scriptedEffect.title = _("Mem3D")
        self.previewResult = None  # PreviewResult of the last finished propagation
        self._lastSliceNode = None  # slice view that the mouse was last in, for the axis tie-break

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as editorEffects

        clonedEffect = editorEffects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        return qt.QIcon(ICON_PATH) if os.path.exists(ICON_PATH) else qt.QIcon()

    def helpText(self):
        return "<html>" + _(
            "Propagate segments painted on a few slices through the whole volume.<br>"
            "<ol>"
            "<li>Paint the structure on one slice (or a few) with Paint or Draw.</li>"
            "<li>Click <b>Initialize</b>: every visible segment is propagated through the volume "
            "and shown as a preview.</li>"
            "<li>Where the preview is wrong, paint the correct outline on that slice; with "
            "<b>Auto-update</b> the preview is recomputed from the corrected slice. "
            "<b>Go to least certain slice</b> shows the slice that the network is least sure about.</li>"
            "<li>Click <b>Apply</b> to write the preview into the segments (one undo step).</li>"
            "</ol>"
            "Every slice that holds painted voxels is a key slice and is kept as painted. "
            "Apply honours the editable area, the intensity range and the overwrite mode of the "
            "masking settings. The model and the device are set in the Mem3D Segment module.<p>"
        )

    # --- Options ---------------------------------------------------------------------------------

    def setupOptionsFrame(self):
        self.axisComboBox = qt.QComboBox()
        for key, label in (("auto", _("Auto")), ("axial", _("Axial")), ("coronal", _("Coronal")),
                           ("sagittal", _("Sagittal"))):
            self.axisComboBox.addItem(label, key)
        self.axisComboBox.toolTip = _(
            "Direction of propagation. Auto takes the volume axis along which the painted voxels "
            "cover the fewest slices; the named directions take the volume axis nearest to them.")
        self.scriptedEffect.addLabeledOptionsWidget(_("Axis:"), self.axisComboBox)

        self.rangeCheckBox = qt.QCheckBox(_("Only slices"))
        self.rangeCheckBox.toolTip = _(
            "Limit the propagation to a range of slice indices along the axis (0 is the first "
            "slice). Without a limit, each segment is propagated until it ends.")
        self.firstSliceSpinBox = qt.QSpinBox()
        self.lastSliceSpinBox = qt.QSpinBox()
        for spinBox in (self.firstSliceSpinBox, self.lastSliceSpinBox):
            spinBox.setRange(0, 99999)  # the logic rejects indices beyond the volume with a message
        self.firstSliceSpinBox.toolTip = _("First slice index to propagate into (inclusive).")
        self.lastSliceSpinBox.toolTip = _("Last slice index to propagate into (inclusive).")
        rangeLayout = qt.QHBoxLayout()
        rangeLayout.addWidget(self.rangeCheckBox)
        rangeLayout.addWidget(self.firstSliceSpinBox)
        rangeLayout.addWidget(qt.QLabel(_("to")))
        rangeLayout.addWidget(self.lastSliceSpinBox)
        self.scriptedEffect.addLabeledOptionsWidget(_("Range:"), rangeLayout)

        self.modelLabel = qt.QLabel()
        self.settingsButton = qt.QPushButton(_("Settings..."))
        self.settingsButton.toolTip = _("Open the Mem3D Segment module to choose the model and device.")
        modelLayout = qt.QHBoxLayout()
        modelLayout.addWidget(self.modelLabel, 1)
        modelLayout.addWidget(self.settingsButton)
        self.scriptedEffect.addLabeledOptionsWidget(_("Model:"), modelLayout)

        AbstractScriptedSegmentEditorAutoCompleteEffect.setupOptionsFrame(self)

        self.leastCertainButton = qt.QPushButton(_("Go to least certain slice"))
        self.leastCertainButton.toolTip = _(
            "Move the slice views to the slice with the lowest quality estimate of the preview, "
            "the first place to check and correct.")
        self.scriptedEffect.addOptionsWidget(self.leastCertainButton)

        self.axisComboBox.connect("currentIndexChanged(int)", self.updateMRMLFromGUI)
        self.rangeCheckBox.connect("toggled(bool)", self.updateMRMLFromGUI)
        self.firstSliceSpinBox.connect("valueChanged(int)", self.updateMRMLFromGUI)
        self.lastSliceSpinBox.connect("valueChanged(int)", self.updateMRMLFromGUI)
        self.settingsButton.connect("clicked()", self.onOpenSettings)
        self.leastCertainButton.connect("clicked()", self.onGoToLeastCertainSlice)

    def cleanup(self):
        AbstractScriptedSegmentEditorAutoCompleteEffect.cleanup(self)
        self.axisComboBox.disconnect("currentIndexChanged(int)", self.updateMRMLFromGUI)
        self.rangeCheckBox.disconnect("toggled(bool)", self.updateMRMLFromGUI)
        self.firstSliceSpinBox.disconnect("valueChanged(int)", self.updateMRMLFromGUI)
        self.lastSliceSpinBox.disconnect("valueChanged(int)", self.updateMRMLFromGUI)
        self.settingsButton.disconnect("clicked()", self.onOpenSettings)
        self.leastCertainButton.disconnect("clicked()", self.onGoToLeastCertainSlice)

    def setMRMLDefaults(self):
        AbstractScriptedSegmentEditorAutoCompleteEffect.setMRMLDefaults(self)
        self.scriptedEffect.setParameterDefault(AXIS_PARAMETER, "auto")
        self.scriptedEffect.setParameterDefault(RANGE_ENABLED_PARAMETER, 0)
        self.scriptedEffect.setParameterDefault(FIRST_SLICE_PARAMETER, 0)
        self.scriptedEffect.setParameterDefault(LAST_SLICE_PARAMETER, 0)

    def updateGUIFromMRML(self):
        AbstractScriptedSegmentEditorAutoCompleteEffect.updateGUIFromMRML(self)
        widgets = (self.axisComboBox, self.rangeCheckBox, self.firstSliceSpinBox, self.lastSliceSpinBox)
        wasBlocked = [widget.blockSignals(True) for widget in widgets]
        try:
            axisIndex = self.axisComboBox.findData(self.scriptedEffect.parameter(AXIS_PARAMETER))
            self.axisComboBox.setCurrentIndex(max(axisIndex, 0))
            rangeEnabled = self.scriptedEffect.integerParameter(RANGE_ENABLED_PARAMETER) != 0
            self.rangeCheckBox.checked = rangeEnabled
            self.firstSliceSpinBox.value = self.scriptedEffect.integerParameter(FIRST_SLICE_PARAMETER)
            self.lastSliceSpinBox.value = self.scriptedEffect.integerParameter(LAST_SLICE_PARAMETER)
            self.firstSliceSpinBox.enabled = rangeEnabled
            self.lastSliceSpinBox.enabled = rangeEnabled
        finally:
            for widget, blocked in zip(widgets, wasBlocked):
                widget.blockSignals(blocked)
        self.modelLabel.text = self._modelDescription()
        hasPreview = self.getPreviewNode() is not None and self.previewResult is not None
        self.leastCertainButton.enabled = hasPreview and self.previewResult.leastCertain is not None

    def updateMRMLFromGUI(self, *unused):
        AbstractScriptedSegmentEditorAutoCompleteEffect.updateMRMLFromGUI(self)
        self.scriptedEffect.setParameter(AXIS_PARAMETER, self.axisComboBox.currentData)
        self.scriptedEffect.setParameter(RANGE_ENABLED_PARAMETER, 1 if self.rangeCheckBox.checked else 0)
        self.scriptedEffect.setParameter(FIRST_SLICE_PARAMETER, self.firstSliceSpinBox.value)
        self.scriptedEffect.setParameter(LAST_SLICE_PARAMETER, self.lastSliceSpinBox.value)

    def _modelDescription(self) -> str:
        import Mem3DSegment

        settings = Mem3DSegment.engineSettings()
        model = settings.modelChoice
        if model == "file":
            model = os.path.basename(settings.modelFile) or _("no file chosen")
        return f"{model}, {settings.device}"

    def onOpenSettings(self):
        slicer.util.selectModule("Mem3DSegment")

    # --- Interaction -----------------------------------------------------------------------------

    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        # Remember the slice view of the last event (mouse, wheel or key), because its normal
        # decides the axis when the painted voxels do not. Events are never consumed.
        if viewWidget.className() == "qMRMLSliceWidget":
            self._lastSliceNode = viewWidget.mrmlSliceNode()
        return False

    def sourceVolumeNodeChanged(self):
        self.previewResult = None

    def reset(self):
        # Apply and Cancel end here: the kept session contains a copy of the volume, so drop it.
        import Mem3DSegment

        self.previewResult = None
        Mem3DSegment.sharedLogic().releaseSession()
        AbstractScriptedSegmentEditorAutoCompleteEffect.reset(self)

    def onGoToLeastCertainSlice(self):
        least = self.previewResult.leastCertain if self.previewResult is not None else None
        if least is None:
            slicer.util.showStatusMessage(_("Compute a preview first."), 3000)
            return
        x, y, z = least.pointRAS
        slicer.modules.markups.logic().JumpSlicesToLocation(x, y, z, True)
        segmentationNode = self.scriptedEffect.parameterSetNode().GetSegmentationNode()
        segment = segmentationNode.GetSegmentation().GetSegment(least.segmentId)
        name = segment.GetName() if segment is not None else least.segmentId
        slicer.util.showStatusMessage(
            _("Least certain: {segment} on slice {index}, quality estimate {quality:.2f}").format(
                segment=name, index=least.sliceIndex, quality=least.quality), 5000)

    # --- Computation -----------------------------------------------------------------------------

    def effectiveExtentChanged(self):
        # The preview always covers the whole source volume (see computePreviewLabelmap), so a
        # painted region that grows never needs a new merged geometry, only the first preview does.
        return (self.getPreviewNode() is None or self.mergedLabelmapGeometryImage is None
                or self.selectedSegmentIds is None)

    def preview(self):
        from mem3d.errors import CancelledError

        try:
            AbstractScriptedSegmentEditorAutoCompleteEffect.preview(self)
        except CancelledError:
            previewNode = self.getPreviewNode()
            if previewNode is not None and previewNode.GetSegmentation().GetNumberOfSegments() == 0:
                self.reset()  # a cancelled first preview leaves an empty preview node behind
            slicer.util.showStatusMessage(_("Mem3D propagation cancelled; segments are unchanged."), 3000)
            self.updateGUIFromMRML()

    def computePreviewLabelmap(self, mergedImage, outputLabelmap):
        """Propagate on the whole source volume grid and fill `outputLabelmap` (label n + 1 for
        the n-th selected segment).

        The base class crops `mergedImage` to a few slices around the painted voxels, so the
        merged segments are generated again on the full extent of the source volume, in the
        same geometry.
        """
        import Mem3DSegment

        if not Mem3DSegment.ensureDependencies():
            raise RuntimeError(_("Mem3D cannot run without PyTorch and the Python packages it requested."))
        sourceImage = self.scriptedEffect.sourceVolumeImageData()
        if sourceImage is None:
            raise RuntimeError(_("Select a source volume first."))
        settings = Mem3DSegment.engineSettings()
        segmentationNode = self.scriptedEffect.parameterSetNode().GetSegmentationNode()
        selected = self.selectedSegmentIds
        segmentIds = [selected.GetValue(n) for n in range(selected.GetNumberOfValues())]

        run = Mem3DSegment.sharedLogic().sessionForOrientedImage(
            sourceImage,
            segmentationNode,
            segmentIds,
            axis=self.scriptedEffect.parameter(AXIS_PARAMETER),
            model=settings.model,
            device=settings.device,
            sliceRange=self._sliceRange(),
            viewNormalRAS=self._viewNormal(),
        )
        result = self._runWithProgress(run)
        outputLabelmap.DeepCopy(result.orientedImage())
        imageToWorld = vtk.vtkMatrix4x4()
        sourceImage.GetImageToWorldMatrix(imageToWorld)
        outputLabelmap.SetImageToWorldMatrix(imageToWorld)
        self.previewResult = result
        log.info("Mem3D preview: %d segments, %d slices computed in %.1f s", len(segmentIds),
                 result.slicesComputed, result.seconds)

    def _sliceRange(self):
        if self.scriptedEffect.integerParameter(RANGE_ENABLED_PARAMETER) == 0:
            return None
        return (self.scriptedEffect.integerParameter(FIRST_SLICE_PARAMETER),
                self.scriptedEffect.integerParameter(LAST_SLICE_PARAMETER))

    def _viewNormal(self):
        if self._lastSliceNode is None:
            return None
        sliceToRas = self._lastSliceNode.GetSliceToRAS()
        return tuple(sliceToRas.GetElement(row, 2) for row in range(3))

    def _runWithProgress(self, run):
        """Run the propagation with a progress dialog; raise CancelledError when cancelled."""
        from mem3d.errors import CancelledError

        dialog = qt.QProgressDialog(slicer.util.mainWindow())
        dialog.windowTitle = _("Mem3D")
        dialog.setLabelText(_("Propagating segments..."))
        dialog.setCancelButtonText(_("Cancel"))
        dialog.setWindowModality(qt.Qt.WindowModal)
        dialog.setMinimumDuration(500)  # milliseconds, so quick updates after a correction show no dialog
        dialog.setRange(0, 0)
        steps = run.steps()
        try:
            for step in steps:
                dialog.setMaximum(max(step.total, 1))
                dialog.setValue(min(step.done, step.total))
                slicer.app.processEvents()
                if dialog.wasCanceled:
                    raise CancelledError("the user cancelled the propagation")
        finally:
            steps.close()
            dialog.close()
        return run.result
