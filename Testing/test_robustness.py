"""Bad and unusual inputs end in a clear error or a documented result, with nothing written.

The engine is checked through `mem3d.propagate`, the command line through `mem3d.cli.main`
(each user error is one line that starts with "mem3d: error:", exit code 2 and no output file),
and the Slicer logic through real MRML nodes where `slicer-core` is installed. The model is the
untrained `random_model`, so these tests check errors and bookkeeping, not accuracy.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mem3d
import numpy as np
import pytest
import torch
from conftest import REPOSITORY_ROOT
from mem3d.checkpoints import load_model
from mem3d.cli import main
from mem3d.errors import Mem3DError
from mem3d.io import Volume, read_annotation, read_image, write_labelmap, write_volume
from mem3d.planning import plan_walks
from mem3d.propagation import PropagationSession
from mem3d.runtime import ModelRunner
from mem3d.walk import WalkResult, WalkRunner, WalkSettings

SHAPE = (12, 40, 40)  # (k, j, i)
SPACING = (2.0, 1.0, 1.0)  # (k, j, i) in mm
PIXEL_TYPES = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
               np.float32, np.float64]


def noise_image(shape=SHAPE, dtype=np.int16, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(shape) * 100).astype(dtype)


def painted(shape=SHAPE, slices=(5,), value=1, dtype=np.uint8) -> np.ndarray:
    """Return a labelmap with a rectangle of `value` on each given slice along k."""
    labels = np.zeros(shape, dtype)
    for index in slices:
        labels[index, 10:20, 12:25] = value
    return labels


def propagate(image, annotation, model, **options):
    return mem3d.propagate(image, annotation, options.pop("spacing", SPACING), model=model,
                           device="cpu", **options)


def assert_key_slices_kept(result, annotation):
    """Painted voxels come back as painted, and each label is exact on its own key slices.

    Another label's propagation may fill unpainted voxels of a slice painted for one label.
    """
    along_result = np.moveaxis(result.labels, result.axis, 0)
    along_annotation = np.moveaxis(annotation, result.axis, 0)
    for index in result.key_slices:
        painted = along_annotation[index] != 0
        np.testing.assert_array_equal(along_result[index][painted], along_annotation[index][painted])
        for label in np.unique(along_annotation[index][painted]):
            np.testing.assert_array_equal(along_result[index] == label,
                                          along_annotation[index] == label)


# --- Engine: annotations ------------------------------------------------------------------------


def test_empty_annotation_rejected(random_model):
    with pytest.raises(Mem3DError, match="annotation is empty"):
        propagate(noise_image(), np.zeros(SHAPE, np.uint8), random_model)
    with pytest.raises(Mem3DError, match="annotation is empty"):
        propagate(noise_image(), np.zeros(SHAPE, np.uint8), random_model, axis=0)


def test_annotation_of_other_shape_rejected(random_model):
    with pytest.raises(Mem3DError, match="resample the annotation"):
        propagate(noise_image(), painted((12, 40, 41)), random_model)


def test_every_slice_painted_returns_annotation(random_model, caplog):
    annotation = painted(slices=range(SHAPE[0]))

    with caplog.at_level(logging.WARNING, logger="mem3d"):
        result = propagate(noise_image(), annotation, random_model, axis=0)

    np.testing.assert_array_equal(result.labels, annotation)
    assert result.slices_computed == 0
    assert "nothing to propagate" in caplog.text


def test_whole_volume_painted_returns_annotation(random_model):
    annotation = np.ones(SHAPE, np.uint8)

    result = propagate(noise_image(), annotation, random_model)

    np.testing.assert_array_equal(result.labels, annotation)
    assert result.slices_computed == 0


def test_ambiguous_axis_suggests_option(random_model):
    annotation = np.zeros(SHAPE, np.uint8)
    annotation[5, 20, 10:20] = 1  # a line: one slice along k and along j

    with pytest.raises(Mem3DError, match="--axis"):
        propagate(noise_image(), annotation, random_model)


def test_label_values_above_255_kept(random_model):
    annotation = painted(value=300, dtype=np.uint16)
    annotation[5, 25:35, 25:35] = 7

    result = propagate(noise_image(), annotation, random_model)

    assert result.labels.dtype == np.uint16
    assert set(np.unique(result.labels)) <= {0, 7, 300}
    assert set(result.quality) == {7, 300}
    assert_key_slices_kept(result, annotation)


def test_key_slices_without_label_rejected(random_model):
    with pytest.raises(Mem3DError, match="hold no label"):
        propagate(noise_image(), painted(), random_model, axis=0, key_slices=[2])


@pytest.mark.parametrize("dtype", [bool, np.float32])
def test_non_integer_annotation_rejected(random_model, dtype):
    with pytest.raises(Mem3DError, match="integer labels"):
        propagate(noise_image(), painted().astype(dtype), random_model)


# --- Engine: images -----------------------------------------------------------------------------


def test_single_slice_image_returns_annotation(random_model, caplog):
    annotation = painted((1, 40, 40), slices=(0,))

    with caplog.at_level(logging.WARNING, logger="mem3d"):
        result = propagate(noise_image((1, 40, 40)), annotation, random_model)

    np.testing.assert_array_equal(result.labels, annotation)
    assert result.slices_computed == 0
    assert "nothing to propagate" in caplog.text


@pytest.mark.parametrize("shape", [(40, 40), (12, 40, 40, 3), (2, 12, 40, 40)])
def test_image_not_3d_rejected(random_model, shape):
    with pytest.raises(Mem3DError, match="give a 3D"):
        propagate(noise_image(shape), painted(), random_model)


def test_complex_image_rejected(random_model):
    with pytest.raises(Mem3DError, match="complex64"):
        propagate(noise_image().astype(np.complex64), painted(), random_model)


@pytest.mark.parametrize("fill", ["nan_and_inf", "all_nan", "constant"])
def test_degenerate_intensities_propagate(random_model, fill):
    image = noise_image(dtype=np.float32)
    if fill == "nan_and_inf":
        image[2:4] = np.nan
        image[6, :20] = np.inf
        image[7, 20:] = -np.inf
    elif fill == "all_nan":
        image[:] = np.nan
    else:
        image[:] = 7.0
    annotation = painted()

    result = propagate(image, annotation, random_model)

    assert set(np.unique(result.labels)) <= {0, 1}
    assert np.isfinite(result.quality[1][~np.isnan(result.quality[1])]).all()
    assert_key_slices_kept(result, annotation)


@pytest.mark.parametrize("dtype", PIXEL_TYPES + [np.float16, bool], ids=lambda t: np.dtype(t).name)
def test_every_pixel_type_propagates(random_model, dtype):
    annotation = painted()

    result = propagate(noise_image(dtype=dtype), annotation, random_model)

    assert result.labels.dtype == annotation.dtype
    assert result.slices_computed > 0
    assert_key_slices_kept(result, annotation)


@pytest.mark.parametrize("spacing", [(0, 1, 1), (-1, 1, 1), (float("nan"), 1, 1), (1, 1), None])
def test_invalid_spacing_rejected(random_model, spacing):
    with pytest.raises(Mem3DError, match="spacing"):
        propagate(noise_image(), painted(), random_model, spacing=spacing)


@pytest.mark.parametrize("slice_range", [(8, 3), (0, 12), (-1, 5)])
def test_invalid_slice_range_rejected(random_model, slice_range):
    with pytest.raises(Mem3DError, match="slice range"):
        propagate(noise_image(), painted(), random_model, slice_range=slice_range)


# --- Engine: objects and geometry ---------------------------------------------------------------


def test_one_voxel_object(random_model):
    annotation = np.zeros(SHAPE, np.uint8)
    annotation[5, 20, 20] = 1

    with pytest.raises(Mem3DError, match="--axis"):
        propagate(noise_image(), annotation, random_model)
    result = propagate(noise_image(), annotation, random_model, axis=0)

    assert result.key_slices == [5]
    assert_key_slices_kept(result, annotation)


def test_object_touching_volume_border(random_model):
    annotation = np.zeros(SHAPE, np.uint8)
    annotation[0, :8, :8] = 1  # first slice, corner
    annotation[11, 32:, 32:] = 2  # last slice, opposite corner

    result = propagate(noise_image(), annotation, random_model, axis=0)

    assert result.labels.shape == SHAPE
    assert result.slices_computed > 0
    assert_key_slices_kept(result, annotation)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_anisotropic_spacing_along_each_axis(random_model, axis):
    annotation = np.zeros(SHAPE, np.uint8)
    index = [slice(3, 9), slice(15, 25), slice(15, 25)]
    index[axis] = 6 if axis == 0 else 20
    annotation[tuple(index)] = 1

    result = propagate(noise_image(), annotation, random_model, axis=axis, spacing=(7.5, 0.5, 0.5))

    assert result.axis == axis
    assert_key_slices_kept(result, annotation)


# --- Engine: memory -----------------------------------------------------------------------------


def test_walk_results_store_crops_only(random_model):
    """A walk keeps one network-sized float16 crop per slice, not the full 512 x 512 slice."""
    image = noise_image((20, 512, 512))
    annotation = np.zeros((20, 512, 512), np.uint8)
    annotation[10, 240:270, 230:260] = 1
    runner = mem3d.load_runner(random_model, "cpu")
    walker = WalkRunner(runner, image, annotation, (0.7, 0.7), WalkSettings())
    walk = plan_walks(annotation, np.array([10]), 1)[1]
    result = WalkResult(walk)

    computed = list(walker.run(walk, result))

    assert computed
    size = runner.input_size
    assert all(crop.shape == (size, size) for crop in result.crops.values())
    assert all(crop.dtype == torch.float16 for crop in result.crops.values())


LARGE_VOLUME_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import numpy as np, torch
    torch.set_num_threads(1)
    import mem3d

    def status_mib(field):
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024

    shape = (1000, 512, 512)
    image = np.empty(shape, np.int16)
    image[:] = np.add.outer(np.arange(512), np.arange(512)).astype(np.int16)
    annotation = np.full(shape, 0, np.uint8)
    annotation[500, 240:270, 230:260] = 1
    mem3d.load_runner(sys.argv[1], "cpu")
    before = status_mib("VmRSS")
    started = time.monotonic()
    result = mem3d.propagate(image, annotation, (1.0, 0.7, 0.7), model=sys.argv[1], device="cpu",
                             slice_range=(470, 530))
    print(json.dumps({
        "before_mib": before, "peak_mib": status_mib("VmHWM"),
        "arrays_mib": (image.nbytes + annotation.nbytes + result.labels.nbytes) / 2**20,
        "output_mib": result.labels.nbytes / 2**20, "slices": result.slices_computed,
        "seconds": time.monotonic() - started,
    }))
""")

