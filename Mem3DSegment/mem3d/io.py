"""Read and write images and labelmaps (NRRD, NIfTI, MHA/MHD, DICOM series, .seg.nrrd).

Arrays are in (k, j, i) order, as `slicer.util.arrayFromVolume` returns them; `Volume.spacing`
is in the same order, in millimetres. Physical coordinates are LPS, as in ITK and DICOM.

Every writer goes through a staging folder next to the output and moves the finished file into
place with `os.replace`, so a failed or interrupted write leaves no partial output.
"""

from __future__ import annotations

import colorsys
import gzip
import logging
import os
import re
import shutil
import struct
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import Mem3DError

log = logging.getLogger(__name__)

IMAGE_FILE_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
SEGMENTATION_SUFFIX = ".seg.nrrd"

# Tolerance, in voxels, for calling a segmentation's grid offset from the image grid an integer.
_OFFSET_TOLERANCE = 1e-3

# More label values than this in one labelmap suggest that an image was given as the mask.
_MANY_LABELS = 1000


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

    def ijk_to_lps(self) -> np.ndarray:
        """Return the 4x4 matrix that maps voxel indices (i, j, k, 1) to LPS millimetres."""
        matrix = np.eye(4)
        directions = np.asarray(self.direction, dtype=float).reshape(3, 3)
        matrix[:3, :3] = directions * np.asarray(self.spacing[::-1], dtype=float)
        matrix[:3, 3] = self.origin
        return matrix


@dataclass
class SegmentInfo:
    """One segment of an annotation: its label value in the labelmap, name and display colour."""

    label_value: int
    name: str
    color: tuple[float, float, float]  # RGB, each in [0, 1]
    # Other .seg.nrrd fields under slicerio's keys, for example "id", "terminology", "status".
    extra: dict = field(default_factory=dict)


@dataclass
class Annotation:
    """An integer labelmap with its grid and the segments that its label values stand for."""

    labels: np.ndarray  # (k, j, i), with 0 as background
    volume: Volume  # grid of `labels`, whose array is the `labels` array itself
    segments: list[SegmentInfo]


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


def _volume_from_matrix(array: np.ndarray, ijk_to_lps: np.ndarray) -> Volume:
    matrix = np.asarray(ijk_to_lps, dtype=float)
    spacing_ijk = np.linalg.norm(matrix[:3, :3], axis=0)
    directions = matrix[:3, :3] / spacing_ijk
    return Volume(
        array=array,
        spacing=tuple(float(s) for s in spacing_ijk[::-1]),
        origin=tuple(float(o) for o in matrix[:3, 3]),
        direction=tuple(float(d) for d in directions.ravel()),
    )


# ---------------------------------------------------------------------------------------------
# Reading images


def read_image(path: str | Path) -> Volume:
    """Read a 3D scalar image file or a DICOM series folder, keeping its pixel type."""
    return volume_from_sitk(_read_scalar_image(Path(path), "image"))


def _read_scalar_image(path: Path, kind: str):
    """Read a 3D scalar image with SimpleITK. Errors name it by `kind` ("image", "annotation")."""
    if not path.exists():
        raise Mem3DError(f"{kind} not found: {path}; check the path")
    if path.is_dir():
        image = _read_dicom_series(path)
        _check_image_shape(path, image.GetDimension(), image.GetNumberOfComponentsPerPixel())
        return image

    sitk = _sitk()
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        # Reading the header first rejects a 4D or multi-component file before loading its voxels.
        reader.ReadImageInformation()
        _check_image_shape(path, reader.GetDimension(), reader.GetNumberOfComponents())
        _check_nifti_length(path, kind)
        return reader.Execute()
    except RuntimeError as error:
        raise Mem3DError(
            f"cannot read {kind} {path}: {_itk_error_summary(error)}; give an uncorrupted NRRD, "
            "NIfTI (.nii, .nii.gz) or MHA/MHD file, or a folder that contains one DICOM series"
        ) from error


