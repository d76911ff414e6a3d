"""The frozen mask held to a latency target by timing it, not only by the latency model's prediction.

The latency model (latency_model.py) turns a latency target into MACs with a curve measured over
uniform widths. The widths a search keeps can take another time at the same MACs: on LeNet-5 the
searched networks took 0.43 of the dense time where the curve predicted 0.50 (they keep the late,
cheap units). So when the mask freezes, its exported network is timed against the dense one with
the report's own code; when that misses the target by more than TOLERANCE, the curve is scaled by
the measured/predicted ratio, the mask widened or narrowed to the MACs the scaled curve gives (as
the search repairs its states: units added or dropped in a random order), and timed again, at
most ROUNDS times. The timing closest to the target wins.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

from ..pruning.space import PruningSpace
from .latency import compare_latency
from .latency_model import LatencyGoal

log = logging.getLogger(__name__)

TOLERANCE = 0.05  # the frozen mask is resized when its measured time misses the target by more (relative)
ROUNDS = 3  # resizings at most; each costs one export and one timing
Resize = Callable[[torch.Tensor, float], torch.Tensor]  # (state, MACs fraction) -> the state at that size


def measured_fraction(space: PruningSpace, state: torch.Tensor, batch: int, repeats: int) -> float:
    """The exported network of `state`'s time over the dense network's at `batch`: the median of paired
    ratios, each model in its faster memory layout (artifacts/latency.py, as the report times it). The
    random inputs come from a fork of the random generators: the run's own streams do not move."""
    device = space.example_inputs.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        row = compare_latency(space.model, space.export(state), space.example_inputs, [batch], repeats)
    return 1.0 / row[f"batch_{batch}"]["speedup"]


def fit_to_latency(space: PruningSpace, state: torch.Tensor, goal: LatencyGoal, resize: Resize,
                   repeats: int) -> tuple[torch.Tensor, list[dict]]:
    """`state`, or a resized copy, whose measured time is closest to `goal.target`, and every timing
    made on the way ([{"macs_fraction", "measured_fraction", "chosen"}], the first for `state` itself)."""
    batch = goal.model.key["batch"]
    total = space.kept_macs(torch.ones_like(state, dtype=torch.bool))
    states, rounds = [], []
    for round_ in range(ROUNDS + 1):
        macs = space.kept_macs(state) / total
        measured = measured_fraction(space, state, batch, repeats)
        states.append(state)
        rounds.append({"macs_fraction": macs, "measured_fraction": measured, "chosen": False})
        log.info("latency fit: %.3f of the MACs takes %.3f of the dense time (target %.2f)", macs, measured,
                 goal.target)
        if abs(measured / goal.target - 1.0) <= TOLERANCE or round_ == ROUNDS:
            break
        scale = measured / goal.model.latency_at(macs)  # how far this mask's widths are off the uniform curve
        resized = resize(state, goal.model.macs_for(min(goal.target / scale, 1.0)))
        if torch.equal(resized, state):  # the size cannot move in steps this small
            break
        state = resized
    best = min(range(len(rounds)), key=lambda i: abs(rounds[i]["measured_fraction"] - goal.target))
    rounds[best]["chosen"] = True
    return states[best], rounds


def describe_fit(rounds: list[dict], target: float) -> str:
    """The freeze reason's addition: what the timing found and what the mask became."""
    first = rounds[0]
    chosen = next(r for r in rounds if r["chosen"])
    if chosen is first:
        return f"timed at {first['measured_fraction']:.3f} of the dense time (target {target:.2f}), kept as it froze"
    return (f"timed at {first['measured_fraction']:.3f} of the dense time at {first['macs_fraction']:.3f} of the "
            f"MACs, resized to {chosen['macs_fraction']:.3f} of the MACs, timed at {chosen['measured_fraction']:.3f} "
            f"(target {target:.2f}, {len(rounds)} timings)")
