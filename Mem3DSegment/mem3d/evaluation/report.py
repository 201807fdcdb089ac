"""Summaries, Markdown tables and PNG plots of benchmark results.

Every function reads the JSON-ready dict that `run_benchmark` returns, so a report can be
written again later from a saved `--json` file (`write_report(json.load(...), folder)`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

SPLIT_ORDER = ("held-out", "validation", "seen")
METHOD_ORDER = ("network", "registration", "registration-true-extent", "copy",
                "contour-interpolation")


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else None


def _order(method: str, strategy: str) -> tuple:
    rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return rank, method, strategy


def summarise(runs: list[dict]) -> list[dict]:
    """Aggregate run records per split ("all" included), method, strategy and round.

    HD95 is summarised by its median over the cases where it is defined; `hd95_undefined`
    counts the cases whose prediction was empty.
    """
    groups = defaultdict(list)
    for record in runs:
        for split in (record["split"], "all"):
            groups[(split, record["method"], record["strategy"], record["round"])].append(record)
    summary = []
    for (split, method, strategy, round_number), records in groups.items():
        summary.append({
            "split": split,
            "method": method,
            "strategy": strategy,
            "round": round_number,
            "cases": len(records),
            "dice_mean": _mean(r["dice"] for r in records),
            "mean_slice_dice_mean": _mean(r["mean_slice_dice"] for r in records),
            "hd95_median_mm": _median(r["hd95_mm"] for r in records),
            "hd95_undefined": sum(1 for r in records if r["hd95_mm"] is None),
            "seconds_mean": _mean(r["seconds"] for r in records),
            "slices_per_second_median": _median(r["slices_per_second"] for r in records),
            "peak_rss_mb_max": max((r["peak_rss_mb"] for r in records
                                    if r["peak_rss_mb"] is not None), default=None),
            "rss_increment_mb_max": max((r["rss_increment_mb"] for r in records
                                         if r["rss_increment_mb"] is not None), default=None),
        })
    split_rank = {name: index for index, name in enumerate(SPLIT_ORDER + ("all",))}
    summary.sort(key=lambda row: (split_rank.get(row["split"], 99),
                                  _order(row["method"], row["strategy"]), row["round"]))
    return summary


def _format(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _splits_present(summary: list[dict]) -> list[str]:
    present = {row["split"] for row in summary}
    return [split for split in SPLIT_ORDER + ("all",) if split in present]


def _rows_by_method(summary: list[dict], split: str) -> dict:
    """Return {(method, strategy): {round: summary row}} for one split, in display order."""
    rows = defaultdict(dict)
    for row in summary:
        if row["split"] == split:
            rows[(row["method"], row["strategy"])][row["round"]] = row
    return dict(sorted(rows.items(), key=lambda item: _order(*item[0])))


def dice_tables(summary: list[dict]) -> list[str]:
    """Return Markdown tables of mean 3D Dice per round, one table per split."""
    lines = []
    for split in _splits_present(summary):
        by_method = _rows_by_method(summary, split)
        rounds = sorted({r for rounds in by_method.values() for r in rounds})
        cases = max(row["cases"] for rounds in by_method.values() for row in rounds.values())
        lines += [f"### Mean 3D Dice, {split} cases ({cases})", ""]
        header = ["method", "strategy"] + [f"{r} key slice{'s' if r > 1 else ''}" for r in rounds]
        table = [[method, strategy] + [_format(by_round[r]["dice_mean"]) if r in by_round else "-"
                                       for r in rounds]
                 for (method, strategy), by_round in by_method.items()]
        lines += _markdown_table(header, table) + [""]
    return lines


def detail_table(summary: list[dict], split: str = "all") -> list[str]:
    """Return a Markdown table of every metric for each method's first and last round."""
    header = ["method", "strategy", "round", "cases", "Dice", "mean slice Dice",
              "HD95 median (mm)", "empty", "seconds", "slices/s (median)", "peak RSS (MiB)",
              "RSS increment (MiB)"]
    table = []
    for (method, strategy), by_round in _rows_by_method(summary, split).items():
        for round_number in sorted({min(by_round), max(by_round)}):
            row = by_round[round_number]
            table.append([method, strategy, str(round_number), str(row["cases"]),
                          _format(row["dice_mean"]), _format(row["mean_slice_dice_mean"]),
                          _format(row["hd95_median_mm"], 1), str(row["hd95_undefined"]),
                          _format(row["seconds_mean"], 2),
                          _format(row["slices_per_second_median"], 1),
                          _format(row["peak_rss_mb_max"], 0),
                          _format(row["rss_increment_mb_max"], 0)])
    return _markdown_table(header, table)