def _itk_error_summary(error: RuntimeError) -> str:
    """Return the most specific line of a SimpleITK exception, without source locations."""
    # MetaImageIO appends a "Reason:" line with a stale errno text (for example "No such file
    # or directory" for a truncated file that exists), so that line is dropped.
    lines = [
        line.strip()
        for line in str(error).splitlines()
        if line.strip() and not line.strip().startswith("Reason:")
    ]
    if not lines:
        return "unknown error"
    summary = re.sub(r"^(sitk::ERROR:|ITK ERROR:|\[nrrd\])\s*", "", lines[-1])
    return re.sub(r"^\w+\(0x[0-9a-fA-F]+\):\s*", "", summary).rstrip(".")


def _check_nifti_length(path: Path, kind: str) -> None:
    """Raise a Mem3DError when a NIfTI file is shorter than its header declares.

    SimpleITK 2.5.7 (ITK 5.4) reads a truncated .nii or .nii.gz without an error and fills the
    missing voxels with zeros, so the length is checked here. For .nii.gz this decompresses the
    file once more, which costs about as much as reading it.
    """
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return
    with open(path, "rb") as stream:
        # The gzip magic number, not the name, decides, as in ITK: some .nii.gz are not gzipped.
        compressed = stream.read(2) == b"\x1f\x8b"
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as stream:
            header = stream.read(540)
            expected = _nifti_expected_length(header)
            actual = len(header)
            while chunk := stream.read(1 << 22):
                actual += len(chunk)
    except (OSError, EOFError, zlib.error) as error:
        raise Mem3DError(
            f"cannot read {kind} {path}: {error}; the file is damaged or incomplete, "
            "copy or download it again"
        ) from error
    if expected is not None and actual < expected:
        raise Mem3DError(
            f"cannot read {kind} {path}: the file contains {actual} bytes but its header declares "
            f"{expected}; the file is incomplete, copy or download it again"
        )


def _nifti_expected_length(header: bytes) -> int | None:
    """Return the file length that a NIfTI-1 or NIfTI-2 header declares, or None if invalid.

    The length covers the header, any extensions and the voxel data.
    """
    for endian in "<>":
        header_size = struct.unpack(endian + "i", header[:4])[0] if len(header) >= 4 else 0
        if header_size == 348 and len(header) >= 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            bits = struct.unpack(endian + "h", header[72:74])[0]
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
            break
        if header_size == 540 and len(header) >= 540:
            bits = struct.unpack(endian + "h", header[14:16])[0]
            dims = struct.unpack(endian + "8q", header[16:80])
            offset = struct.unpack(endian + "q", header[168:176])[0]
            break
    else:
        return None  # not a NIfTI header: SimpleITK reports the error
    if not 1 <= dims[0] <= 7:
        return None
    voxel_count = int(np.prod([max(int(n), 1) for n in dims[1 : dims[0] + 1]], dtype=np.int64))
    return max(offset, header_size) + voxel_count * bits // 8


def _check_image_shape(path: Path, dimension: int, components: int) -> None:
    if dimension == 4:
        raise Mem3DError(
            f"{path} is a 4D image (a time series or a stack of volumes); give a 3D volume, "
            "for example one time point extracted with SimpleITK (image[:, :, :, 0]) "
            "or with Slicer's Sequences module"
        )
    if dimension != 3:
        raise Mem3DError(f"{path} is a {dimension}D image; give a 3D volume")
    if components != 1:
        raise Mem3DError(
            f"{path} has {components} components per voxel (a vector or colour image); give a "
            "scalar image, for example one component extracted with SimpleITK "
            "VectorIndexSelectionCast or a greyscale conversion of a colour image"
        )


def _read_dicom_series(folder: Path):
    sitk = _sitk()
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise Mem3DError(
            f"no DICOM series found in folder {folder}; give a folder that contains the DICOM "
            "files of one series, or an image file"
        )
    if len(series) > 1:
        log.warning("%s contains %d DICOM series; reading the first, %s", folder, len(series), series[0])
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as error:
        raise Mem3DError(
            f"cannot read the DICOM series in {folder}: {_itk_error_summary(error)}; "
            "check that its files are complete"
        ) from error


