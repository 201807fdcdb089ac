"""Export a training run's best weights to the engine's model format with metadata."""

from __future__ import annotations

import datetime
from pathlib import Path

import torch

from .. import __version__
from ..checkpoints import save_model
from ..runtime import hardware_description
from .loop import Trainer


def export_run(trainer: Trainer, args, cases, validation, path: Path, use_best: bool = False) -> None:
    """Export the final weights, or with `use_best` those of the best validation Dice."""
    best_path = trainer.settings.output / "best.pt"
    network = trainer.network
    if use_best and best_path.exists():
        state = torch.load(best_path, map_location="cpu", weights_only=True)
        network.load_state_dict(state["network"])
    network = network.to("cpu").to(memory_format=torch.contiguous_format).eval()
    metadata = {
        "name": "mem3d-compact",
        "mem3d_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "normalisation": "crop-window",
        "input_size": network.config.input_size,
        "prior": "registration" if trainer.settings.warped_prior else "previous",
        "training": {
            "cases": [_case_text(c) for c in cases],
            "validation_cases": [_case_text(c) for c in validation or []],
            "steps": trainer.step,
            "minutes": round(trainer.elapsed / 60, 1),
            "hardware": hardware_description(),
            "batch_clips": trainer.settings.batch_clips,
            "frames_per_clip": trainer.settings.clip.frames,
            "seed": trainer.settings.seed,
            "command": "mem3d train " + " ".join(_argument_text(args)),
        },
        "weights": "best validation Dice" if use_best else "final",
        "validation": {"best": trainer.best, "final": _last_validation(trainer)},
    }
    save_model(network, path, metadata)


def _last_validation(trainer: Trainer) -> dict:
    records = [r for r in trainer.history if "val_dice" in r]
    return records[-1] if records else {}


def _case_text(case) -> str:
    labelmap = case.labelmap.name if case.labelmap else "-"
    return f"{case.image.name} | {labelmap}"


def _argument_text(args) -> list[str]:
    words = []
    for key in ("minutes", "max_steps", "batch", "frames", "seed"):
        words.append(f"--{key.replace('_', '-')} {getattr(args, key)}")
    return words
