"""Benchmark of the propagation methods: metrics, baselines, the protocol, reports and plots.

`mem3d benchmark` (see `mem3d.commands_benchmark`) runs it. This package needs scipy, and its
contour-interpolation baseline and plots need itk-morphologicalcontourinterpolation and
matplotlib (the `benchmark` extra); the engine itself needs none of them.
"""