# ---------------------------------------------------------------------------------------------
# Reading annotations


def read_annotation(path: str | Path, reference: Volume | None = None) -> Annotation:
    """Read a labelmap or a Slicer .seg.nrrd segmentation as an integer labelmap with segments.

    With `reference`, the result lies on the reference grid. A .seg.nrrd whose voxel grid is
    aligned with the reference (same spacing and direction, integer offset) is padded and cropped
    onto it. A plain labelmap must already be on the reference grid. A multi-layer .seg.nrrd is
    flattened when its layers do not overlap, and rejected when they do.
    """
    path = Path(path)
    if _is_segmentation_file(path):
        annotation = _read_segmentation_file(path)
        if reference is not None:
            annotation = _place_on_reference(annotation, reference, path)
        return annotation

    annotation = _read_labelmap_file(path)
    if reference is not None and not annotation.volume.same_grid(reference):
        raise Mem3DError(
            f"annotation {path} is not on the image grid: annotation "
            f"{_describe_grid(annotation.volume, reference)}, image "
            f"{_describe_grid(reference, annotation.volume)}; resample the annotation onto the "
            "image with nearest-neighbour interpolation (in Slicer: Resample Image (BRAINS) "
            "with the image as reference volume; in SimpleITK: sitk.Resample(annotation, image, "
            "sitk.Transform(), sitk.sitkNearestNeighbor))"
        )
    return annotation


def _is_segmentation_file(path: Path) -> bool:
    """Detect a Slicer segmentation by its name or by Segment fields in a NRRD header."""
    if path.name.lower().endswith(SEGMENTATION_SUFFIX):
        return True
    if path.suffix.lower() not in (".nrrd", ".nhdr") or not path.is_file():
        return False
    sitk = _sitk()
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return False  # the labelmap reader reports the error
    return any(key.startswith("Segment0_") for key in reader.GetMetaDataKeys())


def default_color(label_value: int) -> tuple[float, float, float]:
    """Return a display colour for a label value: hues spaced by the golden ratio stay distinct."""
    hue = (label_value * 0.618033988749895) % 1.0
    return tuple(float(c) for c in colorsys.hsv_to_rgb(hue, 0.65, 0.9))


def default_segments(label_values) -> list[SegmentInfo]:
    """Return "Label N" segments with default colours for the non-zero label values given."""
    return [
        SegmentInfo(label_value=int(value), name=f"Label {int(value)}", color=default_color(int(value)))
        for value in sorted(int(v) for v in label_values)
        if value != 0
    ]


def _label_dtype(max_value: int) -> np.dtype:
    """Return the narrowest of uint8, uint16, int32 and int64 that can store 0..max_value."""
    for dtype in (np.uint8, np.uint16, np.int32, np.int64):
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise Mem3DError(f"label value {max_value} does not fit in a 64-bit integer")


def _read_labelmap_file(path: Path) -> Annotation:
    volume = volume_from_sitk(_read_scalar_image(path, "annotation"))
    labels = _integer_labels(volume.array, path)
    volume.array = labels
    segments = default_segments(np.unique(labels))
    if len(segments) > _MANY_LABELS:
        log.warning(
            "%s contains %d label values; check that this is the mask and not the image",
            path,
            len(segments),
        )
    log.debug(
        "%s: labelmap %s with label values %s",
        path,
        labels.dtype,
        [s.label_value for s in segments],
    )
    return Annotation(labels=labels, volume=volume, segments=segments)


