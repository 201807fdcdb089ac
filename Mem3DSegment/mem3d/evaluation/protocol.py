"""The benchmark protocol: key slices by rounds, the methods, and one record per prediction.

Round 1 gives each method one key slice, the middle slice of the reference's extent along the
axis, annotated with the reference mask. Each later round adds one key slice, annotated from the
reference, chosen in one of two ways (strategies):

- "oracle": the slice with the lowest true Dice of the previous round's prediction, among the
  slices where the reference or the prediction is not empty;
- "quality": the slice with the lowest quality estimate of the previous round, the slice a user
  would be sent to ("go to least certain slice").

Ties go to the slice farthest from the nearest key slice, then to the lower index. A new key
slice outside the reference's extent carries an empty mask, so the network and the registration
method treat the object as ended there. The network and the registration methods
keep one `PropagationSession` through the rounds, so each later round recomputes only the slices
next to the new key slice, as the Slicer effect does after a correction; its seconds and peak
memory are those of that update.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..propagation import PropagationSession
from .baselines import contour_interpolation, copy_nearest_key_slice, registration_session
from .cases import LoadedCase
from .measure import measure
from .metrics import dice, extent, hausdorff_95, mean_slice_dice, slice_dice

log = logging.getLogger(__name__)

METHODS = ("network", "registration", "registration-true-extent", "copy", "contour-interpolation")
STRATEGIES = ("oracle", "quality")


@dataclass
class Prediction:
    mask: np.ndarray  # (k, j, i) bool
    quality: np.ndarray | None  # per slice along the axis, NaN where not computed; None if none
    slices_computed: int


class SessionMethod:
    """The network or the registration method, through a session kept across rounds."""

    strategies = STRATEGIES
    first_round = 1

    def __init__(self, name: str, open_session: Callable[[LoadedCase], PropagationSession]):
        self.name = name
        self._open_session = open_session
        self._session: PropagationSession | None = None

    def start(self, case: LoadedCase) -> None:
        self._session = self._open_session(case)

    def predict(self, case: LoadedCase, keys: list[int]) -> Prediction:
        session = self._session
        session.key_slices = list(keys)
        session.set_annotation(key_annotation(case, keys))
        for _ in session.run():
            pass
        result = session.result
        return Prediction(result.labels == 1, result.quality.get(1), result.slices_computed)


class CopyMethod:
    """Copy the nearest key slice's mask onto every slice of the true extent."""

    name = "copy"
    strategies = ("oracle",)
    first_round = 1

    def start(self, case: LoadedCase) -> None:
        pass

    def predict(self, case: LoadedCase, keys: list[int]) -> Prediction:
        mask = copy_nearest_key_slice(case.reference, case.axis, keys, case.extent)
        computed = case.extent[1] - case.extent[0] + 1 - sum(
            1 for key in set(keys) if case.extent[0] <= key <= case.extent[1])
        return Prediction(mask, None, computed)


class ContourInterpolationMethod:
    """ITK morphological contour interpolation between key slices, reported from round 2.

    Round 1 has a single key slice, which contour interpolation cannot use: its prediction is
    the key slice alone, used only to choose the second key slice and not reported.
    """

    name = "contour-interpolation"
    strategies = ("oracle",)
    first_round = 2

    def start(self, case: LoadedCase) -> None:
        pass

    def predict(self, case: LoadedCase, keys: list[int]) -> Prediction:
        reference_ax = np.moveaxis(case.reference, case.axis, 0)
        drawn = sorted(key for key in keys if reference_ax[key].any())
        if len(drawn) < 2:
            mask = np.zeros_like(case.reference)
            for key in keys:
                np.moveaxis(mask, case.axis, 0)[key] = reference_ax[key]
            return Prediction(mask, None, 0)
        mask = contour_interpolation(case.reference, case.axis, keys, case.spacing)
        computed = drawn[-1] - drawn[0] + 1 - len(drawn)
        return Prediction(mask, None, computed)


def key_annotation(case: LoadedCase, keys: list[int]) -> np.ndarray:
    """Return a uint8 labelmap that holds the reference mask (label 1) on the key slices only."""
    annotation = np.zeros(case.reference.shape, dtype=np.uint8)
    annotation_ax = np.moveaxis(annotation, case.axis, 0)
    reference_ax = np.moveaxis(case.reference, case.axis, 0)
    for key in keys:
        annotation_ax[key] = reference_ax[key]
    return annotation


def build_methods(names: list[str], runner=None) -> list:
    """Create the methods to benchmark; "network" needs a loaded `ModelRunner`."""
    methods = []
    for name in names:
        if name == "network":
            if runner is None:
                raise ValueError("the network method needs a model runner")
            methods.append(SessionMethod(name, lambda case: _network_session(case, runner)))
        elif name == "registration":
            methods.append(SessionMethod(name, lambda case: registration_session(
                case.image, case.spacing, case.axis, true_extent=None)))
        elif name == "registration-true-extent":
            methods.append(SessionMethod(name, lambda case: registration_session(
                case.image, case.spacing, case.axis, true_extent=case.extent)))
        elif name == "copy":
            methods.append(CopyMethod())
        elif name == "contour-interpolation":
            methods.append(ContourInterpolationMethod())
        else:
            raise ValueError(f"unknown benchmark method {name!r}; choose from {', '.join(METHODS)}")
    return methods


