"""Training pipeline on real data: clips, augmentation, the loss falling, resume and export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from mem3d.training.cases import TrainingCase
from mem3d.training.clips import ClipSettings, sample_clip
from mem3d.training.data import ClipBatcher, load_pool
from mem3d.training.loop import Trainer, TrainSettings


def small_pool(data_root: Path):
    folder = data_root / "sct_testing_data" / "t2s"
    cases = [TrainingCase(folder / "t2s.nii.gz", folder / "t2s_gmseg_manual.nii.gz")]
    return load_pool(cases, seed=0, derive=True)


def test_clips_cross_object_ends(data_root):
    pool = small_pool(data_root)
    settings = ClipSettings(frames=4, size=64, end_fraction=1.0)
    rng = np.random.default_rng(0)
    empty, total = 0, 0
    for _ in range(40):
        obj = pool.labelled[int(rng.integers(len(pool.labelled)))]
        clip = sample_clip(pool.volumes[obj.volume], obj, settings, rng)
        if clip is None:
            continue
        images, masks = clip
        assert images.shape == (4, 64, 64)
        assert float(images.min()) >= 0.0
        assert float(images.max()) <= 1.0
        assert masks[0].sum() > 0
        empty += int((masks[1:].sum(dim=(1, 2)) == 0).sum())
        total += 3
    assert total > 0
    assert empty / total > 0.1


def test_loss_falls_on_real_batch(data_root, tmp_path):
    torch.set_num_threads(1)
    pool = small_pool(data_root)
    settings = TrainSettings(output=tmp_path, batch_clips=2, learning_rate=2e-3, warmup_steps=1,
                             bf16=False, clip=ClipSettings(frames=3, size=64))
    trainer = Trainer(settings, pool, None)
    images, masks = ClipBatcher(pool, settings.clip, seed=1).batch(2, augmented=False)
    losses = [trainer.train_step(images, masks)["loss"] for _ in range(30)]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


def test_resume_and_export(data_root, tmp_path):
    from mem3d.checkpoints import load_model
    from mem3d.training.export import export_run

    torch.set_num_threads(1)
    pool = small_pool(data_root)
    settings = TrainSettings(output=tmp_path, max_steps=2, batch_clips=1, validate_every=2,
                             validation_clips=2, bf16=False, clip=ClipSettings(frames=3, size=64))
    trainer = Trainer(settings, pool, pool)
    summary = trainer.run()
    assert summary["steps"] == 2
    assert (tmp_path / "last.pt").exists()
    again = Trainer(TrainSettings(**{**settings.__dict__, "max_steps": 3}), pool, pool)
    again.resume(tmp_path / "last.pt")
    assert again.step == 2
    assert again.run()["steps"] == 3

    class Arguments:
        minutes, max_steps, batch, frames, seed = 1.0, 3, 1, 3, 0

    case = TrainingCase(Path("t2s.nii.gz"), Path("t2s_gmseg_manual.nii.gz"))
    export_run(again, Arguments, [case], [], tmp_path / "model.safetensors")
    loaded = load_model(tmp_path / "model.safetensors")
    assert loaded.report.layout == "mem3d-compact"
    assert loaded.metadata["training"]["steps"] == 3
    assert loaded.report.missing == []
