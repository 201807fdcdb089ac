"""Mem3D engine: propagate a mask drawn on a few slices through a 3D image with an STM network."""

__version__ = "0.1.0"