def _network_session(case: LoadedCase, runner) -> PropagationSession:
    return PropagationSession(
        runner=runner,
        image=case.image,
        annotation=np.zeros(case.image.shape, dtype=np.uint8),
        spacing=case.spacing,
        axis=case.axis,
        key_slices=[],
        method="network",
    )


def warm_up(methods: list) -> None:
    """Run every method once on a tiny synthetic case before anything is measured.

    The first call of a method pays one-off costs that are not part of propagating: importing
    ITK's Python modules takes seconds, and torch sets up its kernels on the first forward pass.
    """
    from .cases import BenchmarkCase

    grid = np.mgrid[0:9, 0:32, 0:32].astype(np.float32)
    radius = np.sqrt(((grid[0] - 4) / 4.0) ** 2 + ((grid[1] - 16) / 8.0) ** 2
                     + ((grid[2] - 16) / 8.0) ** 2)
    reference = radius <= 1.0
    image = (100.0 + 200.0 * reference).astype(np.float32)
    case = LoadedCase(BenchmarkCase("warm-up", Path("warm-up"), Path("warm-up"), 1, "held-out"),
                      image, reference, (1.0, 1.0, 1.0), 0, extent(reference, 0))
    for method in methods:
        method.start(case)
        keys = [case.middle]
        for _ in range(method.first_round):
            method.predict(case, keys)
            keys = keys + [case.extent[0]]


def distance_to_keys(index: int, keys: list[int]) -> int:
    return min(abs(index - key) for key in keys)


def next_key_slice(strategy: str, per_slice_dice: dict[int, float], quality: np.ndarray | None,
                   keys: list[int]) -> int | None:
    """Return the next key slice for a strategy, or None when no slice is left to choose."""
    if strategy == "oracle":
        scores = per_slice_dice
    elif strategy == "quality":
        if quality is None:
            raise ValueError("the quality strategy needs a quality estimate per slice")
        scores = {index: float(value) for index, value in enumerate(quality) if np.isfinite(value)}
    else:
        raise ValueError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    candidates = [index for index in scores if index not in keys]
    if not candidates:
        return None
    return min(candidates, key=lambda i: (scores[i], -distance_to_keys(i, keys), i))


def run_case(case: LoadedCase, methods: list, rounds: int) -> Iterator[dict]:
    """Run every method and strategy on one case; yield one record per reported round."""
    for method in methods:
        for strategy in method.strategies:
            yield from _run_rounds(case, method, strategy, rounds)


def _run_rounds(case: LoadedCase, method, strategy: str, rounds: int) -> Iterator[dict]:
    method.start(case)
    keys = [case.middle]
    new_key = True
    for round_number in range(1, rounds + 1):
        with measure() as measurement:
            prediction = method.predict(case, keys)
        per_slice = slice_dice(case.reference, prediction.mask, case.axis)
        if round_number >= method.first_round:
            yield _record(case, method.name, strategy, round_number, keys, new_key, prediction,
                          per_slice, measurement)
        if round_number == rounds:
            break
        chosen = next_key_slice(strategy, per_slice, prediction.quality, keys)
        new_key = chosen is not None
        if new_key:
            keys = keys + [chosen]
        else:
            log.info("%s %s %s: no slice left for round %d; keeping the key slices",
                     case.case.name, method.name, strategy, round_number + 1)


def _finite_or_none(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _increment(measurement) -> float | None:
    """Return peak minus starting RSS: the memory the step added to what the process held."""
    if measurement.peak_rss_mb is None or measurement.rss_before_mb is None:
        return None
    return measurement.peak_rss_mb - measurement.rss_before_mb


def _record(case: LoadedCase, method: str, strategy: str, round_number: int, keys: list[int],
            new_key: bool, prediction: Prediction, per_slice: dict[int, float],
            measurement) -> dict:
    """Return one JSON-ready record; HD95 is None (JSON null) when the prediction is empty."""
    hd95 = hausdorff_95(case.reference, prediction.mask, case.spacing)
    seconds = measurement.seconds
    computed = prediction.slices_computed
    slice_indices = sorted(per_slice)
    quality = prediction.quality
    predicted_extent = extent(prediction.mask, case.axis)
    return {
        "case": case.case.name,
        "split": case.case.split,
        "method": method,
        "strategy": strategy,
        "round": round_number,
        "key_slices": [int(k) for k in keys],
        "new_key": new_key,
        "dice": dice(case.reference, prediction.mask),
        "mean_slice_dice": _finite_or_none(mean_slice_dice(per_slice)),
        "hd95_mm": _finite_or_none(hd95),
        "prediction_empty": not bool(prediction.mask.any()),
        "reference_extent": list(case.extent),
        "predicted_extent": None if predicted_extent is None else list(predicted_extent),
        "seconds": seconds,
        "slices_computed": computed,
        "slices_per_second": computed / seconds if computed > 0 and seconds > 0 else None,
        "peak_rss_mb": measurement.peak_rss_mb,
        "rss_before_mb": measurement.rss_before_mb,
        "rss_increment_mb": _increment(measurement),
        "peak_source": measurement.peak_source,
        "slices": {
            "index": slice_indices,
            "dice": [per_slice[i] for i in slice_indices],
            "distance_to_key": [distance_to_keys(i, keys) for i in slice_indices],
            "quality": None if quality is None else [_finite_or_none(float(quality[i]))
                                                     for i in slice_indices],
        },
    }
