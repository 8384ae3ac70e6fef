"""Timing and memory helpers shared by every benchmark."""
from __future__ import annotations

import json
import resource
import statistics
import time
from typing import Callable

import torch


def median_ms(fn: Callable[[], object], runs: int = 10, warmup: int = 2) -> float:
    """Median wall time of ``fn`` in milliseconds (CUDA-synchronised when relevant)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        _sync()
        start = time.perf_counter()
        fn()
        _sync()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def emit(result: dict) -> None:
    print(json.dumps(result, sort_keys=True), flush=True)
