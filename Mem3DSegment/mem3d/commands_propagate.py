"""`mem3d propagate IMAGE ANNOTATION -o OUTPUT`: segment a structure through a volume."""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from .errors import Mem3DError

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "propagate", help="propagate annotated slices through a volume",
        description="Each label's key slices are the slices (along the axis) that hold it; each "
                    "label is propagated from its key slices through the volume.",
    )
    parser.add_argument("image", type=Path,
                        help="image: NRRD, NIfTI, MHA or a DICOM series folder")
    parser.add_argument("annotation", type=Path,
                        help="labelmap or .seg.nrrd on the image grid, drawn on a few slices")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="output labelmap (.nrrd, .nii.gz, .mha) or .seg.nrrd")
    parser.add_argument("--axis", default="auto",
                        help="auto, axial, coronal or sagittal (taken from the image's direction "
                             "matrix), or array axis 0 (k), 1 (j), 2 (i)")
    parser.add_argument("--method", choices=("network", "registration"), default="network",
                        help="network: the STM model (default); registration: warp each "
                             "slice's mask onto the next with 2D demons registration, no model")
    parser.add_argument("--model", default=None,
                        help="registry model name or checkpoint file (default: mem3d-compact); "
                             "ignored with --method registration")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--quality-csv", type=Path,
                        help="write the quality estimate per label and slice to this CSV file")
    parser.add_argument("--montage", type=Path,
                        help="also save a PNG of several slices with the key slice contours "
                             "(dashed), the result (solid) and the quality estimate")
    parser.add_argument("--force", action="store_true",
                        help="allow OUTPUT to replace an input file")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)


def check_output_paths(args) -> None:
    """Reject an output that would overwrite an input (unless --force) or another output.

    Each output folder must exist and accept a new file, checked before the propagation starts.
    """
    outputs = [args.output] + [p for p in (args.quality_csv, args.montage) if p]
    for index, output in enumerate(outputs):
        if any(_same_path(output, earlier) for earlier in outputs[:index]):
            raise Mem3DError(f"{output} is given for two outputs (-o, --quality-csv, --montage); "
                             "choose a different file name for each")
    for output in outputs:
        for source in (args.image, args.annotation):
            if _same_path(output, source) and not args.force:
                raise Mem3DError(f"output {output} is an input file; choose another path "
                                 "or add --force to replace it")
        folder = output.parent if str(output.parent) else Path(".")
        if not folder.is_dir():
            raise Mem3DError(f"output folder {folder} does not exist; create it first")
        if output.is_dir():
            raise Mem3DError(f"output {output} is a folder; give a file name")
        _check_writable(folder)
    _check_output_formats(args)


def _check_output_formats(args) -> None:
    """Reject output names the writers cannot handle before spending time on propagation."""
    from .io import IMAGE_FILE_SUFFIXES, SEGMENTATION_SUFFIX

    name = args.output.name
    if not name.endswith(IMAGE_FILE_SUFFIXES + (SEGMENTATION_SUFFIX,)):
        raise Mem3DError(f"output {args.output} has an unsupported extension; use one of "
                         f"{', '.join(IMAGE_FILE_SUFFIXES + (SEGMENTATION_SUFFIX,))} (lower case)")
    if args.montage is not None:
        if args.montage.suffix.lower() != ".png":
            raise Mem3DError(f"--montage {args.montage}: give a .png file name")
        try:
            import matplotlib  # noqa: F401
        except ModuleNotFoundError as error:
            raise Mem3DError("--montage needs matplotlib: pip install matplotlib") from error


