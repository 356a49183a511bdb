"""Helpers shared by the benchmark scripts: timing and a synthetic dataset at a given size."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from photo_detector.data.sample import generate_sample


def make_dataset(root: Path, per_class: int, size: int) -> Path:
    return generate_sample(root / f"sample-{per_class}-{size}", per_class=per_class, size=size, force=True).root


def best_of(fn: Callable[[], int], repeats: int) -> float:
    """Items per second of the fastest of `repeats` runs of `fn` (which returns the item count)."""
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        n = fn()
        best = max(best, n / (time.perf_counter() - t))
    return best