def _integer_labels(array: np.ndarray, path: Path) -> np.ndarray:
    """Check that a labelmap contains only non-negative integers, and convert a float mask."""
    if array.size and not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)):
            raise Mem3DError(f"annotation {path} contains NaN or infinite values; give an integer labelmap")
        fractional = array[array != np.round(array)]
        if fractional.size:
            raise Mem3DError(
                f"annotation {path} contains non-integer values such as {fractional.flat[0]:g}; "
                "give an integer labelmap (threshold a probability map first, for example at 0.5)"
            )
    if array.size and array.min() < 0:
        raise Mem3DError(
            f"annotation {path} contains negative values (minimum {array.min():g}); a labelmap "
            "contains 0 for background and positive label values; check that this is the mask "
            "and not the image"
        )
    if np.issubdtype(array.dtype, np.integer):
        return array
    max_value = int(array.max()) if array.size else 0
    return array.astype(_label_dtype(max_value))


def _describe_grid(volume: Volume, other: Volume | None = None) -> str:
    """Describe a grid for messages, with its direction where that differs from `other`."""
    size = "x".join(str(n) for n in volume.array.shape[:3][::-1])
    spacing = "x".join(f"{s:g}" for s in volume.spacing[::-1])
    origin = ", ".join(f"{o:.6g}" for o in volume.origin)
    text = f"size {size} (i x j x k), spacing {spacing} mm, origin ({origin}) mm"
    if other is not None and not np.allclose(volume.direction, other.direction, atol=1e-4):
        text += ", direction (" + ", ".join(f"{d + 0.0:.3g}" for d in volume.direction) + ")"
    return text


# ---------------------------------------------------------------------------------------------
# Reading .seg.nrrd segmentations


def _read_segmentation_file(path: Path) -> Annotation:
    import slicerio

    if not path.is_file():
        raise Mem3DError(f"annotation not found: {path}; check the path")
    try:
        segmentation = slicerio.read_segmentation(str(path))
    except (OSError, ValueError, KeyError, IndexError, EOFError, zlib.error) as error:
        # slicerio 1.4 raises OSError for invalid NRRD files and segmentation headers. For damaged
        # voxel data, pynrrd raises ValueError and gzip or zlib raise OSError or EOFError.
        raise Mem3DError(
            f"cannot read segmentation {path}: {error}; give an uncorrupted .seg.nrrd file "
            "saved by 3D Slicer or slicerio"
        ) from error

    voxels = np.asarray(segmentation["voxels"])
    # slicerio returns (i, j, k) or (layer, i, j, k) axes; mem3d arrays are (k, j, i).
    if voxels.ndim == 3:
        layers = voxels.transpose(2, 1, 0)[np.newaxis]
    elif voxels.ndim == 4:
        layers = voxels.transpose(0, 3, 2, 1)
    else:
        raise Mem3DError(f"segmentation {path} has {voxels.ndim} dimensions; expected 3 or 4 (layers)")

    labels, segments = _flatten_layers(layers, segmentation.get("segments", []), path)
    volume = _volume_from_matrix(labels, segmentation["ijkToLPS"])
    return Annotation(labels=labels, volume=volume, segments=segments)


def _segment_info(segment: dict, label_value: int) -> SegmentInfo:
    color = segment.get("color") or default_color(label_value)
    extra = {
        key: value
        for key, value in segment.items()
        if key not in ("name", "color", "labelValue", "layer", "extent")
    }
    return SegmentInfo(
        label_value=int(label_value),
        name=str(segment.get("name") or segment.get("id") or f"Label {label_value}"),
        color=tuple(float(c) for c in color[:3]),
        extra=extra,
    )