def case_table(results: dict) -> list[str]:
    """Return a Markdown table per case and method: Dice in the first and last round, HD95."""
    header = ["case", "split", "extent", "method", "strategy", "Dice first", "Dice last",
              "HD95 first (mm)", "key slices last"]
    first, last = {}, {}
    for record in results["runs"]:
        key = (record["case"], record["method"], record["strategy"])
        if key not in first or record["round"] < first[key]["round"]:
            first[key] = record
        if key not in last or record["round"] > last[key]["round"]:
            last[key] = record
    cases = {case["name"]: case for case in results["cases"]}
    table = []
    for case_name, method, strategy in sorted(first, key=lambda k: (k[0], _order(k[1], k[2]))):
        start, end = first[(case_name, method, strategy)], last[(case_name, method, strategy)]
        case = cases.get(case_name, {})
        extent = case.get("extent")
        table.append([case_name, start["split"], f"{extent[0]}-{extent[1]}" if extent else "?",
                      method, strategy, _format(start["dice"]), _format(end["dice"]),
                      _format(start["hd95_mm"], 1), str(len(end["key_slices"]))])
    return _markdown_table(header, table)


def summary_text(summary: list[dict]) -> str:
    """Return a short plain-text table: per split, method and strategy, Dice first and last."""
    lines = []
    for split in _splits_present(summary):
        if split == "all":
            continue
        lines.append(f"{split} cases:")
        lines.append(f"  {'method':<26}{'strategy':<10}{'Dice first':>11}{'Dice last':>11}"
                     f"{'rounds':>8}{'slices/s':>10}")
        for (method, strategy), by_round in _rows_by_method(summary, split).items():
            start, end = by_round[min(by_round)], by_round[max(by_round)]
            lines.append(f"  {method:<26}{strategy:<10}{_format(start['dice_mean']):>11}"
                         f"{_format(end['dice_mean']):>11}{f'{min(by_round)}-{max(by_round)}':>8}"
                         f"{_format(start['slices_per_second_median'], 1):>10}")
    return "\n".join(lines)


def scaling_table(records: list[dict]) -> list[str]:
    header = ["size (x y z)", "method", "slices computed", "seconds", "volume (MiB)",
              "RSS before (MiB)", "peak RSS (MiB)", "increment (MiB)"]
    table = [["x".join(map(str, r["shape"])), r["method"], str(r["slices_computed"]),
              _format(r["seconds"], 2), _format(r["volume_mb"], 0), _format(r["rss_before_mb"], 0),
              _format(r["peak_rss_mb"], 0), _format(r["increment_mb"], 0)] for r in records]
    return _markdown_table(header, table)