# Bounds on the resident memory of a propagation of 60 slices through a 512 x 512 x 1000 int16
# volume. Measured with torch 2.13 (CPU build) and 1 thread on a 2-core Intel Xeon: 29 MiB of
# working memory and a peak of 1272 MiB, of which the image, annotation and output are 1000 MiB.
# A walk keeps a 32 KiB crop per slice, so the allowance per slice catches full slices kept.
WORKING_MEMORY_BASE_MIB = 64  # above the memory before the call plus the output labelmap
WORKING_MEMORY_PER_SLICE_MIB = 0.25
PEAK_ABOVE_ARRAYS_LIMIT_MIB = 600  # Python, torch, the model and the working memory


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads Linux /proc")
def test_large_volume_memory_bound(random_model):
    environment = dict(os.environ, OMP_NUM_THREADS="1",
                       PYTHONPATH=str(REPOSITORY_ROOT / "Mem3DSegment"))
    completed = subprocess.run([sys.executable, "-c", LARGE_VOLUME_SCRIPT, str(random_model)],
                               capture_output=True, text=True, timeout=300, env=environment)
    assert completed.returncode == 0, completed.stderr
    measured = json.loads(completed.stdout.strip().splitlines()[-1])
    print("large volume:", measured)

    working = measured["peak_mib"] - measured["before_mib"] - measured["output_mib"]
    assert measured["slices"] > 0
    assert working < WORKING_MEMORY_BASE_MIB + WORKING_MEMORY_PER_SLICE_MIB * measured["slices"]
    assert measured["peak_mib"] < measured["arrays_mib"] + PEAK_ABOVE_ARRAYS_LIMIT_MIB