def _flatten_layers(layers: np.ndarray, segments: list[dict], path: Path):
    """Merge the (layer, k, j, i) voxels of a .seg.nrrd into one labelmap with segments.

    Segments in layer 0 keep their label values. A segment in another layer keeps its value
    unless a segment before it uses that value, and then gets the next unused value.
    Overlapping layers raise a Mem3DError.
    """
    _check_no_overlap(layers, segments, path)
    _check_unique_label_values(segments, path)

    used_values = {int(s.get("labelValue", 1)) for s in segments if s.get("layer", 0) == 0}
    next_value = max(used_values | {int(layers.max()) if layers.size else 0}) + 1
    assigned = []  # (segment, layer, input value, output value)
    for segment in segments:
        layer = int(segment.get("layer", 0))
        value = int(segment.get("labelValue", 1))
        output_value = value
        if layer != 0:
            if value in used_values:
                output_value = next_value
                next_value += 1
            used_values.add(output_value)
        assigned.append((segment, layer, value, output_value))

    if layers.shape[0] == 1:
        labels = np.ascontiguousarray(layers[0])
        if not np.issubdtype(labels.dtype, np.integer):
            labels = _integer_labels(labels, path)
    else:
        labels = np.zeros(layers.shape[1:], dtype=_label_dtype(next_value))
        for _segment, layer, value, output_value in assigned:
            labels[layers[layer] == value] = output_value
        log.info("%s: merged %d non-overlapping layers into one labelmap", path, layers.shape[0])

    infos = [_segment_info(segment, output_value) for segment, _, _, output_value in assigned]
    return labels, infos + _segments_for_unlisted_values(labels, infos, path)


def _check_no_overlap(layers: np.ndarray, segments: list[dict], path: Path) -> None:
    if layers.shape[0] == 1:
        return
    occupied = np.count_nonzero(layers, axis=0)
    overlap_count = int(np.count_nonzero(occupied > 1))
    if overlap_count == 0:
        return
    voxel = tuple(int(index) for index in np.argwhere(occupied > 1)[0])
    names = [
        repr(segment.get("name", segment.get("id")))
        for segment in segments
        if layers[(int(segment.get("layer", 0)),) + voxel] == int(segment.get("labelValue", 1))
    ]
    raise Mem3DError(
        f"segmentation {path} has overlapping segments ({' and '.join(names)} share "
        f"{overlap_count} voxels), and overlapping segments are not supported; remove the "
        "overlap and save again, for example in Slicer's Segment Editor with Logical operators "
        "(Subtract), or keep only one of the overlapping segments"
    )


def _check_unique_label_values(segments: list[dict], path: Path) -> None:
    seen = {}
    for segment in segments:
        key = (int(segment.get("layer", 0)), int(segment.get("labelValue", 1)))
        if key in seen:
            raise Mem3DError(
                f"segmentation {path}: segments {seen[key]!r} and {segment.get('name')!r} both use "
                f"label value {key[1]} in layer {key[0]}, so they cover the same voxels; "
                "overlapping segments are not supported; delete one of them and save again"
            )
        seen[key] = segment.get("name")


def _segments_for_unlisted_values(labels, infos: list[SegmentInfo], path: Path) -> list[SegmentInfo]:
    listed = {info.label_value for info in infos}
    unlisted = [int(v) for v in np.unique(labels) if v != 0 and int(v) not in listed]
    if unlisted:
        log.warning('%s: label values %s belong to no segment; naming them "Label N"', path, unlisted)
    return default_segments(unlisted)


def _aligned_offset(source: Volume, reference: Volume) -> np.ndarray | None:
    """Return the (k, j, i) index of source voxel (0, 0, 0) on the reference grid, or None.

    None means that the voxel grids are not aligned: spacing or direction differ, or the
    offset is not a whole number of voxels.
    """
    if not np.allclose(source.spacing, reference.spacing, rtol=1e-5, atol=1e-6):
        return None
    if not np.allclose(source.direction, reference.direction, atol=1e-5):
        return None
    shift = np.asarray(source.origin) - np.asarray(reference.origin)
    offset_ijk = np.linalg.solve(reference.ijk_to_lps()[:3, :3], shift)
    rounded = np.round(offset_ijk)
    if np.max(np.abs(offset_ijk - rounded)) > _OFFSET_TOLERANCE:
        return None
    return rounded.astype(int)[::-1]


