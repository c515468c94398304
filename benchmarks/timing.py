"""Timing repeated runs: work started at once in threads, medians and percentiles of the
figures, and the machine's load average to print beside them (the machine is shared)."""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

T = TypeVar("T")


def run_at_once(work: Callable[[int], T], count: int) -> tuple[list[T | None], float]:
    """work(0) ... work(count - 1), each in its own thread, all started together: their results in
    order (None where one raised) and the wall seconds until the last ended."""
    results: list[T | None] = [None] * count

    def run(i: int) -> None:
        results[i] = work(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, time.perf_counter() - started


def median_of(runs: Sequence[Mapping[str, float]], key: str) -> float:
    """The median of one figure over repeated runs."""
    return statistics.median(run[key] for run in runs)


def percentile(values: Iterable[float], share: float) -> float:
    """The value `share` of the way up the sorted values (nearest rank); 0.0 when there are none."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded."""
    return [round(x, 2) for x in os.getloadavg()]
