"""Measure wall time and the peak resident memory (RSS) of one step of the benchmark.

On Linux, writing "5" to /proc/self/clear_refs resets the process's peak RSS (VmHWM in
/proc/self/status), so each step gets its own peak: everything the process held during the
step, Python, numpy and torch allocations, loaded libraries and the model included. Where the
reset is not allowed (other systems, some containers), the peak falls back to
`resource.getrusage(RUSAGE_SELF).ru_maxrss`, the peak since the process started, and
`peak_source` is "process". On Linux the reset also lowers `ru_maxrss`, so neither value is a
lifetime peak once a step has been measured.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_mb(field: str) -> float | None:
    try:
        text = _STATUS.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0  # the kernel writes kB
    return None


def current_rss_mb() -> float | None:
    """Return the process's resident memory now, in MiB, or None where /proc is absent."""
    return _status_mb("VmRSS")


def reset_peak_rss() -> bool:
    """Reset the process's peak RSS to its current RSS; return False where not allowed."""
    try:
        with open(_CLEAR_REFS, "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def lifetime_peak_rss_mb() -> float:
    """Return the peak RSS from getrusage, in MiB: since the start or the last reset."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes and macOS bytes.
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


@dataclass
class Measurement:
    seconds: float = 0.0
    rss_before_mb: float | None = None
    peak_rss_mb: float | None = None
    peak_source: str = ""  # "step" (peak reset before the step) or "process" (since start)


@contextlib.contextmanager
def measure() -> Iterator[Measurement]:
    """Yield a `Measurement` that holds the block's wall time and peak RSS once it exits."""
    result = Measurement()
    reset = reset_peak_rss()
    result.rss_before_mb = current_rss_mb()
    started = time.perf_counter()
    try:
        yield result
    finally:
        result.seconds = time.perf_counter() - started
        peak = _status_mb("VmHWM") if reset else None
        if peak is None:
            result.peak_rss_mb, result.peak_source = lifetime_peak_rss_mb(), "process"
        else:
            result.peak_rss_mb, result.peak_source = peak, "step"