def _place_on_reference(annotation: Annotation, reference: Volume, path: Path) -> Annotation:
    """Pad and crop a segmentation onto the reference grid when the two voxel grids are aligned."""
    if annotation.volume.same_grid(reference):
        return annotation
    offset = _aligned_offset(annotation.volume, reference)
    if offset is None:
        raise Mem3DError(
            f"segmentation {path} is on a voxel grid that is not aligned with the image: "
            f"segmentation {_describe_grid(annotation.volume, reference)}, image "
            f"{_describe_grid(reference, annotation.volume)}; in Slicer, export the segmentation "
            "as a labelmap with the image as reference volume (Segmentations module, "
            "Export/import models and labelmaps) and give that labelmap"
        )

    source = annotation.labels
    target_shape = reference.array.shape[:3]
    placed = np.zeros(target_shape, dtype=source.dtype)
    source_slices, target_slices = [], []
    for start, source_size, target_size in zip(offset, source.shape, target_shape):
        low, high = max(0, -start), min(source_size, target_size - start)
        high = max(low, high)
        source_slices.append(slice(low, high))
        target_slices.append(slice(low + start, high + start))
    kept = source[tuple(source_slices)]
    placed[tuple(target_slices)] = kept

    dropped = int(np.count_nonzero(source)) - int(np.count_nonzero(kept))
    if dropped:
        log.warning("%s: %d labelled voxels lie outside the image and were dropped", path, dropped)
    log.info(
        "%s: placed segmentation at voxel offset %s (k, j, i) of the image grid",
        path,
        offset.tolist(),
    )
    volume = Volume(placed, reference.spacing, reference.origin, reference.direction)
    return Annotation(labels=placed, volume=volume, segments=annotation.segments)


# ---------------------------------------------------------------------------------------------
# Writing


def write_result(
    labels: np.ndarray, reference: Volume, segments: list[SegmentInfo], path: str | Path
) -> None:
    """Write a labelmap on the reference grid: a .seg.nrrd with segments, or any labelmap format."""
    if str(path).lower().endswith(SEGMENTATION_SUFFIX):
        write_segmentation(labels, reference, segments, path)
    else:
        write_labelmap(labels, reference, path)


def write_labelmap(labels: np.ndarray, reference: Volume, path: str | Path) -> None:
    """Write an integer labelmap, compressed, on the reference grid with the labels' dtype."""
    path = Path(path)
    _check_suffix(path, IMAGE_FILE_SUFFIXES)
    labels = _checked_labels(labels, reference)
    grid = Volume(labels, reference.spacing, reference.origin, reference.direction)
    image = volume_to_sitk(grid)
    _write_atomically(path, lambda staged: _write_sitk(image, staged, path))


def write_volume(volume: Volume, path: str | Path) -> None:
    """Write a volume, compressed, in the format that the file name's extension selects."""
    path = Path(path)
    _check_suffix(path, IMAGE_FILE_SUFFIXES)
    image = volume_to_sitk(volume)
    _write_atomically(path, lambda staged: _write_sitk(image, staged, path))


def write_segmentation(
    labels: np.ndarray, reference: Volume, segments: list[SegmentInfo], path: str | Path
) -> None:
    """Write a Slicer .seg.nrrd on the reference grid with segment names, colours and extra fields.

    Label values that no segment lists are written as "Label N" segments.
    """
    import slicerio

    path = Path(path)
    _check_suffix(path, (SEGMENTATION_SUFFIX,))
    labels = _checked_labels(labels, reference)
    listed = [info for info in segments if info.label_value != 0]
    all_segments = listed + _segments_for_unlisted_values(labels, listed, path)
    matrix = reference.ijk_to_lps()
    segmentation = {
        "voxels": labels.transpose(2, 1, 0),  # slicerio writes (i, j, k) arrays
        "ijkToLPS": matrix,
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "conversionParameters": [_reference_geometry_parameter(matrix, labels.shape)],
        "referenceImageExtentOffset": [0, 0, 0],
        "segments": _slicerio_segments(all_segments, labels.shape),
    }
    _write_atomically(
        path,
        lambda staged: slicerio.write_segmentation(str(staged), segmentation, compression_level=6),
    )


