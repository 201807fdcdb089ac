"""Build a trainer from command-line arguments."""

from __future__ import annotations

import logging

import torch

from ..errors import Mem3DError
from .clips import ClipSettings
from .data import load_pool
from .loop import Trainer, TrainSettings

log = logging.getLogger(__name__)


def choose_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise Mem3DError("--device cuda: no CUDA GPU is available to torch; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise Mem3DError(f"--device {name!r} is not one of auto, cpu, cuda")
    return name


def build_trainer(args, cases, validation_cases) -> Trainer:
    settings = TrainSettings(
        output=args.output,
        max_steps=args.max_steps,
        time_budget_s=args.minutes * 60,
        batch_clips=args.batch,
        seed=args.seed,
        bf16=not args.no_bf16,
        warped_prior=not args.unwarped_prior,
        clip=ClipSettings(frames=args.frames),
    )
    pool = load_pool(cases, seed=args.seed)
    log.info("training pool: %s", pool.describe())
    validation = load_pool(validation_cases, seed=args.seed + 1) if validation_cases else None
    return Trainer(settings, pool, validation, device=choose_device(args.device))
