"""Voxel grids between MRML and numpy: matrices, arrays of oriented images, axes of slice views.

Arrays are in (k, j, i) order as `slicer.util.arrayFromVolume` returns them, so array axis 0 is
the IJK axis k, array axis 1 is j and array axis 2 is i. Matrices are 4x4 numpy arrays that map
homogeneous (i, j, k, 1) indices to RAS millimetres.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

# Unit vectors in RAS of the anatomical directions that slice views are named after: a sagittal
# view looks along R, a coronal view along A and an axial view along S.
ANATOMICAL_NORMALS = {
    "sagittal": (1.0, 0.0, 0.0),
    "coronal": (0.0, 1.0, 0.0),
    "axial": (0.0, 0.0, 1.0),
}


def numpyFromVtkMatrix(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(row, column) for column in range(4)] for row in range(4)])


def vtkMatrixFromNumpy(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            matrix.SetElement(row, column, float(array[row, column]))
    return matrix


def volumeIjkToRas(volumeNode) -> np.ndarray:
    """Return the IJK-to-RAS matrix of a volume node, in the node's own coordinates."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return numpyFromVtkMatrix(matrix)


def imageIjkToRas(image) -> np.ndarray:
    """Return the image-to-world matrix of a vtkOrientedImageData (indices in extent units)."""
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    return numpyFromVtkMatrix(matrix)


def nodeToWorld(node) -> np.ndarray:
    """Return the linear transform from a transformable node's coordinates to world RAS.

    Raises ValueError for a non-linear parent transform, which a matrix cannot describe.
    """
    parent = node.GetParentTransformNode() if node is not None else None
    if parent is None:
        return np.eye(4)
    matrix = vtk.vtkMatrix4x4()
    if not slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(parent, None, matrix):
        raise ValueError(
            f"node {node.GetName()!r} is under a non-linear transform; harden the transform "
            "(Transforms module) before propagating"
        )
    return numpyFromVtkMatrix(matrix)


def spacingKji(ijkToRas: np.ndarray) -> tuple[float, float, float]:
    """Return the voxel spacing in mm in (k, j, i) order, from the lengths of the matrix columns."""
    lengths = np.linalg.norm(ijkToRas[:3, :3], axis=0)
    return float(lengths[2]), float(lengths[1]), float(lengths[0])


def arrayAxisForDirection(ijkToRas: np.ndarray, directionRas) -> int:
    """Return the array axis (0 = k, 1 = j, 2 = i) whose IJK axis is nearest to a RAS direction.

    The IJK axis whose unit vector has the largest absolute dot product with the direction wins,
    so a volume acquired obliquely still maps a view normal to the slice stack it cuts across.
    """
    direction = np.asarray(directionRas, dtype=float)
    length = np.linalg.norm(direction)
    if direction.shape != (3,) or length == 0:
        raise ValueError(f"direction {directionRas!r} is not a non-zero 3D vector")
    columns = ijkToRas[:3, :3] / np.linalg.norm(ijkToRas[:3, :3], axis=0)
    ijkAxis = int(np.argmax(np.abs(columns.T @ (direction / length))))
    return 2 - ijkAxis


def axisFromSliceNormal(volumeNode, normalRAS) -> int:
    """Return the array axis (0 = k, 1 = j, 2 = i) of a volume that a slice view cuts across.

    `normalRAS` is the view's normal in world RAS, for example the third column of the slice
    node's SliceToRAS matrix. The volume's parent transform is taken into account.
    """
    ijkToWorld = nodeToWorld(volumeNode) @ volumeIjkToRas(volumeNode)
    return arrayAxisForDirection(ijkToWorld, normalRAS)


def arrayFromOrientedImage(image) -> np.ndarray:
    """Return a (k, j, i) view on the first scalar component of a vtkOrientedImageData."""
    extent = image.GetExtent()
    shape = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    scalars = image.GetPointData().GetScalars()
    components = scalars.GetNumberOfComponents()
    values = numpy_support.vtk_to_numpy(scalars)
    if components > 1:
        values = values[:, 0]
    return values.reshape(shape)


def orientedImageFromArray(array: np.ndarray, ijkToRas: np.ndarray,
                           extentStart: tuple[int, int, int] = (0, 0, 0)):
    """Return a new vtkOrientedImageData holding a copy of a (k, j, i) integer array.

    `extentStart` is the (i, j, k) index of array element [0, 0, 0]. `ijkToRas` maps indices in
    those extent units, so the image shares the geometry of the image the array came from.
    """
    if array.ndim != 3:
        raise ValueError(f"expected a 3D (k, j, i) array, got shape {array.shape}")
    image = slicer.vtkOrientedImageData()
    i0, j0, k0 = (int(v) for v in extentStart)
    image.SetExtent(i0, i0 + array.shape[2] - 1, j0, j0 + array.shape[1] - 1, k0, k0 + array.shape[0] - 1)
    image.SetImageToWorldMatrix(vtkMatrixFromNumpy(ijkToRas))
    image.AllocateScalars(_smallestScalarType(array), 1)
    arrayFromOrientedImage(image)[:] = array
    image.Modified()
    return image


def _smallestScalarType(array: np.ndarray) -> int:
    low, high = int(array.min(initial=0)), int(array.max(initial=0))
    if low >= 0 and high <= 255:
        return vtk.VTK_UNSIGNED_CHAR
    if low >= -32768 and high <= 32767:
        return vtk.VTK_SHORT
    return vtk.VTK_INT


def arrayIndexToIjk(indexKji, extentStart: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """Return the homogeneous (i, j, k, 1) image index of a (k, j, i) array position."""
    k, j, i = (float(v) for v in indexKji)
    return np.array([i + extentStart[0], j + extentStart[1], k + extentStart[2], 1.0])
