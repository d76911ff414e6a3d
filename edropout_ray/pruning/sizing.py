"""Hold pruned networks to the same size in parameters, not only in units.

A unit of a wide layer carries more weights than a unit of a narrow one, so two methods keeping
the same fraction of units can keep very different numbers of parameters. Comparisons between
methods bisect a method's own keep fraction until its state keeps the parameters asked for.
"""

from __future__ import annotations

from typing import Callable

import torch

from .space import PruningSpace


def parameters_fraction(space: PruningSpace, state: torch.Tensor) -> float:
    """Trainable parameters the exported model of `state` keeps, as a fraction of the dense model's."""
    return space.kept_parameters(state) / space.kept_parameters(torch.ones_like(state, dtype=torch.bool))


def fit_to_parameters(space: PruningSpace, state_for: Callable[[float], torch.Tensor], target: float,
                      iterations: int = 20) -> torch.Tensor:
    """The state from `state_for(keep_fraction)` whose parameters kept come closest to `target`.

    `state_for` must keep more (or as many) units as its argument grows, as every ranking rule
    here does; the bisection then converges to the closest size that rule can reach.
    """
    if not 0 < target <= 1:
        raise ValueError(f"the fraction of parameters to keep must be in (0, 1], got {target}")
    low, high = 0.0, 1.0
    best, best_gap = None, float("inf")
    for _ in range(iterations):
        middle = (low + high) / 2
        state = state_for(middle)
        kept = parameters_fraction(space, state)
        if abs(kept - target) < best_gap:
            best, best_gap = state, abs(kept - target)
        if kept > target:
            high = middle
        else:
            low = middle
    return best
