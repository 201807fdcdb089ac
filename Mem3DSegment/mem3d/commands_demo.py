"""`mem3d demo`: propagate each segment of slicerio's chest CT from its middle axial slice.

The sample (128x128x34 voxels, seven segments) ships inside the `slicerio` package, so the demo
runs offline. Each segment is annotated on the middle slice of its own extent and propagated on
its own. The table compares the result with the full reference segment.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from .errors import Mem3DError

AXIS = 0  # axial: the demo annotates one k slice per segment


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="run on slicerio's chest CT sample and report Dice per segment",
        description="Annotate the middle axial slice of each segment of the slicerio chest CT, "
                    "propagate it, and compare with the full segment.",
    )
    parser.add_argument("-o", "--output", type=Path, default=Path("mem3d-demo"),
                        help="folder for result.seg.nrrd and montage.png (default: mem3d-demo)")
    parser.add_argument("--model", default=None, help="registry model name or checkpoint file")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.set_defaults(func=run)


def middle_slice_annotation(labels: np.ndarray, value: int, axis: int = AXIS) -> np.ndarray:
    """Keep segment `value` only on the middle slice of its extent along `axis`."""
    other = tuple(a for a in range(3) if a != axis)
    present = np.flatnonzero((labels == value).any(axis=other))
    middle = int(present[len(present) // 2])
    annotation = np.zeros_like(labels)
    index = [slice(None)] * 3
    index[axis] = middle
    annotation[tuple(index)] = np.where(labels[tuple(index)] == value, value, 0)
    return annotation


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def run(args: argparse.Namespace) -> int:
    from .api import propagate
    from .io import load_slicerio_sample, write_result

    image, reference = load_slicerio_sample()
    try:
        args.output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise Mem3DError(f"cannot create output folder {args.output}: {error.strerror}") from error
    combined = np.zeros_like(reference.labels)
    rows = []
    for segment in reference.segments:
        value = segment.label_value
        annotation = middle_slice_annotation(reference.labels, value)
        started = time.perf_counter()
        result = propagate(image.array, annotation, image.spacing, axis=AXIS,
                           model=args.model, device=args.device)
        seconds = time.perf_counter() - started
        mask = result.labels == value
        combined[(combined == 0) & mask] = value
        rows.append((segment.name, dice(mask, reference.labels == value), seconds,
                     result.slices_computed))
    write_result(combined, image, reference.segments, args.output / "result.seg.nrrd")
    _print_table(rows)
    from .montage import save_montage

    save_montage(image.array, reference.labels, combined, reference.segments,
                 args.output / "montage.png")
    print(f"wrote {args.output / 'result.seg.nrrd'} and {args.output / 'montage.png'}")
    return 0


def _print_table(rows) -> None:
    print(f"{'segment':<28} {'Dice':>6} {'seconds':>8} {'slices':>7}")
    for name, value, seconds, slices in rows:
        print(f"{name:<28} {value:6.3f} {seconds:8.2f} {slices:7d}")
    mean = float(np.mean([r[1] for r in rows]))
    print(f"{'mean Dice, total seconds':<28} {mean:6.3f} {sum(r[2] for r in rows):8.2f}")
