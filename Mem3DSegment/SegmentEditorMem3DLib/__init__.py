"""The Mem3D Segment Editor effect, which the Mem3DSegment module registers when Slicer starts."""

from .SegmentEditorEffect import SegmentEditorEffect

__all__ = ["SegmentEditorEffect"]
