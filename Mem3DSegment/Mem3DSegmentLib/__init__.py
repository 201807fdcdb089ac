"""Qt-free parts of the Mem3DSegment module: the logic, scene setup, geometry and model helpers."""

from .geometry import axisFromSliceNormal
from .logic import LeastCertainSlice, Mem3DSegmentLogic, PreviewResult, PreviewRun

__all__ = ["Mem3DSegmentLogic", "PreviewResult", "PreviewRun", "LeastCertainSlice", "axisFromSliceNormal"]
