"""Run the whole benchmark: cases, methods and rounds, then the scaling runs; return one dict.

The dict is what `mem3d benchmark --json` writes: settings, environment, model, one entry per
case (skipped cases with their reason), one record per (case, method, strategy, round), the
summary per split, and the scaling records. Non-finite numbers are stored as null.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .cases import load_case, read_cases
from .protocol import build_methods, run_case, warm_up
from .report import summarise

FORMAT_VERSION = 1


@dataclass
class BenchmarkConfig:
    cases_csv: Path
    data_root: Path
    training_list: Path
    validation_list: Path | None
    methods: list[str]
    rounds: int = 6
    axis: str = "axial"
    model: str | None = None  # registry name or file; None for the registry default
    device: str = "auto"
    threads: int | None = None  # CPU threads for torch and SimpleITK; None keeps their defaults
    max_cases: int | None = None  # run only the first cases of the list
    scaling_shapes: list[str] = field(default_factory=list)
    scaling_methods: list[str] = field(default_factory=list)


def limit_threads(threads: int) -> None:
    """Limit torch and SimpleITK (and ITK, where not yet loaded) to `threads` CPU threads."""
    import SimpleITK as sitk
    import torch

    torch.set_num_threads(threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)


def environment() -> dict:
    import numpy
    import SimpleITK as sitk
    import torch

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": numpy.__version__,
        "simpleitk": sitk.Version_VersionString(),
    }


def _load_model(config: BenchmarkConfig) -> tuple[object, dict]:
    from ..api import load_runner
    from ..registry import DEFAULT_MODEL, resolve_model

    started = time.perf_counter()
    path = resolve_model(config.model or DEFAULT_MODEL)
    runner = load_runner(str(path), config.device)
    info = {
        "model": str(config.model or DEFAULT_MODEL),
        "path": str(path),
        "device": str(runner.device),
        "autocast": None if runner.autocast_dtype is None else str(runner.autocast_dtype),
        "load_seconds": time.perf_counter() - started,
    }
    return runner, info


def run_benchmark(config: BenchmarkConfig, log_line: Callable[[str], None] = print) -> dict:
    """Run the benchmark described by `config`; `log_line` receives one progress line per step."""
    if config.threads:
        limit_threads(config.threads)
    cases = read_cases(config.cases_csv, config.data_root, config.training_list,
                       config.validation_list)
    if config.max_cases:
        cases = cases[: config.max_cases]
    runner, model_info = (None, None)
    if "network" in config.methods:
        runner, model_info = _load_model(config)
        log_line(f"model {model_info['path']} loaded in {model_info['load_seconds']:.1f} s "
                 f"on {model_info['device']}")
    methods = []
    for method in build_methods(config.methods, runner):
        if method.first_round > config.rounds:
            log_line(f"{method.name}: skipped, it reports from round {method.first_round} "
                     f"and the benchmark runs {config.rounds} round(s)")
            continue
        methods.append(method)
    warm_up(methods)

    started = time.perf_counter()
    results = {
        "format_version": FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": {key: _plain(value) for key, value in asdict(config).items()},
        "environment": environment(),
        "model": model_info,
        "cases": [],
        "runs": [],
        "scaling": [],
    }
    for case in cases:
        case_started = time.perf_counter()
        loaded = load_case(case, config.axis)
        entry = {"name": case.name, "split": case.split, "image": str(case.image),
                 "labelmap": str(case.labelmap), "label": case.label}
        if isinstance(loaded, str):
            entry.update(status="skipped", reason=loaded)
            results["cases"].append(entry)
            log_line(f"{case.name}: skipped, {loaded}")
            continue
        entry.update(status="ok", axis=loaded.axis, shape=list(loaded.image.shape),
                     spacing=list(loaded.spacing), extent=list(loaded.extent),
                     middle_slice=loaded.middle)
        records = list(run_case(loaded, methods, config.rounds))
        entry["seconds"] = time.perf_counter() - case_started
        results["cases"].append(entry)
        results["runs"].extend(records)
        log_line(_case_line(case.name, case.split, records, entry["seconds"]))

    if config.scaling_shapes:
        from .scaling import run_scaling

        results["scaling"] = run_scaling(config.scaling_shapes, config.scaling_methods,
                                         config.model, config.device, config.threads, log_line)
    results["summary"] = summarise(results["runs"])
    results["seconds"] = time.perf_counter() - started
    return results


def _case_line(name: str, split: str, records: list[dict], seconds: float) -> str:
    first_round = {}
    for record in records:
        if record["strategy"] == "oracle" and record["method"] not in first_round:
            first_round[record["method"]] = record
    scores = ", ".join(f"{method} {record['dice']:.2f}" for method, record in first_round.items())
    return f"{name} ({split}, {seconds:.1f} s): first reported round Dice: {scores}"


def _plain(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def write_json(results: dict, path: Path) -> None:
    """Write the results as JSON through a temporary file, so a failed write leaves no file."""
    temporary = path.with_name(f".{path.name}.partial")
    with open(temporary, "w") as handle:
        json.dump(results, handle, indent=1, allow_nan=False)
        handle.write("\n")
    os.replace(temporary, path)
