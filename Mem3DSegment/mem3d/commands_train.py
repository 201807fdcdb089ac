"""`mem3d train`: train the compact STM and export it in the engine's model format."""

from __future__ import annotations

import argparse
import logging
import os
import signal
from importlib import resources
from pathlib import Path

from .errors import Mem3DError

log = logging.getLogger(__name__)


def default_data_root() -> Path:
    return Path(os.environ.get("MEM3D_DATA_ROOT", "../shared/data"))


def _packaged_list(name: str) -> Path:
    return Path(str(resources.files(__package__) / "data" / name))


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train the compact model on image and labelmap files",
        description="Train the compact STM model from scratch or resume a run, then export it.",
    )
    parser.add_argument("--cases", type=Path, default=_packaged_list("training_cases.csv"),
                        help="CSV list (image,labelmap[,threshold]) or a folder of images "
                             "(default: the list the shipped model was trained on)")
    parser.add_argument("--validation", type=Path, default=_packaged_list("validation_cases.csv"),
                        help="CSV list of validation cases, kept out of training")
    parser.add_argument("--data-root", type=Path, default=default_data_root(),
                        help="folder that relative paths in the lists start from "
                             "(default: $MEM3D_DATA_ROOT or ../shared/data)")
    parser.add_argument("--output", "-o", type=Path, required=True,
                        help="run folder for checkpoints and the log")
    parser.add_argument("--minutes", type=float, default=120.0, help="time budget in minutes")
    parser.add_argument("--max-steps", type=int, default=100_000, help="optimiser steps at most")
    parser.add_argument("--batch", type=int, default=6, help="clips per step")
    parser.add_argument("--frames", type=int, default=5, help="slices per clip, key slice included")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--no-bf16", action="store_true", help="train in float32 on the CPU")
    parser.add_argument("--unwarped-prior", action="store_true",
                        help="give the network the previous mask as it is, not warped by demons")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT/last.pt")
    parser.add_argument("--export", type=Path,
                        help="write the final weights to this .safetensors file when done")
    parser.add_argument("--export-best", action="store_true",
                        help="export the weights with the best validation Dice instead")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .training.cases import load_cases
    from .training.runner import build_trainer

    cases = load_cases(args.cases, args.data_root)
    validation = load_cases(args.validation, args.data_root) if args.validation else None
    overlap = {c.image for c in cases} & {c.image for c in validation or []}
    if overlap:
        raise Mem3DError(f"validation image {sorted(overlap)[0]} is also a training image")
    args.output.mkdir(parents=True, exist_ok=True)
    trainer = build_trainer(args, cases, validation)
    if args.resume:
        checkpoint = args.output / "last.pt"
        if not checkpoint.exists():
            raise Mem3DError(f"nothing to resume: {checkpoint} not found")
        trainer.resume(checkpoint)
    stop = _stop_on_signal()
    logging.getLogger("mem3d").setLevel(logging.INFO)
    summary = trainer.run(stop_requested=lambda: stop["requested"])
    print(f"trained {summary['steps']} steps in {summary['seconds'] / 60:.1f} min; "
          f"best validation Dice {summary.get('val_dice', float('nan')):.3f} "
          f"at step {summary['step']}")
    if args.export:
        from .training.export import export_run

        export_run(trainer, args, cases, validation, args.export,
                   use_best=args.export_best)
        print(f"exported {args.export}")
    return 0


def _stop_on_signal() -> dict:
    """Let SIGTERM finish the current step and save a checkpoint instead of killing the run."""
    state = {"requested": False}

    def request_stop(signum, frame):
        state["requested"] = True

    signal.signal(signal.SIGTERM, request_stop)
    return state