# --- plots -------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_dice_vs_key_slices(summary: list[dict], path: Path) -> None:
    """Mean 3D Dice against the number of key slices, one panel per split."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    splits = [s for s in _splits_present(summary) if s != "all"] or ["all"]
    figure, axes = plt.subplots(1, len(splits), figsize=(4.5 * len(splits) + 2.5, 4.2),
                                squeeze=False)
    for axis, split in zip(axes[0], splits):
        for (method, strategy), by_round in _rows_by_method(summary, split).items():
            rounds = sorted(by_round)
            values = [by_round[r]["dice_mean"] for r in rounds]
            style = "-o" if strategy == "oracle" else "--s"
            axis.plot(rounds, values, style, label=f"{method} ({strategy})", markersize=4)
        axis.set_title(f"{split} cases")
        axis.set_xlabel("key slices")
        axis.set_ylabel("mean 3D Dice")
        axis.set_ylim(0, 1)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, fontsize=7, loc="center right")
    figure.tight_layout(rect=(0, 0, 1 - 2.3 / figure.get_figwidth(), 1))
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_slice_dice_vs_distance(runs: list[dict], path: Path) -> None:
    """Mean per-slice Dice against the distance to the nearest key slice, round 1 (one key).

    Contour interpolation starts at round 2, so its curve is from two key slices.
    """
    plt = _pyplot()
    pooled = defaultdict(lambda: defaultdict(list))
    for record in runs:
        if record["strategy"] != "oracle":
            continue
        first_round = 2 if record["method"] == "contour-interpolation" else 1
        if record["round"] != first_round:
            continue
        for distance, value in zip(record["slices"]["distance_to_key"], record["slices"]["dice"]):
            pooled[record["method"]][distance].append(value)
    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    for method in sorted(pooled, key=lambda m: _order(m, "")):
        distances = sorted(pooled[method])
        label = f"{method} (2 key slices)" if method == "contour-interpolation" else method
        axis.plot(distances, [np.mean(pooled[method][d]) for d in distances], "-o",
                  markersize=3, label=label)
    axis.set_xlabel("distance to the nearest key slice (slices)")
    axis.set_ylabel("mean per-slice Dice (all cases)")
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_scaling(records: list[dict], path: Path) -> None:
    """Seconds and peak-memory increment per volume size, sizes in order of voxel count."""
    plt = _pyplot()
    sizes = sorted({(r["voxels"], "x".join(map(str, r["shape"]))) for r in records})
    position = {name: index for index, (_, name) in enumerate(sizes)}
    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(11, 4.4))
    for method in sorted({r["method"] for r in records}):
        rows = [r for r in records if r["method"] == method]
        rows.sort(key=lambda r: r["voxels"])
        x = [position["x".join(map(str, r["shape"]))] for r in rows]
        time_axis.plot(x, [r["seconds"] for r in rows], "-o", label=method)
        memory_axis.plot(x, [r["increment_mb"] for r in rows], "-o", label=method)
    volume = {"x".join(map(str, r["shape"])): r["volume_mb"] for r in records}
    memory_axis.plot(range(len(sizes)), [volume[name] for _, name in sizes], ":", color="grey",
                     label="image + annotation arrays")
    for axis in (time_axis, memory_axis):
        axis.set_xticks(range(len(sizes)))
        axis.set_xticklabels([name for _, name in sizes], rotation=30, ha="right", fontsize=8)
        axis.set_xlabel("volume size (x y z)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    time_axis.set_ylabel("seconds")
    memory_axis.set_ylabel("peak RSS increment (MiB)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(results: dict, folder: Path) -> list[Path]:
    """Write report.md and the PNG plots into `folder`; return the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    summary = results.get("summary") or summarise(results["runs"])
    written = []
    plots = []
    if results["runs"]:
        plot_dice_vs_key_slices(summary, folder / "dice_vs_key_slices.png")
        plot_slice_dice_vs_distance(results["runs"], folder / "slice_dice_vs_distance.png")
        plots += ["dice_vs_key_slices.png", "slice_dice_vs_distance.png"]
    if results.get("scaling"):
        plot_scaling(results["scaling"], folder / "scaling.png")
        plots.append("scaling.png")
    written += [folder / name for name in plots]

    settings = results["settings"]
    model = results.get("model") or {}
    lines = ["# Mem3D benchmark report", "",
             f"Created {results['created']}; {results['environment']['platform']}, "
             f"{results['environment']['cpu_count']} CPUs, torch {results['environment']['torch']} "
             f"with {results['environment']['torch_threads']} threads.", "",
             f"Cases: `{settings['cases_csv']}`; axis {settings['axis']}; up to "
             f"{settings['rounds']} rounds; methods: {', '.join(settings['methods'])}.", ""]
    if model:
        lines += [f"Model: `{model['path']}` on {model['device']} "
                  f"(autocast {model['autocast'] or 'off'}).", ""]
    lines += ["## Summary", ""] + dice_tables(summary)
    lines += ["### All metrics, first and last round, all cases", ""] + detail_table(summary) + [""]
    lines += ["## Per case", ""] + case_table(results) + [""]
    skipped = [case for case in results["cases"] if case["status"] == "skipped"]
    if skipped:
        lines += ["Skipped cases:", ""] + [f"- {c['name']}: {c['reason']}" for c in skipped] + [""]
    if results.get("scaling"):
        lines += ["## Scaling", ""] + scaling_table(results["scaling"]) + [""]
    if plots:
        lines += ["## Plots", ""] + [f"![{name}]({name})" for name in plots] + [""]
    report = folder / "report.md"
    report.write_text("\n".join(lines))
    return [report] + written
