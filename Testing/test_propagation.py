"""Propagation engine: geometry, key slices, labels, memory bound, cancel, determinism."""

from __future__ import annotations

import mem3d
import numpy as np
import pytest
from mem3d.errors import Mem3DError
from mem3d.memory import MemoryBank
from mem3d.planning import detect_axis, plan_walks
from mem3d.preprocessing import crop_box_for_mask, extract_crop


def spleen_case(data_root):
    from mem3d.io import read_annotation, read_image

    folder = data_root / "ivadomed_data_testing" / "ct_scan"
    image = read_image(folder / "sub-spleen2" / "ct" / "sub-spleen2_ct.nii.gz")
    reference = read_annotation(
        folder / "derivatives" / "labels" / "sub-spleen2" / "ct" / "sub-spleen2_ct_seg-manual.nii.gz"
    )
    return image, reference


def middle_slice(labels: np.ndarray, axis: int = 0) -> np.ndarray:
    other = tuple(a for a in range(3) if a != axis)
    present = np.flatnonzero(labels.any(axis=other))
    index = [slice(None)] * 3
    index[axis] = int(present[len(present) // 2])
    annotation = np.zeros_like(labels)
    annotation[tuple(index)] = labels[tuple(index)]
    return annotation


def test_key_slice_returned_exactly(data_root, random_model):
    image, reference = spleen_case(data_root)
    annotation = middle_slice(reference.labels)
    result = mem3d.propagate(image.array, annotation, image.spacing, model=random_model, device="cpu")
    key = result.key_slices[0]
    assert result.labels.shape == image.array.shape
    assert result.labels.dtype == annotation.dtype
    np.testing.assert_array_equal(result.labels[key], annotation[key])
    assert result.quality[1][key] == 1.0


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_key_slices_in_each_axis(slicerio_sample, random_model, axis):
    image, reference = slicerio_sample
    annotation = middle_slice(np.where(reference.labels == 5, 5, 0).astype(reference.labels.dtype), axis)
    result = mem3d.propagate(image.array, annotation, image.spacing, model=random_model, device="cpu")
    assert result.axis == axis
    key = result.key_slices[0]
    take = [slice(None)] * 3
    take[axis] = key
    np.testing.assert_array_equal(result.labels[tuple(take)], annotation[tuple(take)])


def test_several_labels_keep_their_values(slicerio_sample, random_model):
    image, reference = slicerio_sample
    labels = reference.labels.astype(np.uint16)
    labels[labels == 6] = 300
    annotation = np.zeros_like(labels)
    annotation[17] = np.where(np.isin(labels[17], (5, 300)), labels[17], 0)
    result = mem3d.propagate(image.array, annotation, image.spacing, model=random_model, device="cpu")
    assert set(np.unique(result.labels)) <= {0, 5, 300}
    assert set(result.quality) == {5, 300}
    np.testing.assert_array_equal(result.labels[17], annotation[17])


def test_same_input_same_output(slicerio_sample, random_model):
    image, reference = slicerio_sample
    annotation = middle_slice(np.where(reference.labels == 5, 5, 0).astype(reference.labels.dtype))
    first = mem3d.propagate(image.array, annotation, image.spacing, model=random_model, device="cpu")
    second = mem3d.propagate(image.array, annotation, image.spacing, model=random_model, device="cpu")
    np.testing.assert_array_equal(first.labels, second.labels)
    np.testing.assert_array_equal(first.quality[5], second.quality[5])


def test_cancel_leaves_no_result(slicerio_sample, random_model):
    image, reference = slicerio_sample
    annotation = middle_slice(np.where(reference.labels == 5, 5, 0).astype(reference.labels.dtype))
    before = annotation.copy()
    session = mem3d.open_session(image.array, annotation, image.spacing, model=random_model, device="cpu")
    steps = session.run()
    progress = [next(steps) for _ in range(3)]
    steps.close()
    assert session.result is None
    assert [p.done for p in progress] == [1, 2, 3]
    assert progress[0].total > 3
    np.testing.assert_array_equal(annotation, before)


def test_correction_reuses_unchanged_walks(slicerio_sample, random_model):
    image, reference = slicerio_sample
    labels = np.where(reference.labels == 5, 5, 0).astype(reference.labels.dtype)
    annotation = np.zeros_like(labels)
    annotation[[8, 26]] = labels[[8, 26]]
    session = mem3d.open_session(image.array, annotation, image.spacing, model=random_model, device="cpu")
    first_total = next(session.run()).total
    for _ in session.run():
        pass
    corrected = annotation.copy()
    corrected[12] = labels[12]
    session.set_annotation(corrected)
    steps = list(session.run())
    recomputed = {p.slice_index for p in steps}
    assert recomputed <= set(range(9, 26))
    assert len(steps) < first_total
    np.testing.assert_array_equal(session.result.labels[12], labels[12])


def test_memory_bank_is_bounded():
    import torch

    bank = MemoryBank(recent=3)
    bank.add_key_slice(torch.zeros(1, 4, 2, 2), torch.zeros(1, 8, 2, 2))
    for _ in range(50):
        bank.add_predicted(torch.zeros(1, 4, 2, 2), torch.zeros(1, 8, 2, 2))
    keys, values = bank.tensors()
    assert len(bank) == 4
    assert keys.shape == (1, 4, 4, 2, 2)
    assert values.shape == (1, 8, 4, 2, 2)


def test_small_object_fills_network_input():
    mask = np.zeros((512, 512), bool)
    mask[300:302, 200:205] = True  # 10 voxels
    box = crop_box_for_mask(mask, (0.7, 0.7))
    import torch

    crop = extract_crop(torch.from_numpy(mask.astype(np.float32))[None], box, 128)[0]
    assert (crop > 0.5).sum() > 200  # about 2% of the input, not 0.004%


def test_axis_detection_and_ambiguity():
    annotation = np.zeros((10, 12, 14), np.uint8)
    annotation[4, 3:8, 3:9] = 1
    assert detect_axis(annotation) == 0
    ambiguous = np.zeros((10, 10, 10), np.uint8)
    ambiguous[4:6, 4:6, 2:8] = 1
    with pytest.raises(Mem3DError, match="--axis"):
        detect_axis(ambiguous)
    with pytest.raises(Mem3DError, match="empty"):
        detect_axis(np.zeros((4, 4, 4), np.uint8))


def test_walks_stop_at_key_slices_without_the_label():
    annotation = np.zeros((20, 8, 8), np.uint8)
    annotation[5, 2:5, 2:5] = 1
    annotation[12, 2:5, 2:5] = 2  # label 1 is absent on key slice 12: it ends before it
    walks = plan_walks(annotation, np.array([5, 12]), 1)
    assert {(w.start, w.direction, w.stop, w.far_key) for w in walks} == {(5, -1, -1, None), (5, 1, 12, None)}
    both = annotation.copy()
    both[12, 2:5, 2:5] = 1
    walks = plan_walks(both, np.array([5, 12]), 1)
    assert (5, 1, 12, 12) in {(w.start, w.direction, w.stop, w.far_key) for w in walks}


def test_quick_demons_follows_a_shift():
    import torch
    from mem3d.warp import warp_prior

    rows, cols = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    disc = lambda r, c: (((rows - r) ** 2 + (cols - c) ** 2) < 144).float()  # noqa: E731
    previous_mask = disc(30, 30)
    current_mask = disc(30, 34)
    previous_image = 0.2 + 0.6 * torch.nn.functional.avg_pool2d(previous_mask[None, None], 5, 1, 2)
    current_image = 0.2 + 0.6 * torch.nn.functional.avg_pool2d(current_mask[None, None], 5, 1, 2)
    warped = warp_prior(current_image, previous_image, previous_mask[None, None])[0, 0] > 0.5

    def dice(a, b):
        return float(2 * (a & b).sum() / (a.sum() + b.sum()))

    assert dice(warped, current_mask > 0.5) > dice(previous_mask > 0.5, current_mask > 0.5) + 0.05


def test_axis_stays_with_many_painted_slices():
    annotation = np.zeros((40, 30, 30), np.uint8)
    for index in range(2, 38, 3):  # 12 painted k slices of a thin structure
        annotation[index, 14:17, 10:13] = 1
    assert detect_axis(annotation) == 0


def test_labels_on_different_slices_propagate_independently(slicerio_sample, random_model):
    image, reference = slicerio_sample
    annotation = np.zeros_like(reference.labels)
    annotation[12] = np.where(reference.labels[12] == 5, 5, 0)
    annotation[20] = np.where(reference.labels[20] == 6, 6, 0)
    result = mem3d.propagate(image.array, annotation, image.spacing, axis=0, model=random_model,
                             device="cpu")
    from mem3d.planning import label_key_slices

    assert label_key_slices(annotation, 5).tolist() == [12]
    assert np.isnan(result.quality[5][20]) or result.quality[5][20] < 1.0
    assert result.quality[5][12] == 1.0
    assert result.quality[6][20] == 1.0
    np.testing.assert_array_equal(result.labels[12] == 5, annotation[12] == 5)
    np.testing.assert_array_equal(result.labels[20] == 6, annotation[20] == 6)


def test_crop_box_grows_with_the_object():
    from mem3d.preprocessing import grown_box

    small = np.zeros((100, 100), bool)
    small[50:52, 50:52] = True
    large = np.zeros((100, 100), bool)
    large[30:70, 30:70] = True
    box = crop_box_for_mask(small, (1.0, 1.0))
    grown = grown_box(box, large, (1.0, 1.0))
    assert grown.size[0] >= 80
    assert grown_box(grown, small, (1.0, 1.0)).size == grown.size


def test_rewritten_model_file_is_reloaded(tmp_path):
    import os

    import torch
    from mem3d.api import load_runner
    from mem3d.checkpoints import save_model
    from mem3d.network import STM, compact_config

    path = tmp_path / "model.safetensors"
    save_model(STM(compact_config()), path, {})
    first = load_runner(str(path), "cpu")
    torch.manual_seed(1)
    save_model(STM(compact_config()), path, {})
    os.utime(path, ns=(1, 1))  # a new modification time even on coarse file system clocks
    second = load_runner(str(path), "cpu")
    assert second is not first


def test_changed_settings_recompute_walks(slicerio_sample, random_model):
    from mem3d.walk import WalkSettings

    image, reference = slicerio_sample
    annotation = middle_slice(np.where(reference.labels == 5, 5, 0).astype(reference.labels.dtype))
    session = mem3d.open_session(image.array, annotation, image.spacing, model=random_model, device="cpu")
    first = len(list(session.run()))
    session.settings = WalkSettings(recent_memory=1)
    assert len(list(session.run())) == first