# --- Engine: device -----------------------------------------------------------------------------


def test_gpu_out_of_memory_falls_back_to_cpu(random_model, caplog):
    """Simulate a full GPU on a runner whose device is "meta", which needs no GPU.

    The network's first memory encoding raises torch.cuda.OutOfMemoryError, as a full GPU does.
    The runner must move to the CPU, warn, and produce what a float32 CPU runner produces.
    """
    image, annotation = noise_image(), painted()
    expected_runner = ModelRunner.create(load_model(random_model).network, "cpu", precision="float32")
    expected = PropagationSession(expected_runner, image, annotation, SPACING, axis=0)
    for _ in expected.run():
        pass

    network = load_model(random_model).network
    encode = network.encode_memory
    failures = []

    def encode_after_one_failure(*arguments):
        if not failures:
            failures.append(1)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return encode(*arguments)

    network.encode_memory = encode_after_one_failure
    runner = ModelRunner(network, torch.device("meta"), None)
    session = PropagationSession(runner, image, annotation, SPACING, axis=0)
    with caplog.at_level(logging.WARNING, logger="mem3d"):
        for _ in session.run():
            pass

    assert failures == [1]
    assert runner.device.type == "cpu"
    assert "ran out of memory" in caplog.text
    np.testing.assert_array_equal(session.result.labels, expected.result.labels)


