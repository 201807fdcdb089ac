"""An MRML scene with the module logics that segmentations need, for use outside the application.

Inside 3D Slicer the application creates these logics. In a plain Python process with the
`slicer-core` package, `createScene()` builds the same set, so segmentation nodes can convert
representations and the Mem3D logic runs against real MRML nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import slicer


@dataclass
class SceneWithLogics:
    """A scene and the logics registered on it.

    Keep this object alive as long as the scene is used: the application logic does not hold
    Python references to the module logics, and a collected color logic removes the default
    color tables from the scene.
    """

    scene: object  # vtkMRMLScene
    applicationLogic: object  # vtkSlicerApplicationLogic
    colorLogic: object  # vtkMRMLColorLogic
    volumesLogic: object  # vtkSlicerVolumesLogic
    segmentationsLogic: object  # vtkSlicerSegmentationsModuleLogic


def createScene() -> SceneWithLogics:
    """Create a scene with the color, volumes and segmentations logics registered on it.

    Without the segmentations logic on the scene no representation converter is registered,
    and `AddEmptySegment` fails to create a binary labelmap.
    """
    scene = slicer.vtkMRMLScene()
    applicationLogic = slicer.vtkSlicerApplicationLogic()
    applicationLogic.SetMRMLScene(scene)

    colorLogic = slicer.vtkMRMLColorLogic()
    volumesLogic = slicer.vtkSlicerVolumesLogic()
    segmentationsLogic = slicer.vtkSlicerSegmentationsModuleLogic()
    for name, logic in (("Colors", colorLogic), ("Volumes", volumesLogic),
                        ("Segmentations", segmentationsLogic)):
        logic.SetMRMLApplicationLogic(applicationLogic)
        logic.SetMRMLScene(scene)
        applicationLogic.SetModuleLogic(name, logic)
    return SceneWithLogics(scene, applicationLogic, colorLogic, volumesLogic, segmentationsLogic)
