"""Read and write images and labelmaps (NRRD, NIfTI, MHA, DICOM series, .seg.nrrd).

Arrays are in (k, j, i) order, as `slicer.util.arrayFromVolume` returns them; `Volume.spacing`
is in the same order, in millimetres.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import Mem3DError

log = logging.getLogger(__name__)


@dataclass
class Volume:
    """A voxel array in (k, j, i) order with its grid in LPS physical space."""

    array: np.ndarray
    spacing: tuple[float, float, float]  # (k, j, i) in mm
    origin: tuple[float, float, float]  # (x, y, z) of voxel (0, 0, 0), LPS, in mm
    direction: tuple[float, ...]  # 3x3 row-major; column n is the direction of index axis i, j, k

    def same_grid(self, other: "Volume", tolerance: float = 1e-4) -> bool:
        return (
            self.array.shape[:3] == other.array.shape[:3]
            and np.allclose(self.spacing, other.spacing, atol=tolerance)
            and np.allclose(self.origin, other.origin, atol=tolerance * 10)
            and np.allclose(self.direction, other.direction, atol=tolerance)
        )


def _sitk():
    import SimpleITK as sitk

    return sitk


def volume_from_sitk(image) -> Volume:
    sitk = _sitk()
    array = sitk.GetArrayFromImage(image)
    return Volume(
        array=array,
        spacing=tuple(float(s) for s in reversed(image.GetSpacing())),
        origin=tuple(float(o) for o in image.GetOrigin()),
        direction=tuple(float(d) for d in image.GetDirection()),
    )


def volume_to_sitk(volume: Volume):
    sitk = _sitk()
    image = sitk.GetImageFromArray(volume.array)
    image.SetSpacing(tuple(reversed(volume.spacing)))
    image.SetOrigin(volume.origin)
    image.SetDirection(volume.direction)
    return image


def read_image(path: str | Path) -> Volume:
    """Read a 3D scalar image file or a DICOM series folder."""
    sitk = _sitk()
    path = Path(path)
    if not path.exists():
        raise Mem3DError(f"image not found: {path}")
    try:
        if path.is_dir():
            image = _read_dicom_series(path)
        else:
            image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown error"
        raise Mem3DError(f"cannot read {path}: {first_line}") from error
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise Mem3DError(
            f"{path} has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
            "give a single-component (scalar) image"
        )
    if image.GetDimension() != 3:
        raise Mem3DError(
            f"{path} is a {image.GetDimension()}D image; give a 3D volume "
            "(extract one time point of a 4D series first)"
        )
    return volume_from_sitk(image)


def _read_dicom_series(folder: Path):
    sitk = _sitk()
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise Mem3DError(f"no DICOM series found in folder {folder}")
    if len(series) > 1:
        log.warning("%s holds %d DICOM series; reading the first, %s", folder, len(series), series[0])
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    return reader.Execute()


def write_volume(volume: Volume, path: str | Path) -> None:
    sitk = _sitk()
    sitk.WriteImage(volume_to_sitk(volume), str(path), useCompression=True)
