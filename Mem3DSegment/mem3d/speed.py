"""Measure propagation speed: the network alone at its input size, and the whole slice loop.

Both figures come from `mem3d models speed`, so anyone can rerun them on their own machine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from .runtime import ModelRunner


@dataclass
class SpeedReport:
    network_slices_per_second: float  # query encode + memory read + decode + memory encode
    loop_slices_per_second: float  # the same plus crop, resize, paste and bookkeeping
    input_size: int
    memory_slices: int
    threads: int
    device: str
    precision: str


def synthetic_volume(shape=(200, 256, 256), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return a noisy image with a bright ellipsoid, and its mask on the middle slice only."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    inside = (k / 0.8) ** 2 + (j / 0.3) ** 2 + (i / 0.25) ** 2 <= 1
    image = (rng.normal(0, 20, shape) + 100 * inside).astype(np.int16)
    annotation = np.zeros(shape, np.uint8)
    middle = shape[0] // 2
    annotation[middle] = inside[middle]
    return image, annotation


def network_speed(runner: ModelRunner, slices: int = 60, memory_slices: int = 4) -> float:
    """Slices per second of one propagation step on random crops, after a warm-up."""
    size = runner.input_size
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(size, size, generator=generator)
    mask = (torch.rand(size, size, generator=generator) > 0.5).float()
    key, value = runner.encode_memory(image, mask, None)
    keys = torch.cat([key.unsqueeze(2)] * memory_slices, dim=2)
    values = torch.cat([value.unsqueeze(2)] * memory_slices, dim=2)
    for _ in range(5):
        runner.segment(image, mask, keys, values)
    started = time.perf_counter()
    for _ in range(slices):
        probability, _ = runner.segment(image, mask, keys, values)
        runner.encode_memory(image, probability, None)
    return slices / (time.perf_counter() - started)


def loop_speed(runner: ModelRunner, shape=(200, 256, 256)) -> float:
    """Slices per second of a whole propagation through a synthetic volume."""
    from .propagation import PropagationSession

    image, annotation = synthetic_volume(shape)
    session = PropagationSession(runner, image, annotation, axis=0)
    for _ in session.run():
        pass
    result = session.result
    return result.slices_computed / result.seconds


def measure(runner: ModelRunner) -> SpeedReport:
    precision = "float32" if runner.autocast_dtype is None else str(runner.autocast_dtype)
    return SpeedReport(
        network_slices_per_second=network_speed(runner),
        loop_slices_per_second=loop_speed(runner),
        input_size=runner.input_size,
        memory_slices=4,
        threads=torch.get_num_threads(),
        device=str(runner.device),
        precision=precision.replace("torch.", ""),
    )
