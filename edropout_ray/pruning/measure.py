"""Which of several ways to compute the same thing runs fastest here, found by timing each.

'auto' scoring on a GPU picks its mode this way: which of vmap, folded and loop wins depends on the
model, the batch and the device (measured on an H100: a loop beat vmap on ResNet-50 at 224x224), so
the choice is measured once per device and input shape instead of fixed by a rule.
"""

from __future__ import annotations

import time
from typing import Callable


def fastest(runs: dict[str, Callable[[], object]], synchronize: Callable[[], None] = lambda: None,
            repeats: int = 2, clock: Callable[[], float] = time.perf_counter) -> tuple[str, dict[str, float]]:
    """The name of the fastest of `runs` and every run's best time in seconds.

    Each run goes once untimed first (a GPU's first call plans its kernels), then `repeats` times, round
    robin so that a burst of background load hits every run alike; a run's time is its best.
    """
    if not runs:
        raise ValueError("nothing to measure: no runs given")
    for run in runs.values():
        run()
    best = {name: float("inf") for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            synchronize()
            start = clock()
            run()
            synchronize()
            best[name] = min(best[name], clock() - start)
    return min(best, key=best.get), best