def _reference_geometry_parameter(ijk_to_lps: np.ndarray, shape_kji) -> dict:
    """Return the "Reference image geometry" conversion parameter that Slicer stores in a .seg.nrrd.

    Its value is the IJK-to-RAS matrix, row by row, then the extent (i min, i max, j min, ...).
    Slicer creates labelmaps on this grid when it converts other representations.
    """
    ijk_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_lps
    extent = [value for size in shape_kji[::-1] for value in (0, int(size) - 1)]
    # Adding 0.0 turns -0.0, which the sign flip produces, into 0.0.
    numbers = [repr(float(v) + 0.0) for v in ijk_to_ras.ravel()] + [str(v) for v in extent]
    return {
        "name": "Reference image geometry",
        "value": ";".join(numbers) + ";",
        "description": "Image geometry of the labelmap: IJK to RAS matrix (row-major) and extent.",
    }


def _slicerio_segments(segments: list[SegmentInfo], shape_kji) -> list[dict]:
    # The full extent on every segment: slicerio 1.4 notes that older Slicer versions crop
    # a layer to its first segment's extent.
    extent = [value for size in shape_kji[::-1] for value in (0, int(size) - 1)]
    used_ids = set()
    output = []
    for info in segments:
        segment_id = str(info.extra.get("id") or f"Segment_{info.label_value}")
        if segment_id in used_ids:
            segment_id = f"{segment_id}_{info.label_value}"
        used_ids.add(segment_id)
        segment = dict(info.extra)
        segment.update(
            id=segment_id,
            name=info.name,
            color=[float(c) for c in info.color],
            labelValue=int(info.label_value),
            layer=0,
            extent=extent,
        )
        output.append(segment)
    return output


def _check_suffix(path: Path, suffixes: tuple[str, ...]) -> None:
    if not path.name.lower().endswith(suffixes):
        raise Mem3DError(f"cannot write {path}: unsupported file extension; use one of {', '.join(suffixes)}")


def _checked_labels(labels: np.ndarray, reference: Volume) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must have an integer dtype, not {labels.dtype}")
    if labels.shape != reference.array.shape[:3]:
        raise ValueError(
            f"labels shape {labels.shape} differs from the reference grid {reference.array.shape[:3]}"
        )
    return labels


def _write_sitk(image, staged: Path, path: Path) -> None:
    sitk = _sitk()
    try:
        sitk.WriteImage(image, str(staged), useCompression=True)
    except RuntimeError as error:
        raise Mem3DError(f"failed to write {path}: {_itk_error_summary(error)}") from error


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write` on a staging path next to `path`, then move the result into place.

    The staging folder is in the output folder, so `os.replace` is a rename on one file system.
    A folder rather than a single temporary file keeps the final file name, which formats with
    a separate data file (.mhd with .zraw, .nhdr with .raw.gz) write into the header.
    """
    folder = path.parent
    if not folder.is_dir():
        raise Mem3DError(f"output folder not found: {folder}; create it or choose another output path")
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=folder))
    except OSError as error:
        raise Mem3DError(
            f"cannot write to folder {folder}: {error.strerror}; choose a writable output folder"
        ) from error

    try:
        staged = staging / path.name
        write(staged)
        # Companion data files go first, so the header never points at a missing data file.
        for produced in sorted(staging.iterdir(), key=lambda p: p.name == path.name):
            os.replace(produced, folder / produced.name)
    except OSError as error:
        raise Mem3DError(f"failed to write {path}: {error}; check the output folder {folder}") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.debug("wrote %s", path)


# ---------------------------------------------------------------------------------------------
# Sample data


def load_slicerio_sample() -> tuple[Volume, Annotation]:
    """Load the chest CT and its 7-segment segmentation that the slicerio package ships."""
    import slicerio

    folder = Path(slicerio.__file__).parent / "data"
    image_path = folder / "CTChest4.nrrd"
    segmentation_path = folder / "Segmentation.seg.nrrd"
    if not (image_path.is_file() and segmentation_path.is_file()):
        raise Mem3DError(
            f"slicerio sample data not found in {folder}; reinstall slicerio "
            "(pip install --force-reinstall slicerio)"
        )
    image = read_image(image_path)
    return image, read_annotation(segmentation_path, reference=image)
