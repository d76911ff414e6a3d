"""A latency budget turned into a MACs budget, by a latency model measured on the run's own device.

A run with `prune_target_latency: f` wants its exported network to take f of the dense network's time
per batch of `latency_target_batch` on the device it trains on. Time is not a sum over units that a
state could be held to at every step, so the run measures once how the exported network's time
follows its MACs on that device: the network at several widths (the same fraction of every coupled
group, rounded to `channel_multiple`, near each of WIDTHS' MACs), each exported and timed against the
dense one (interleaved, median of paired ratios: artifacts/latency.py). Latency is made monotone in
MACs (a running maximum from the smallest width up) and inverted by linear interpolation: the target's
MACs fraction then holds every state, as `prune_target_macs` does. The model is cached in the run's output
(`latency_model.json`) and reused by a resume on the same model, input, batch, device and threads.

What this model cannot see: two states with the same MACs and different widths per layer can differ
in time (channel counts a kernel likes or not). So the frozen mask is timed and resized
(latency_fit.py), and the report times the final exported model against the target and says when it
missed by more than the measurement's spread.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from dataclasses import asdict, dataclass

import torch

from ..pruning.sizing import counts_for_size, state_with_counts
from ..pruning.space import PruningSpace
from .latency import time_interleaved
from .storage import Folder

log = logging.getLogger(__name__)

FILE = "latency_model.json"
WIDTHS = (0.1, 0.2, 0.3, 0.45, 0.6, 0.8)  # MACs fractions measured, besides the dense network (1.0)


@dataclass
class LatencyModel:
    key: dict  # what the measurement is valid for: model, input shape, batch, device, threads
    points: list[list[float]]  # [MACs fraction, latency fraction], by MACs, the dense network's [1, 1] last

    def _monotone(self) -> list[tuple[float, float]]:
        envelope, highest = [], 0.0
        for macs, latency in sorted(self.points):
            highest = max(highest, latency)
            envelope.append((macs, highest))
        return envelope

    def latency_at(self, macs: float) -> float:
        """The latency fraction predicted for a network keeping `macs` of the MACs."""
        points = self._monotone()
        if macs <= points[0][0]:
            return points[0][1]
        for (m0, l0), (m1, l1) in zip(points, points[1:]):
            if macs <= m1:
                return l0 + (l1 - l0) * (macs - m0) / (m1 - m0) if m1 > m0 else l1
        return points[-1][1]

    def macs_for(self, latency: float) -> float:
        """The largest MACs fraction predicted to take at most `latency` of the dense time (the smallest
        width measured if none does: the caller says so)."""
        points = self._monotone()
        best = points[0][0]
        for (m0, l0), (m1, l1) in zip(points, points[1:]):
            if l1 <= latency:
                best = m1
            elif l0 <= latency < l1:
                best = m0 + (m1 - m0) * (latency - l0) / (l1 - l0)
                break
        return best

    @property
    def fastest(self) -> float:
        return self._monotone()[0][1]


def model_key(space: PruningSpace, model_name: str, batch: int, device: torch.device) -> dict:
    return {"model": model_name, "input": list(space.example_inputs.shape[1:]), "batch": batch,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "threads": torch.get_num_threads()}


def measure(space: PruningSpace, key: dict, multiple: int, repeats: int) -> LatencyModel:
    """Time the network exported at each of WIDTHS against the dense one, on the space's device."""
    dense = space.model
    was_training = dense.training
    dense.eval()
    device = space.example_inputs.device
    x = torch.randn(key["batch"], *space.example_inputs.shape[1:], device=device, dtype=space.example_inputs.dtype)
    total = space.kept_macs(torch.ones(space.num_units, dtype=torch.bool))
    points = [[1.0, 1.0]]
    try:
        for width in WIDTHS:
            # widths near uniform, on the multiple: exact MACs are not needed (the point records what it keeps)
            counts = counts_for_size(space, width, multiple, cost="macs", exact=False)
            state = state_with_counts(space.group_sizes, counts)
            pruned = space.export(state).eval()
            timed = time_interleaved({"dense": lambda: dense(x), "pruned": lambda: pruned(x)}, device, repeats=repeats)
            samples = timed["samples_ms"]
            ratio = statistics.median(p / d for p, d in zip(samples["pruned"], samples["dense"]))
            points.append([space.kept_macs(state) / total, ratio])
            log.info("latency model: %.2f of the MACs takes %.2f of the dense time at batch %d", points[-1][0], ratio,
                     key["batch"])
    finally:
        dense.train(was_training)
    return LatencyModel(key, sorted(points))


def latency_model_for(space: PruningSpace, model_name: str, batch: int, device: torch.device, multiple: int,
                      repeats: int, folder: Folder) -> LatencyModel:
    """The cached model in `folder` if it was measured for the same key, else a new measurement, saved there."""
    key = model_key(space, model_name, batch, device)
    if folder.exists(FILE):
        try:
            cached = LatencyModel(**json.loads(folder.read_text(FILE)))
            if cached.key == key:
                log.info("latency model: reusing %s", folder.file(FILE))
                return cached
        except (ValueError, TypeError):
            log.warning("latency model: %s is unreadable; measuring again", folder.file(FILE))
    log.info("latency model: timing the network at %d widths on %s at batch %d", len(WIDTHS), key["device"], batch)
    found = measure(space, key, multiple, repeats)
    folder.write_text(FILE, json.dumps(asdict(found), indent=2))
    return found


def macs_target_for_latency(model: LatencyModel, target: float) -> float:
    """The MACs fraction to hold the run to; a target below the fastest width measured is said."""
    if target < model.fastest:
        log.warning("prune_target_latency %.2f is below what the smallest width measured reaches (%.2f of the dense "
                    "time): the run keeps the smallest width's MACs", target, model.fastest)
    return max(model.macs_for(target), 1e-3)


@dataclass(frozen=True)
class LatencyGoal:
    """A run's latency target and the model that turned it into MACs (the report checks the result)."""
    target: float
    model: LatencyModel


def check_against_target(latency_row: dict, target: float, predicted: float) -> dict:
    """report.json's `latency_target` from the report's timing of the exported model at the target's batch:
    the measured fraction (median of paired ratios) and its 10-90% interval; `missed` when the target lies
    outside that interval (a miss larger than the measurement's noise)."""
    low, high = latency_row["speedup_interval"]
    measured = 1.0 / latency_row["speedup"]
    interval = [1.0 / high, 1.0 / low] if low > 0 else [1.0 / high, math.inf]
    missed = not interval[0] <= target <= interval[1]
    return {"batch": latency_row["batch"], "target": target, "predicted_fraction": predicted,
            "measured_fraction": measured, "measured_interval": interval,
            "dense_ms": latency_row["dense_ms"], "dense_ms_iqr": latency_row["dense_ms_iqr"],
            "pruned_ms": latency_row["pruned_ms"], "pruned_ms_iqr": latency_row["pruned_ms_iqr"],
            "missed": missed, "over_by": measured / target - 1.0}
