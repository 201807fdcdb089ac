"""`mem3d models list | info | download`: show, inspect and fetch models."""

from __future__ import annotations

import json

from . import registry
from .checkpoints import load_model
from .errors import Mem3DError


def register(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list, inspect and download models")
    actions = parser.add_subparsers(dest="models_action", metavar="ACTION")
    parser.set_defaults(func=lambda args: _print_help(parser))

    listing = actions.add_parser("list", help="list the registry models and their files")
    listing.set_defaults(func=run_list)

    info = actions.add_parser("info", help="load a model and report its layout and metadata")
    info.add_argument("model", metavar="FILE_OR_NAME", help="registry model name or file path")
    info.set_defaults(func=run_info)

    download = actions.add_parser("download", help="download a registry model into the cache")
    download.add_argument("name", metavar="NAME", help="registry model name, e.g. vmn-youtube-vos")
    download.add_argument("--quiet", action="store_true", help="hide the progress bar")
    download.set_defaults(func=run_download)

    speed = actions.add_parser("speed", help="measure slices per second of a model on this machine")
    speed.add_argument("model", metavar="FILE_OR_NAME", nargs="?", default=registry.DEFAULT_MODEL,
                       help="registry model name or file path (default: the embedded model)")
    speed.add_argument("--device", default="cpu", help="auto, cpu or cuda (default: cpu)")
    speed.add_argument("--threads", type=int, default=None,
                       help="torch CPU threads (default: torch's choice, one per core)")
    speed.add_argument("--float32", action="store_true", help="disable bfloat16/float16 autocast")
    speed.set_defaults(func=run_speed)


def _print_help(parser) -> int:
    parser.print_help()
    return 2


def run_list(args) -> int:
    print(f"cache folder: {registry.cache_dir()}")
    for entry in registry.list_models():
        default = " (default)" if entry.name == registry.DEFAULT_MODEL else ""
        if entry.available:
            state = _format_size(entry.size)
        else:
            state = "not downloaded" if entry.source.startswith("https://") else "missing"
        print(f"{entry.name}{default}: {state}")
        print(f"    {entry.description}")
        print(f"    source: {entry.source}")
        print(f"    file: {entry.path}")
    return 0


def run_info(args) -> int:
    path = registry.resolve_model(args.model)
    loaded = load_model(path)
    report = loaded.report
    print(f"file: {path}")
    print(f"layout: {report.layout}")
    print(f"wrapper: {report.wrapper}")
    print(f"parameters: {report.parameters:,}")
    print(f"tensors loaded: {report.loaded}")
    print(f"tensors missing: {len(report.missing)}")
    for name in report.missing:
        print(f"    {name}")
    print(f"tensors unexpected: {len(report.unexpected)}")
    for name in report.unexpected:
        print(f"    {name}")
    print("metadata:")
    print(json.dumps(loaded.metadata, indent=2, sort_keys=True))
    return 0


def run_download(args) -> int:
    path = registry.download_model(args.name, progress=not args.quiet)
    print(f"saved {args.name} to {path}")
    return 0


def _format_size(size: int | None) -> str:
    if size is None:
        return "unknown size"
    return f"{size / 2**20:.1f} MiB"


def run_speed(args) -> int:
    import torch

    from .api import load_runner
    from .runtime import ModelRunner, hardware_description
    from .speed import measure

    if args.threads is not None:
        if args.threads < 1:
            raise Mem3DError(f"--threads {args.threads}: give 1 or more threads")
        torch.set_num_threads(args.threads)
    runner = load_runner(args.model, args.device)
    if args.float32:
        runner = ModelRunner.create(runner.network, runner.device, precision="float32",
                                    prior_mode=runner.prior_mode)
    report = measure(runner)
    print(f"model: {args.model}; device {report.device}, {report.precision}; "
          f"{hardware_description()}")
    print(f"network at {report.input_size}x{report.input_size} with {report.memory_slices} "
          f"memory slices: {report.network_slices_per_second:.1f} slices/s")
    print(f"whole propagation loop (crop, resize, paste included) on a 200x256x256 volume: "
          f"{report.loop_slices_per_second:.1f} slices/s")
    return 0
