"""Time and peak memory of one propagation on synthetic volumes of growing size.

Each volume contains a smooth ellipsoid in Gaussian noise whose centre drifts from slice to slice.
It spans 80% of the slices along axis 0 (k), and the middle slice is the only key slice. Every
size and method runs in its own Python process (`python -m mem3d.evaluation.scaling`), so the
process's peak RSS belongs to that run alone. The child prints one JSON object:

- `seconds`, `slices_computed`: the propagation alone, volume creation and model loading excluded;
- `volume_mb`: the image (int16) and annotation (uint8) arrays;
- `rss_before_mb`: resident memory after loading the model and creating the volume;
- `peak_rss_mb`: peak resident memory during the propagation (see `measure`);
- `increment_mb`: `peak_rss_mb - rss_before_mb`, what the propagation itself added, which
  includes the output labelmap (one byte per voxel).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from ..errors import Mem3DError

DEFAULT_SHAPES = ("128x128x64", "256x256x64", "256x256x128", "256x256x256")
LARGE_SHAPES = ("512x512x128", "512x512x256", "512x512x512")
SCALING_METHODS = ("network", "registration")
SPACING = (1.0, 1.0, 1.0)
# Time limit for one child process. On one thread of a 2-core x86 machine, 512x512x256 took
# 31 s (registration) and 15 s (network); the limit leaves room for slower machines.
CHILD_TIMEOUT_SECONDS = 1800


def parse_shape(text: str) -> tuple[int, int, int]:
    """Parse "XxYxZ" (columns, rows, slices) into a tuple of three positive integers."""
    parts = text.lower().split("x")
    try:
        shape = tuple(int(part) for part in parts)
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 8:
        raise Mem3DError(f"volume size {text!r} is not XxYxZ with each side at least 8, "
                         "for example 256x256x128")
    return shape


def synthetic_volume(shape_xyz: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return a (k, j, i) int16 image and the uint8 mask of its ellipsoid, built slice by slice."""
    columns, rows, slices = shape_xyz
    rng = np.random.default_rng(seed)
    image = np.empty((slices, rows, columns), dtype=np.int16)
    mask = np.zeros((slices, rows, columns), dtype=np.uint8)
    row_grid, column_grid = np.mgrid[0:rows, 0:columns].astype(np.float32)
    background = 100.0 + 30.0 * np.sin(column_grid / columns * np.pi)
    semi_axes = (0.4 * slices, 0.25 * rows, 0.3 * columns)
    for k in range(slices):
        z = (k - (slices - 1) / 2.0) / semi_axes[0]
        drift = 0.05 * columns * np.sin(np.pi * k / slices)
        radius = (row_grid - rows / 2.0) ** 2 / semi_axes[1] ** 2
        radius += (column_grid - columns / 2.0 - drift) ** 2 / semi_axes[2] ** 2
        radius += z * z
        inside = radius <= 1.0
        # A soft edge, two pixels wide at the ellipsoid's widest slice.
        edge = np.clip((1.0 - radius) * min(semi_axes[1:]) / 4.0 + 0.5, 0.0, 1.0)
        values = background + 200.0 * edge + rng.normal(0.0, 20.0, size=(rows, columns))
        image[k] = np.clip(values, -32768, 32767).astype(np.int16)
        mask[k] = inside
    return image, mask


def run_one(shape_xyz: tuple[int, int, int], method: str, model: str | None,
            device: str) -> dict:
    """Propagate once in this process and return the figures listed in the module docstring."""
    from ..propagation import PropagationSession
    from .measure import measure

    runner = None
    if method == "network":
        from ..api import load_runner

        runner = load_runner(model, device)
    image, mask = synthetic_volume(shape_xyz)
    middle = int(np.flatnonzero(mask.any(axis=(1, 2))).mean().round())
    annotation = np.zeros_like(mask)
    annotation[middle] = mask[middle]
    session = PropagationSession(runner=runner, image=image, annotation=annotation,
                                 spacing=SPACING, axis=0, key_slices=[middle], method=method)
    with measure() as measurement:
        for _ in session.run():
            pass
    result = session.result
    overlap = np.logical_and(result.labels == 1, mask == 1).sum()
    dice = 2.0 * overlap / max(int((result.labels == 1).sum()) + int(mask.sum()), 1)
    peak, rss_before = measurement.peak_rss_mb, measurement.rss_before_mb
    return {
        "shape": list(shape_xyz),
        "voxels": int(image.size),
        "method": method,
        "seconds": measurement.seconds,
        "slices_computed": result.slices_computed,
        "dice": float(dice),
        "volume_mb": (image.nbytes + annotation.nbytes) / 2**20,
        "rss_before_mb": rss_before,
        "peak_rss_mb": peak,
        "increment_mb": None if peak is None or rss_before is None else peak - rss_before,
        "peak_source": measurement.peak_source,
    }


def run_scaling(shapes: list[str], methods: list[str], model: str | None, device: str,
                threads: int | None, log_line=print) -> list[dict]:
    """Run every size and method in a child process and return their records in order."""
    package_parent = Path(__file__).resolve().parents[2]
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(package_parent)] + [p for p in [environment.get("PYTHONPATH")] if p])
    records = []
    for text in shapes:
        shape = parse_shape(text)
        for method in methods:
            command = [sys.executable, "-m", "mem3d.evaluation.scaling", "--shape", text,
                       "--method", method, "--device", device]
            if model:
                command += ["--model", str(model)]
            if threads:
                command += ["--threads", str(threads)]
            completed = subprocess.run(command, capture_output=True, text=True,
                                       env=environment, timeout=CHILD_TIMEOUT_SECONDS)
            if completed.returncode != 0:
                raise Mem3DError(f"scaling run {text} ({method}) failed with exit code "
                                 f"{completed.returncode}: {completed.stderr.strip()[-2000:]}")
            record = json.loads(completed.stdout.strip().splitlines()[-1])
            log_line(f"scaling {'x'.join(map(str, shape))} {method}: {record['seconds']:.1f} s, "
                     f"{record['slices_computed']} slices, peak RSS {record['peak_rss_mb']:.0f} MiB "
                     f"(+{record['increment_mb']:.0f} MiB over {record['rss_before_mb']:.0f} MiB)")
            records.append(record)
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mem3d.evaluation.scaling",
        description="Propagate once on a synthetic volume and print time and memory as JSON.")
    parser.add_argument("--shape", required=True, help="volume size XxYxZ, e.g. 256x256x128")
    parser.add_argument("--method", choices=SCALING_METHODS, default="network")
    parser.add_argument("--model", default=None, help="registry model name or checkpoint file")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        from .benchmark import limit_threads

        limit_threads(args.threads)
    record = run_one(parse_shape(args.shape), args.method, args.model, args.device)
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
