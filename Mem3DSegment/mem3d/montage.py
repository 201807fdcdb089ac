"""PNG montage: image slices with the reference contour (dashed) and the result (solid)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def pick_slices(reference: np.ndarray, result: np.ndarray, count: int, axis: int = 0,
                include=()) -> list[int]:
    """Evenly spaced slices across the extent that the reference or the result covers.

    Slices in `include` (such as key slices) replace the nearest evenly spaced ones.
    """
    other = tuple(a for a in range(3) if a != axis)
    present = np.flatnonzero((reference != 0).any(axis=other) | (result != 0).any(axis=other))
    if present.size == 0:
        return []
    chosen = [int(round(s)) for s in np.linspace(present[0], present[-1], num=min(count, present.size))]
    for index in include:
        nearest = int(np.argmin([abs(c - index) for c in chosen]))
        chosen[nearest] = int(index)
    return sorted(set(chosen))


def save_montage(image: np.ndarray, reference: np.ndarray, result: np.ndarray, segments,
                 path: Path, count: int = 8, axis: int = 0, quality=None,
                 title: str = "reference: dashed, result: solid", include=()) -> None:
    """Save slices along `axis` with every segment's reference and result contours.

    `quality`, when given, maps a label to per-slice quality; each panel's title shows the
    lowest value on that slice.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slices = pick_slices(reference, result, count, axis, include)
    columns = min(4, max(len(slices), 1))
    rows = max(1, int(np.ceil(len(slices) / columns)))
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False)
    low, high = np.percentile(image, (1, 99))
    for panel, index in zip(axes.flat, slices):
        take = [slice(None)] * 3
        take[axis] = index
        panel.imshow(image[tuple(take)], cmap="gray", vmin=low, vmax=high)
        for segment in segments:
            colour = segment.color
            _contour(panel, reference[tuple(take)] == segment.label_value, colour, "dashed")
            _contour(panel, result[tuple(take)] == segment.label_value, colour, "solid")
        panel.set_title(_panel_title(index, quality), fontsize=9)
    for panel in axes.flat:
        panel.axis("off")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _contour(panel, mask: np.ndarray, colour, style: str) -> None:
    if mask.any() and not mask.all():
        panel.contour(mask.astype(float), levels=[0.5], colors=[colour], linestyles=style,
                      linewidths=1.2)


def _panel_title(index: int, quality) -> str:
    if not quality:
        return f"slice {index}"
    values = [q[index] for q in quality.values() if not np.isnan(q[index])]
    if not values:
        return f"slice {index}"
    return f"slice {index}, quality {min(values):.2f}"
