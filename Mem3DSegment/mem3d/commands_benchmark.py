"""`mem3d benchmark`: compare the network with registration and simple baselines on real cases."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .commands_train import default_data_root
from .errors import Mem3DError

ALL_METHODS = ("network", "registration", "registration-true-extent", "copy",
               "contour-interpolation")
# --quick runs round 1 on the first cases of the list (the default list starts with the
# held-out cases) and skips the scaling runs unless --scaling is given.
QUICK_CASES = 3


def _packaged_list(name: str) -> Path:
    from .evaluation.cases import packaged_list

    return packaged_list(name)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "benchmark", help="measure Dice, HD95, speed and memory against reference masks",
        description="Propagate from the middle slice of each reference mask, then add one key "
                    "slice per round (chosen by the lowest true Dice and by the lowest quality "
                    "estimate), and compare the network with registration, copying the nearest "
                    "key slice and contour interpolation.",
    )
    parser.add_argument("--cases", type=Path, default=None,
                        help="CSV case list with the columns image,labelmap,label,name "
                             "(default: the list shipped in mem3d/data/benchmark_cases.csv)")
    parser.add_argument("--data-root", type=Path, default=default_data_root(),
                        help="folder that relative paths in the lists start from "
                             "(default: $MEM3D_DATA_ROOT or ../shared/data)")
    parser.add_argument("--training-cases", type=Path, default=None,
                        help="the model's training list, to tell held-out cases from seen ones "
                             "(default: mem3d/data/training_cases.csv)")
    parser.add_argument("--validation-cases", type=Path, default=None,
                        help="the model's validation list (default: "
                             "mem3d/data/validation_cases.csv)")

    parser.add_argument("--model", default=None,
                        help="registry model name or checkpoint file for the network method "
                             "(default: the registry's default model)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch and SimpleITK (default: their own defaults)")

    parser.add_argument("--methods", default=",".join(ALL_METHODS),
                        help=f"comma-separated subset of {','.join(ALL_METHODS)} (default: all)")
    parser.add_argument("--axis", default="axial",
                        help="propagation axis: axial, coronal or sagittal (from each image's "
                             "orientation) or array axis 0 (k), 1 (j), 2 (i); default axial")
    parser.add_argument("--rounds", type=int, default=6,
                        help="rounds of key slices: round 1 has one, each later round adds one "
                             "(default 6)")
    parser.add_argument("--quick", action="store_true",
                        help=f"round 1 only, the first {QUICK_CASES} cases, no scaling runs "
                             "unless --scaling is given")

    parser.add_argument("--scaling", default=None,
                        help="comma-separated synthetic volume sizes XxYxZ for the time and "
                             "memory runs (default: 128x128x64,256x256x64,256x256x128,256x256x256)")
    parser.add_argument("--scaling-large", action="store_true",
                        help="add the sizes 512x512x128, 512x512x256 and 512x512x512 (a few "
                             "minutes on a small CPU)")
    parser.add_argument("--no-scaling", action="store_true", help="skip the scaling runs")

    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    parser.add_argument("--report", type=Path,
                        help="write report.md and PNG plots into this folder (created if absent)")
    parser.set_defaults(func=run)


def _methods(text: str) -> list[str]:
    methods = [name.strip() for name in text.split(",") if name.strip()]
    if not methods:
        raise Mem3DError(f"--methods is empty; choose from {','.join(ALL_METHODS)}")
    unknown = [name for name in methods if name not in ALL_METHODS]
    if unknown:
        raise Mem3DError(f"--methods {text!r}: unknown method {', '.join(unknown)}; "
                         f"choose from {','.join(ALL_METHODS)}")
    return methods


def scaling_shapes(args: argparse.Namespace) -> list[str]:
    from .evaluation.scaling import DEFAULT_SHAPES, LARGE_SHAPES, parse_shape

    if args.no_scaling:
        return []
    if args.scaling is not None:
        shapes = [text.strip() for text in args.scaling.split(",") if text.strip()]
    elif args.quick:
        shapes = []
    else:
        shapes = list(DEFAULT_SHAPES)
    if args.scaling_large:
        shapes += [shape for shape in LARGE_SHAPES if shape not in shapes]
    for shape in shapes:
        parse_shape(shape)
    return shapes


def build_config(args: argparse.Namespace):
    from .evaluation.benchmark import BenchmarkConfig
    from .evaluation.scaling import SCALING_METHODS

    if args.rounds < 1:
        raise Mem3DError(f"--rounds must be at least 1, not {args.rounds}")
    if args.threads is not None and args.threads < 1:
        raise Mem3DError(f"--threads must be at least 1, not {args.threads}")
    for output in (args.json, args.report):
        if output is not None and not (output.parent if str(output.parent) else Path(".")).is_dir():
            raise Mem3DError(f"the folder of {output} does not exist; create it first")
    methods = _methods(args.methods)
    return BenchmarkConfig(
        cases_csv=args.cases or _packaged_list("benchmark_cases.csv"),
        data_root=args.data_root,
        training_list=args.training_cases or _packaged_list("training_cases.csv"),
        validation_list=args.validation_cases or _packaged_list("validation_cases.csv"),
        methods=methods,
        rounds=1 if args.quick else args.rounds,
        axis=args.axis,
        model=args.model,
        device=args.device,
        threads=args.threads,
        max_cases=QUICK_CASES if args.quick else None,
        scaling_shapes=scaling_shapes(args),
        scaling_methods=[m for m in SCALING_METHODS if any(n.startswith(m) for n in methods)],
    )


def run(args: argparse.Namespace) -> int:
    from .evaluation.benchmark import run_benchmark, write_json
    from .evaluation.report import summary_text, write_report

    config = build_config(args)
    results = run_benchmark(config, log_line=lambda line: print(line, file=sys.stderr))
    if args.json:
        write_json(results, args.json)
    if args.report:
        write_report(results, args.report)
    print(summary_text(results["summary"]))
    # NOTE: one of two full runs on 2026-12-04 aborted with "malloc_consolidate(): unaligned
    # fastbin chunk detected" after this line, while the interpreter shut down (torch, ITK and
    # SimpleITK are loaded together); the outputs were already complete. Not reproduced since.
    print(f"benchmark finished in {results['seconds']:.0f} s"
          + (f"; results in {args.json}" if args.json else "")
          + (f"; report in {args.report}" if args.report else ""))
    return 0
