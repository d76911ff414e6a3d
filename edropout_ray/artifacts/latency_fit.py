"""The frozen mask held to a latency target by timing it, not only by the latency model's prediction.

The latency model (latency_model.py) turns a latency target into MACs with a curve measured over
uniform widths. The widths a search keeps can take another time at the same MACs: on LeNet-5 the
searched networks took 0.43 of the dense time where the curve predicted 0.50 (they keep the late,
cheap units). So when the mask freezes, its exported network is timed against the dense one with
the report's own code; when that misses the target by more than TOLERANCE, the mask's widths are
all scaled by one factor (the engine's `resized`: the units it keeps stay, rounded to
`channel_multiple`, since odd channel counts can cost more time than they save) to the MACs that
the curve, scaled by the measured/predicted ratio, gives for the target, and timed again, at most
ROUNDS times, bisecting between timings under and over the target. The timing closest to the
target wins.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

from ..pruning.sizing import size_fraction
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
    """`state`, or `resize(state, fraction)` for some MACs fraction, whichever measured time is closest to
    `goal.target`, and every timing made on the way ([{"macs_fraction", "measured_fraction", "chosen",
    "nested"}], the first for `state` itself). The next size is interpolated between the largest timing
    under the target and the smallest over it once both exist among the nested states (the resized ones,
    and `state` if resizing it to its own size keeps it), else read off the latency curve scaled by the
    last mask's measured/predicted ratio; the fit stops when a size repeats (the widths move in steps)."""
    states, rounds = [], []
    candidate = state
    for round_ in range(ROUNDS + 1):
        macs = size_fraction(space, candidate, "macs")
        measured = measured_fraction(space, candidate, goal.model.key["batch"], repeats)
        # a frozen mask off the multiple (the search keeps exact widths where rounded ones miss its size)
        # can be slower than the rounded masks on either side of it: no bracket for them
        nested = round_ > 0 or torch.equal(resize(state, macs), state)
        states.append(candidate)
        rounds.append({"macs_fraction": macs, "measured_fraction": measured, "chosen": False, "nested": nested})
        log.info("latency fit: %.3f of the MACs takes %.3f of the dense time (target %.2f)", macs, measured,
                 goal.target)
        if abs(measured / goal.target - 1.0) <= TOLERANCE or round_ == ROUNDS:
            break
        candidate = resize(state, _next_size(rounds, goal))
        if any(torch.equal(candidate, tried) for tried in states):
            break
    best = min(range(len(rounds)), key=lambda i: abs(rounds[i]["measured_fraction"] - goal.target))
    rounds[best]["chosen"] = True
    return states[best], rounds


def _next_size(rounds: list[dict], goal: LatencyGoal) -> float:
    under = [r for r in rounds if r["nested"] and r["measured_fraction"] <= goal.target]
    over = [r for r in rounds if r["nested"] and r["measured_fraction"] > goal.target]
    if under and over:
        low = max(under, key=lambda r: r["macs_fraction"])
        high = min(over, key=lambda r: r["macs_fraction"])
        if high["macs_fraction"] > low["macs_fraction"]:
            share = (goal.target - low["measured_fraction"]) / (high["measured_fraction"] - low["measured_fraction"])
            return low["macs_fraction"] + share * (high["macs_fraction"] - low["macs_fraction"])
    last = rounds[-1]
    scale = last["measured_fraction"] / goal.model.latency_at(last["macs_fraction"])  # this mask against the curve
    return goal.model.macs_for(min(goal.target / scale, 1.0))


def describe_fit(rounds: list[dict], target: float) -> str:
    """The freeze reason's addition: what the timing found and what the mask became."""
    first = rounds[0]
    chosen = next(r for r in rounds if r["chosen"])
    if chosen is first:
        return f"timed at {first['measured_fraction']:.3f} of the dense time (target {target:.2f}), kept as it froze"
    return (f"timed at {first['measured_fraction']:.3f} of the dense time at {first['macs_fraction']:.3f} of the "
            f"MACs, resized to {chosen['macs_fraction']:.3f} of the MACs, timed at {chosen['measured_fraction']:.3f} "
            f"(target {target:.2f}, {len(rounds)} timings)")