def test_other_runtime_errors_not_hidden(random_model):
    network = load_model(random_model).network

    def broken(*arguments):
        raise RuntimeError("shape mismatch in a convolution")

    network.encode_memory = broken
    runner = ModelRunner(network, torch.device("meta"), None)
    session = PropagationSession(runner, noise_image(), painted(), SPACING, axis=0)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        list(session.run())
    assert runner.device.type == "meta"


# --- Command line -------------------------------------------------------------------------------


@pytest.fixture
def case(tmp_path):
    """A folder with image.nrrd and annotation.nrrd (one painted slice) on the same grid."""
    grid = Volume(noise_image(), SPACING, (3.0, -4.0, 5.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    write_volume(grid, tmp_path / "image.nrrd")
    write_labelmap(painted(), grid, tmp_path / "annotation.nrrd")
    return tmp_path


def run_cli(capsys, *arguments):
    """Run `mem3d` with arguments and return (exit code, stderr lines)."""
    code = main([str(a) for a in arguments])
    return code, capsys.readouterr().err.strip().splitlines()


def propagate_cli(capsys, folder, model, *options, image="image.nrrd", annotation="annotation.nrrd",
                  output="out.nrrd"):
    return run_cli(capsys, "propagate", folder / image, folder / annotation, "-o", folder / output,
                   "--model", model, "--device", "cpu", "--no-progress", *options)


def assert_user_error(code, lines, match: str):
    assert code == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith("mem3d: error:")
    assert match in lines[0]


def test_cli_writes_result(case, capsys, random_model):
    code, lines = propagate_cli(capsys, case, random_model)

    assert code == 0, lines
    result = read_annotation(case / "out.nrrd", reference=read_image(case / "image.nrrd"))
    np.testing.assert_array_equal(result.labels[5], painted()[5])


def test_cli_annotation_on_other_grid(case, capsys, random_model):
    other = Volume(noise_image(), (2.0, 1.0, 1.1), (3.0, -4.0, 5.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    write_labelmap(painted(), other, case / "other.nrrd")

    code, lines = propagate_cli(capsys, case, random_model, annotation="other.nrrd")

    assert_user_error(code, lines, "not on the image grid")
    assert not (case / "out.nrrd").exists()


@pytest.mark.parametrize("labels, match", [
    (np.zeros(SHAPE, np.uint8), "annotation is empty"),
    (np.pad(np.ones((1, 1, 10), np.uint8), ((5, 6), (20, 19), (10, 20))), "--axis"),
])
def test_cli_unusable_annotation(case, capsys, random_model, labels, match):
    write_labelmap(labels, read_image(case / "image.nrrd"), case / "bad.nrrd")

    code, lines = propagate_cli(capsys, case, random_model, annotation="bad.nrrd")

    assert_user_error(code, lines, match)
    assert not (case / "out.nrrd").exists()


def test_cli_every_slice_painted(case, capsys, random_model, caplog):
    labels = painted(slices=range(SHAPE[0]))
    write_labelmap(labels, read_image(case / "image.nrrd"), case / "all.nrrd")

    with caplog.at_level(logging.WARNING, logger="mem3d"):
        code, lines = propagate_cli(capsys, case, random_model, "--axis", "axial",
                                    annotation="all.nrrd")

    assert code == 0, lines
    assert "nothing to propagate" in caplog.text
    np.testing.assert_array_equal(read_annotation(case / "out.nrrd").labels, labels)


def test_cli_single_slice_volume(case, capsys, random_model):
    grid = Volume(noise_image((1, 40, 40)), SPACING, (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    write_volume(grid, case / "thin.nii.gz")
    write_labelmap(painted((1, 40, 40), slices=(0,)), grid, case / "thin-labels.nii.gz")

    code, lines = propagate_cli(capsys, case, random_model, image="thin.nii.gz",
                                annotation="thin-labels.nii.gz")

    assert code == 0, lines
    np.testing.assert_array_equal(read_annotation(case / "out.nrrd").labels,
                                  painted((1, 40, 40), slices=(0,)))


@pytest.mark.parametrize("kind", ["4d", "vector"])
def test_cli_image_not_scalar_3d(case, capsys, random_model, kind):
    import SimpleITK as sitk

    if kind == "4d":
        image = sitk.Image([40, 40, 12, 2], sitk.sitkInt16)
    else:
        image = sitk.Image([40, 40, 12], sitk.sitkVectorFloat32, 3)
    sitk.WriteImage(image, str(case / "bad.nrrd"))

    code, lines = propagate_cli(capsys, case, random_model, image="bad.nrrd")

    assert_user_error(code, lines, "4D image" if kind == "4d" else "components per voxel")
    assert not (case / "out.nrrd").exists()


@pytest.mark.parametrize("dtype", PIXEL_TYPES, ids=lambda t: np.dtype(t).name)
def test_cli_every_pixel_type(case, capsys, random_model, dtype):
    grid = read_image(case / "image.nrrd")
    write_volume(Volume(noise_image(dtype=dtype), grid.spacing, grid.origin, grid.direction),
                 case / "typed.nrrd")
    assert read_image(case / "typed.nrrd").array.dtype == dtype

    code, lines = propagate_cli(capsys, case, random_model, image="typed.nrrd")

    assert code == 0, lines
    np.testing.assert_array_equal(read_annotation(case / "out.nrrd").labels[5], painted()[5])


def test_cli_nan_voxels(case, capsys, random_model):
    image = noise_image(dtype=np.float32)
    image[2:4] = np.nan
    image[7] = np.inf
    grid = read_image(case / "image.nrrd")
    write_volume(Volume(image, grid.spacing, grid.origin, grid.direction), case / "nan.nrrd")

    code, lines = propagate_cli(capsys, case, random_model, image="nan.nrrd")

    assert code == 0, lines
    assert (case / "out.nrrd").exists()


def test_cli_label_values_above_255(case, capsys, random_model):
    labels = painted(value=300, dtype=np.uint16)
    labels[5, 25:35, 25:35] = 7
    write_labelmap(labels, read_image(case / "image.nrrd"), case / "wide.nrrd")

    code, lines = propagate_cli(capsys, case, random_model, annotation="wide.nrrd")

    assert code == 0, lines
    result = read_annotation(case / "out.nrrd").labels
    assert result.dtype == np.uint16
    assert set(np.unique(result)) <= {0, 7, 300}
    np.testing.assert_array_equal(result[5], labels[5])


def test_cli_oblique_anisotropic_grid_kept(case, capsys, random_model):
    angle = 0.4
    rotation = np.array([
        [np.cos(angle), -np.sin(angle), 0.0],
        [0.8 * np.sin(angle), 0.8 * np.cos(angle), 0.6],
        [-0.6 * np.sin(angle), -0.6 * np.cos(angle), 0.8],
    ])
    grid = Volume(noise_image(), (7.5, 0.5, 0.5), (10.0, -20.0, 30.0), tuple(rotation.ravel()))
    write_volume(grid, case / "oblique.nii.gz")
    write_labelmap(painted(), grid, case / "oblique-labels.nii.gz")

    code, lines = propagate_cli(capsys, case, random_model, image="oblique.nii.gz",
                                annotation="oblique-labels.nii.gz", output="out.nii.gz")

    assert code == 0, lines
    assert read_annotation(case / "out.nii.gz").volume.same_grid(read_image(case / "oblique.nii.gz"))


def write_torch_file(path: Path, content) -> None:
    torch.save(content, path)


class CodeCarrier:
    """Unpickling this object calls open(marker, "w"), which leaves a file behind if it runs."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.mark.parametrize("kind, match", [
    ("empty", "is empty"),
    ("truncated", "truncated or corrupt"),
    ("corrupt", "not a model checkpoint"),
    ("other_architecture", "does not contain an STM network"),
    ("code_carrying", "not loaded for safety"),
    ("missing", "neither a model name nor an existing file"),
])
def test_cli_bad_model(case, capsys, random_model, kind, match):
    path = case / f"{kind}.pth"
    marker = case / "unpickled-code-ran"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = Path(random_model).read_bytes()
        path = case / "truncated.safetensors"
        path.write_bytes(data[: len(data) // 2])
    elif kind == "corrupt":
        path.write_bytes(b"\x00garbage" * 64)
    elif kind == "other_architecture":
        write_torch_file(path, torch.nn.Linear(4, 2).state_dict())
    elif kind == "code_carrying":
        write_torch_file(path, {"state_dict": CodeCarrier(marker)})

    code, lines = propagate_cli(capsys, case, path)

    assert_user_error(code, lines, match)
    assert not (case / "out.nrrd").exists()
    assert not marker.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cli_cuda_without_gpu(case, capsys, random_model):
    code, lines = run_cli(capsys, "propagate", case / "image.nrrd", case / "annotation.nrrd",
                          "-o", case / "out.nrrd", "--model", random_model, "--device", "cuda")

    assert_user_error(code, lines, "no CUDA GPU")
    assert not (case / "out.nrrd").exists()


def test_cli_interrupt_writes_nothing(case, capsys, random_model, monkeypatch):
    segment = ModelRunner.segment
    calls = []

    def segment_until_interrupt(self, *arguments):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return segment(self, *arguments)

    monkeypatch.setattr(ModelRunner, "segment", segment_until_interrupt)
    before = sorted(p.name for p in case.iterdir())

    code, lines = propagate_cli(capsys, case, random_model, "--quality-csv", case / "quality.csv")

    assert code == 130
    assert lines == ["mem3d: interrupted; no output was written"]
    assert sorted(p.name for p in case.iterdir()) == before


def test_cli_out_of_memory(case, capsys, random_model, monkeypatch):
    def exhausted(*arguments, **options):
        raise MemoryError

    monkeypatch.setattr(PropagationSession, "run", exhausted)
    code, lines = propagate_cli(capsys, case, random_model)

    assert_user_error(code, lines, "out of memory")
    assert not (case / "out.nrrd").exists()


def test_cli_output_folder_missing(case, capsys, random_model):
    code, lines = propagate_cli(capsys, case, random_model, output="absent/out.nrrd")

    assert_user_error(code, lines, "does not exist")


def test_cli_output_folder_not_writable(case, capsys, random_model, monkeypatch):
    """Simulated with a failing temporary file, because root may write into read-only folders."""
    import tempfile

    def deny(*arguments, **options):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", deny)
    code, lines = propagate_cli(capsys, case, random_model)

    assert_user_error(code, lines, "not writable (Permission denied)")
    assert not (case / "out.nrrd").exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root can write to read-only folders")
def test_cli_read_only_folder(case, capsys, random_model):
    folder = case / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        code, lines = propagate_cli(capsys, case, random_model, output="read-only/out.nrrd")
    finally:
        folder.chmod(0o700)

    assert_user_error(code, lines, "not writable")
    assert list(folder.iterdir()) == []


def test_cli_output_equal_to_input(case, capsys, random_model):
    original = (case / "annotation.nrrd").read_bytes()

    code, lines = propagate_cli(capsys, case, random_model, output="annotation.nrrd")

    assert_user_error(code, lines, "--force")
    assert (case / "annotation.nrrd").read_bytes() == original

    code, lines = propagate_cli(capsys, case, random_model, "--force", output="annotation.nrrd")

    assert code == 0, lines
    assert (case / "annotation.nrrd").read_bytes() != original


def test_cli_two_outputs_same_file(case, capsys, random_model):
    code, lines = propagate_cli(capsys, case, random_model, "--quality-csv", case / "out.nrrd")

    assert_user_error(code, lines, "two outputs")
    assert not (case / "out.nrrd").exists()


def test_cli_debug_raises_error(case, random_model):
    write_labelmap(np.zeros(SHAPE, np.uint8), read_image(case / "image.nrrd"), case / "empty.nrrd")

    with pytest.raises(Mem3DError, match="annotation is empty"):
        main(["--debug", "propagate", str(case / "image.nrrd"), str(case / "empty.nrrd"),
              "-o", str(case / "out.nrrd"), "--model", str(random_model), "--device", "cpu"])


# --- Slicer logic -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slicer_modules():
    slicer = pytest.importorskip("slicer")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("the installed 'slicer' package is not slicer-core")
    module_folder = str(REPOSITORY_ROOT / "Mem3DSegment")
    if module_folder not in sys.path:
        sys.path.insert(0, module_folder)
    from Mem3DSegmentLib import geometry
    from Mem3DSegmentLib.logic import Mem3DSegmentLogic
    from Mem3DSegmentLib.scene import createScene

    return slicer, geometry, Mem3DSegmentLogic, createScene


def slicer_preview(slicer_modules, image: np.ndarray, mask: np.ndarray, model, **options):
    """Put `image` in a volume node and `mask` in a segment on its grid, and preview it."""
    slicer, geometry, logicClass, createScene = slicer_modules
    mrml = createScene()
    volume = mrml.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "volume")
    slicer.util.updateVolumeFromArray(volume, image)
    volume.SetSpacing(1.0, 1.0, 2.0)
    segmentation = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "segmentation")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segmentation.GetSegmentation().AddEmptySegment("painted", "painted")
    labelmap = geometry.orientedImageFromArray(mask.astype(np.uint8),
                                               geometry.volumeIjkToRas(volume), (0, 0, 0))
    assert mrml.segmentationsLogic.SetBinaryLabelmapToSegment(
        labelmap, segmentation, "painted", mrml.segmentationsLogic.MODE_REPLACE)
    return logicClass().preview(volume, segmentation, model=str(model), device="cpu", **options)


def test_logic_every_slice_painted(slicer_modules, random_model):
    mask = painted(slices=range(SHAPE[0]))

    result = slicer_preview(slicer_modules, noise_image(), mask, random_model, axis=0)

    np.testing.assert_array_equal(result.labels, mask)
    assert result.slicesComputed == 0


def test_logic_single_slice_volume(slicer_modules, random_model):
    mask = painted((1, 40, 40), slices=(0,))

    result = slicer_preview(slicer_modules, noise_image((1, 40, 40)), mask, random_model)

    np.testing.assert_array_equal(result.labels, mask)


@pytest.mark.parametrize("dtype", [np.int8, np.uint16, np.int32, np.float32, np.float64],
                         ids=lambda t: np.dtype(t).name)
def test_logic_pixel_types(slicer_modules, random_model, dtype):
    result = slicer_preview(slicer_modules, noise_image(dtype=dtype), painted(), random_model)

    assert result.slicesComputed > 0
    np.testing.assert_array_equal(result.labels[5], painted()[5])


def test_logic_nan_voxels(slicer_modules, random_model):
    image = noise_image(dtype=np.float32)
    image[2:4] = np.nan

    result = slicer_preview(slicer_modules, image, painted(), random_model)

    np.testing.assert_array_equal(result.labels[5], painted()[5])


def test_logic_one_voxel_segment_needs_axis(slicer_modules, random_model):
    mask = np.zeros(SHAPE, np.uint8)
    mask[5, 20, 20] = 1

    with pytest.raises(Mem3DError, match="choose Axial, Coronal or Sagittal"):
        slicer_preview(slicer_modules, noise_image(), mask, random_model)
    result = slicer_preview(slicer_modules, noise_image(), mask, random_model, axis=0)

    np.testing.assert_array_equal(result.labels[5], mask[5])


def test_anatomical_axis_follows_image_direction(data_root, random_model, tmp_path, capsys):
    from mem3d.cli import main
    from mem3d.io import read_annotation, read_image, write_labelmap

    folder = data_root / "sct_testing_data" / "t2"
    image = read_image(folder / "t2.nii.gz")
    labels = read_annotation(folder / "t2_seg-manual.nii.gz").labels
    from mem3d.planning import axis_for_direction

    axial = axis_for_direction("axial", image.direction)
    assert axial != 0  # this volume stores k along left-right
    annotation = np.zeros_like(labels)
    take = [slice(None)] * 3
    take[axial] = 27
    annotation[tuple(take)] = labels[tuple(take)]
    write_labelmap(annotation, image, tmp_path / "key.nii.gz")
    output = tmp_path / "out.nii.gz"
    code = main(["propagate", str(folder / "t2.nii.gz"), str(tmp_path / "key.nii.gz"), "-o",
                 str(output), "--axis", "axial", "--model", str(random_model), "--device", "cpu"])
    assert code == 0
    assert f"axis {axial}," in capsys.readouterr().out


def test_bad_montage_name_rejected_before_writing(data_root, random_model, tmp_path, capsys):
    from mem3d.cli import main

    folder = data_root / "sct_testing_data" / "t2s"
    output = tmp_path / "out.nii.gz"
    code = main(["propagate", str(folder / "t2s.nii.gz"), str(folder / "t2s_gmseg_manual.nii.gz"),
                 "-o", str(output), "--montage", str(tmp_path / "m.txt"),
                 "--model", str(random_model)])
    assert code == 2
    assert "png" in capsys.readouterr().err
    assert not output.exists()
