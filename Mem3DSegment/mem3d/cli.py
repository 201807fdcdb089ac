"""`mem3d` command line: propagate, models, demo, benchmark, train.

Each subcommand lives in its own `commands_*.py` module with a `register(subparsers)` function
that adds its parser and sets `func`. User errors (`Mem3DError`) and a MemoryError end as one
line on stderr and exit code 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__
from .errors import CancelledError, Mem3DError

COMMAND_MODULES = (
    "commands_propagate",
    "commands_models",
    "commands_demo",
    "commands_benchmark",
    "commands_train",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mem3d",
        description="Propagate a mask drawn on a few slices through a 3D image.",
    )
    parser.add_argument("--version", action="version", version=f"mem3d {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"{__package__}.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except CancelledError as error:
        print(f"mem3d: cancelled: {error}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("mem3d: interrupted; no output was written", file=sys.stderr)
        return 130
    except Mem3DError as error:
        if args.debug:
            raise
        print(f"mem3d: error: {error}", file=sys.stderr)
        return 2
    except MemoryError:
        if args.debug:
            raise
        print("mem3d: error: out of memory; no output was written. Free memory, or crop the image "
              "to the region around the structure", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