def _check_writable(folder: Path) -> None:
    """Create and delete a file in `folder`: permission bits alone miss read-only file systems."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise Mem3DError(f"output folder {folder} is not writable ({error.strerror or error}); "
                         "choose another -o path") from error


def _same_path(a: Path, b: Path) -> bool:
    """Return whether two paths name the same file, or would once the first is written."""
    if a.exists() and b.exists():
        return _same_file(a, b)
    return a.resolve() == b.resolve()


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def run(args: argparse.Namespace) -> int:
    from .io import read_annotation, read_image, write_result

    check_output_paths(args)
    image = read_image(args.image)
    annotation = read_annotation(args.annotation, reference=image)
    result = propagate_with_progress(image, annotation, args)
    grid, segments = grid_without_voxels(image), annotation.segments
    if not args.montage:
        # The writer copies the labelmap, so dropping the input voxels first lowers the peak memory.
        image = annotation = None
    write_result(result.labels, grid, segments, args.output)
    if args.quality_csv:
        write_quality_csv(result, args.quality_csv)
    if args.montage:
        from .montage import save_montage

        key_slices_only = np.where(_key_slice_mask(result, image.array.shape), annotation.labels, 0)
        save_montage(image.array, key_slices_only, result.labels, annotation.segments,
                     args.montage, axis=result.axis, quality=result.quality,
                     title="key slice: dashed, result: solid", include=result.key_slices)
    _print_summary(result, args.output)
    return 0


def grid_without_voxels(volume):
    """Return a Volume with the grid of `volume` whose array is a broadcast zero of its shape."""
    from .io import Volume

    placeholder = np.broadcast_to(np.zeros((), volume.array.dtype), volume.array.shape)
    return Volume(placeholder, volume.spacing, volume.origin, volume.direction)


def propagate_with_progress(image, annotation, args):
    from .api import open_session
    from .planning import axis_for_direction

    axis = axis_for_direction(args.axis, image.direction)
    session = open_session(image.array, annotation.labels, image.spacing, axis=axis,
                           model=args.model, device=args.device,
                           method=getattr(args, "method", "network"))
    show = not args.no_progress and sys.stderr.isatty()
    with _progress_bar(show) as bar:
        for step in session.run():
            if bar is not None:
                bar.total = step.total
                bar.set_postfix_str(f"label {step.label}, slice {step.slice_index}")
                bar.update(1)
    return session.result


def _progress_bar(show: bool):
    import contextlib

    if not show:
        return contextlib.nullcontext(None)
    from tqdm import tqdm

    return tqdm(unit="slice", desc="propagating", leave=False)


def _key_slice_mask(result, shape) -> np.ndarray:
    """Boolean array that is True on the result's key slices along its axis."""
    along = np.zeros(shape[result.axis], bool)
    along[result.key_slices] = True
    view = [1, 1, 1]
    view[result.axis] = -1
    return np.broadcast_to(along.reshape(view), shape)


def write_quality_csv(result, path: Path) -> None:
    """Write one row per label and slice: label, slice, axis, key slice flag, quality.

    The quality is empty on slices that were not computed.
    """
    temporary = path.with_name(f".{path.name}.partial")
    keys = set(result.key_slices)
    try:
        with open(temporary, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["label", "slice", "axis", "key_slice", "quality"])
            for label, values in sorted(result.quality.items()):
                for index, value in enumerate(values):
                    text = "" if np.isnan(value) else f"{value:.4f}"
                    writer.writerow([label, index, result.axis, int(index in keys), text])
        os.replace(temporary, path)
    except OSError as error:
        raise Mem3DError(f"failed to write {path}: {error}") from error
    finally:
        temporary.unlink(missing_ok=True)


def _print_summary(result, output: Path) -> None:
    speed = result.slices_computed / result.seconds if result.seconds > 0 else float("nan")
    print(f"wrote {output}: axis {result.axis}, {len(result.key_slices)} key slices, "
          f"{result.slices_computed} slices propagated in {result.seconds:.1f} s "
          f"({speed:.1f} slices/s)")
    least = result.least_certain_slice()
    if least is not None:
        label, index = least
        print(f"least certain: label {label} on slice {index} "
              f"(quality {result.quality[label][index]:.2f})")
