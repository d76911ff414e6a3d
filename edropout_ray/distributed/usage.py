"""What each process of a run held on Ray and how much of that time it worked: report.json's `resources`.

A process is *held* from its start to its end (its CPUs and GPUs reserved for it), and *busy* while
it runs a call that computes (a shard's scoring and weight loads, the learner's steps and weight
exports), timed inside the process. A device-second is one GPU for a second, or one CPU for a
second where the process holds no GPU.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass


class BusyClock:
    """Seconds spent inside `with clock.busy():` blocks, in this process."""

    def __init__(self):
        self.seconds = 0.0

    @contextmanager
    def busy(self):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - started


@dataclass
class ProcessUsage:
    """One process's life: its role, what it held, for how long, and how long it computed."""
    role: str
    index: int
    cpus: float
    gpus: float
    held_s: float
    busy_s: float  # 0 when the process died before it could say (its node lost)

    @property
    def devices(self) -> float:
        return self.gpus if self.gpus > 0 else self.cpus


def summarize(processes: list[ProcessUsage]) -> dict:
    """report.json's `resources`: every process, and the run's busy and held device-seconds."""
    held = sum(p.devices * p.held_s for p in processes)
    busy = sum(p.devices * min(p.busy_s, p.held_s) for p in processes)
    by_role: dict[str, dict] = {}
    for p in processes:
        role = by_role.setdefault(p.role, {"processes": 0, "held_device_s": 0.0, "busy_device_s": 0.0})
        role["processes"] += 1
        role["held_device_s"] += p.devices * p.held_s
        role["busy_device_s"] += p.devices * min(p.busy_s, p.held_s)
    for role in by_role.values():
        role["busy_fraction"] = role["busy_device_s"] / role["held_device_s"] if role["held_device_s"] else None
    return {"processes": [asdict(p) for p in processes], "roles": by_role,
            "held_device_s": held, "busy_device_s": busy, "busy_fraction": busy / held if held else None}
