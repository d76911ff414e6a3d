"""Hold pruned networks to a size in parameters or in MACs, not only in units.

A unit of a wide layer carries more weights than a unit of a narrow one, and a channel of an early
convolution more MACs and fewer weights than one of a late layer, so two methods keeping the same
fraction of units can keep very different sizes. Every function here takes the `cost` it holds to
('params' or 'macs', PruningSpace.kept_cost_of); comparisons between methods bisect a method's own
keep fraction until its state keeps the size asked for.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..evolution.population import kept_per_group
from .space import PruningSpace


def size_fraction(space: PruningSpace, state: torch.Tensor, cost: str = "params") -> float:
    """What the exported model of `state` keeps of `cost`, as a fraction of the dense model's."""
    both = torch.stack([state.bool(), torch.ones_like(state, dtype=torch.bool)])
    kept, total = space.kept_cost_of(both, cost).tolist()
    return kept / total


def parameters_fraction(space: PruningSpace, state: torch.Tensor) -> float:
    """Trainable parameters the exported model of `state` keeps, as a fraction of the dense model's."""
    return size_fraction(space, state, "params")


def kept_summary(space: PruningSpace, state: torch.Tensor) -> str:
    """'41.2% of the parameters, 38.0% of the MACs kept': for progress lines."""
    return (f"{size_fraction(space, state, 'params'):.1%} of the parameters, "
            f"{size_fraction(space, state, 'macs'):.1%} of the MACs kept")


def fit_to_size(space: PruningSpace, state_for: Callable[[float], torch.Tensor], target: float,
                iterations: int = 20, cost: str = "params") -> torch.Tensor:
    """The state from `state_for(keep_fraction)` whose `cost` kept comes closest to `target` (a fraction).

    `state_for` must keep more (or as many) units as its argument grows, as every ranking rule
    here does; the bisection then converges to the closest size that rule can reach.
    """
    if not 0 < target <= 1:
        raise ValueError(f"the fraction of {cost} to keep must be in (0, 1], got {target}")
    low, high = 0.0, 1.0
    best, best_gap = None, float("inf")
    for _ in range(iterations):
        middle = (low + high) / 2
        state = state_for(middle)
        kept = size_fraction(space, state, cost)
        if abs(kept - target) < best_gap:
            best, best_gap = state, abs(kept - target)
        if kept > target:
            high = middle
        else:
            low = middle
    return best


def state_with_counts(group_sizes, counts: torch.Tensor) -> torch.Tensor:
    """A state keeping the first `counts[g]` units of every group g (which units does not matter for a size)."""
    return torch.cat([torch.arange(int(size)) < count for size, count in zip(group_sizes, counts)])


def _rounded(exact: torch.Tensor, sizes: torch.Tensor, multiple: int) -> torch.Tensor:
    """Unit counts near `exact` per group: a multiple of `multiple` where the group is larger, 1..size."""
    large = sizes > multiple
    rounded = torch.where(large, (torch.round(exact / multiple) * multiple).clamp(min=multiple), torch.round(exact))
    return rounded.clamp(min=1).minimum(sizes).long()


def counts_for_size(space: PruningSpace, target: float, multiple: int = 1, cost: str = "params",
                    exact: bool = True) -> torch.Tensor:
    """Units to keep per group so that a state keeps `target` of `cost`.

    First the same fraction of every group (a multiple of `multiple` where the group is larger),
    bisected on that fraction; then (`exact`) single moves of `multiple` units (then of one unit, where
    blocks of `multiple` cannot reach the target) in whichever group brings the size closest. The moves
    can leave widths far from uniform and counts off the multiple; `exact=False` stops before them.
    Which units does not matter for the count: the units of a group control slices of equal size.
    """
    sizes = torch.tensor(space.group_sizes)

    def state_of(counts: torch.Tensor) -> torch.Tensor:
        return state_with_counts(sizes, counts)

    state = fit_to_size(space, lambda f: state_of(_rounded(f * sizes, sizes, multiple)), target, cost=cost)
    counts = kept_per_group(state, space.group_sizes)
    if exact:
        for step in dict.fromkeys((multiple, 1)):
            counts = _closer_by_moves(space, counts, sizes, step, target, state_of, cost)
    return counts


def scaled_counts(space: PruningSpace, counts: torch.Tensor, target: float, multiple: int = 1,
                  cost: str = "params") -> torch.Tensor:
    """`counts` per group all scaled by one factor (rounded as counts_for_size rounds), the factor bisected
    until the kept `cost` comes closest to `target`: a state's own widths, grown or shrunk together."""
    sizes = torch.tensor(space.group_sizes)
    # beyond the factor at which every group is whole (rounding would keep the last block of a group off)
    largest = 1.25 * float((sizes / counts.clamp(min=1)).max())
    state = fit_to_size(space, lambda f: state_with_counts(sizes, _rounded(counts * f * largest, sizes, multiple)),
                        target, cost=cost)
    return kept_per_group(state, space.group_sizes)


def _closer_by_moves(space, counts, sizes, step, target, state_of, cost) -> torch.Tensor:
    """Greedy: move one group's count by +-step while that brings the kept fraction of `cost` closer
    (every candidate move of a round counted in one call)."""
    total = float(space.kept_cost_of(torch.ones(1, space.num_units, dtype=torch.bool), cost)[0])

    def gaps(candidates: list[torch.Tensor]) -> torch.Tensor:
        kept = space.kept_cost_of(torch.stack([state_of(c) for c in candidates]), cost)
        return (kept.double() / total - target).abs()

    gap = float(gaps([counts])[0])
    while True:
        moves = []
        for g in range(len(counts)):
            for delta in (step, -step):
                moved = counts.clone()
                moved[g] += delta
                if 1 <= int(moved[g]) <= int(sizes[g]):
                    moves.append(moved)
        if not moves:
            return counts
        moved_gaps = gaps(moves)
        best = int(torch.argmin(moved_gaps))  # the first of equals, in the order the moves were made
        if float(moved_gaps[best]) >= gap - 1e-9:
            return counts
        gap, counts = float(moved_gaps[best]), moves[best]


ROUNDED_FIT_TOLERANCE = 0.005  # a state with rounded widths may miss the target by this much of the dense size


def fit_states_to_size(space: PruningSpace, states: torch.Tensor, target: float,
                       generator: torch.Generator, multiple: int = 1, cost: str = "params") -> torch.Tensor:
    """Each state [S, U] brought to the size closest to `target` of `cost` by dropping its kept
    units in a random order (or adding pruned ones in a random order), so the layer widths a state
    chose shrink or grow together and the search keeps choosing them. One unit of every group is
    kept first, so no layer is emptied.

    With `multiple` > 1 every group larger than it keeps a multiple of it (the nearest, at least
    `multiple`): at arbitrary channel counts every new state costs the convolution library new
    kernel plans, and a search step at size costs up to a quarter more (docs/performance.md). A
    state whose rounded widths cannot come within ROUNDED_FIT_TOLERANCE of the target (narrow
    layers move the size in coarse steps) keeps its exact widths instead.
    """
    order = _UnitOrder(space, states, generator, cost)
    goal = target * float(space.kept_cost_of(torch.ones(1, states.shape[1], dtype=torch.bool), cost)[0])
    fitted = order.fit(goal, multiple)
    if multiple > 1:
        missed = (space.kept_cost_of(fitted, cost).double() - goal).abs() > ROUNDED_FIT_TOLERANCE * goal / target
        if bool(missed.any()):
            fitted[missed] = order.fit(goal, 1)[missed]
    return fitted


class _UnitOrder:
    """A random order of each state's units, kept ones first, and the states that keep a prefix of it."""

    def __init__(self, space: PruningSpace, states: torch.Tensor, generator: torch.Generator, cost: str):
        self.space = space
        self.cost = cost
        count, units = states.shape
        keys = torch.rand(count, units, generator=generator) + (~states).float()  # kept in [0, 1), pruned in [1, 2)
        self.sizes = torch.tensor(space.group_sizes)
        self.group_of = torch.repeat_interleave(torch.arange(len(self.sizes)), self.sizes)
        self.place = torch.empty(count, units, dtype=torch.long)  # a unit's place in its group's order
        start = 0
        for size in space.group_sizes:  # each group's first unit in the order goes to the front
            block = keys[:, start:start + size]
            block.scatter_(1, block.argmin(dim=1, keepdim=True), -1.0)
            self.place[:, start:start + size] = block.argsort(dim=1).argsort(dim=1)
            start += size
        self.rank = keys.argsort(dim=1).argsort(dim=1)  # a unit's place in its state's order

    def states_at(self, prefix: torch.Tensor, multiple: int) -> torch.Tensor:
        """The states that keep the `prefix` [S] first units of their order, each group's count rounded."""
        kept = torch.zeros(len(prefix), len(self.sizes), dtype=torch.long).index_add_(
            1, self.group_of, (self.rank < prefix.unsqueeze(1)).long())
        if multiple > 1:
            rounded = torch.div(kept + multiple // 2, multiple, rounding_mode="floor") * multiple
            kept = torch.where(self.sizes > multiple, rounded.clamp(min=multiple).minimum(self.sizes), kept)
        return self.place < kept[:, self.group_of]

    def fit(self, goal: float, multiple: int) -> torch.Tensor:
        """Per state, the prefix whose states keep the `cost` closest to `goal`."""
        def params(prefix: torch.Tensor) -> torch.Tensor:
            return self.space.kept_cost_of(self.states_at(prefix, multiple), self.cost).double()

        count, units = self.rank.shape
        low = torch.full((count,), len(self.sizes))
        high = torch.full((count,), units)
        while bool((low < high).any()):  # the shortest prefix that reaches the goal
            middle = (low + high) // 2
            enough = params(middle) >= goal
            high = torch.where(enough & (low < high), middle, high)
            low = torch.where(~enough & (low < high), middle + 1, low)
        shorter = (high - 1).clamp(min=len(self.sizes))
        closer = (params(shorter) - goal).abs() < (params(high) - goal).abs()
        return self.states_at(torch.where(closer, shorter, high), multiple)
