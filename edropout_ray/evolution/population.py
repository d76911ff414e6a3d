"""The population of binary states and the evolution operator of EDropout.

All randomness comes from one `torch.Generator`, so a run is reproducible from its seed and the
generator's state can be checkpointed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def random_states(num_states: int, num_units: int, p_keep: float, generator: torch.Generator) -> torch.Tensor:
    """Bits i.i.d. Bernoulli(p_keep): 1 = unit kept."""
    return torch.rand(num_states, num_units, generator=generator) < p_keep


def distinct_donors(num_states: int, generator: torch.Generator) -> torch.Tensor:
    """For each member i, three distinct indices a, b, c, all different from i. Shape [S, 3]."""
    if num_states < 4:
        raise ValueError(f"the evolution operator needs at least 4 states, got {num_states}")
    keys = torch.rand(num_states, num_states, generator=generator)
    keys.fill_diagonal_(float("inf"))  # never pick yourself
    return keys.argsort(dim=1)[:, :3]


def reference_operator(states: torch.Tensor, mutation_factor: float, crossover_rate: float,
                       generator: torch.Generator) -> torch.Tensor:
    """Binary differential evolution as in the authors' code (docs/algorithm.md).

    A bit is a mutation candidate with probability 1 - F; a candidate flips x_a where x_b == x_c
    and is set to 0 where they differ (a bias toward pruning); crossover keeps x_i with
    probability 1 - CR.
    """
    donors = distinct_donors(states.shape[0], generator)
    x_a, x_b, x_c = (states[donors[:, k]] for k in range(3))
    candidate = torch.rand(states.shape, generator=generator) > mutation_factor
    mutant = torch.where(candidate, (~x_a) & (x_b == x_c), x_a)
    crossover = torch.rand(states.shape, generator=generator) < crossover_rate
    return torch.where(crossover, mutant, states)


def accept_children(parent_energies: torch.Tensor, child_energies: torch.Tensor, temperature: float,
                    generator: torch.Generator) -> torch.Tensor:
    """Which children replace their parents.

    T = 0 is the greedy rule (strictly lower energy; ties keep the parent). T > 0 accepts with
    probability min(1, exp(-(E_child - E_parent) / T)), recovering greedy as T -> 0.
    """
    if temperature == 0:
        return child_energies < parent_energies
    uniform = torch.rand(child_energies.shape, generator=generator)
    delta = (child_energies - parent_energies).double()
    log_accept = torch.clamp(-delta / temperature, max=0.0)
    return (child_energies < parent_energies) | (uniform.double() < torch.exp(log_accept))


def diversity(states: torch.Tensor) -> float:
    """Mean Hamming distance between two distinct members, as a fraction of the units (0 = all equal).

    Counted per unit from how many members keep it (k of S: k (S - k) differing pairs), so it
    costs O(S U), not O(S^2 U).
    """
    num_states = states.shape[0]
    kept = states.sum(dim=0, dtype=torch.float64)
    pairs = num_states * (num_states - 1) / 2
    return float((kept * (num_states - kept)).mean() / pairs)


def repair_empty_groups(states: torch.Tensor, group_sizes: list[int], generator: torch.Generator) -> torch.Tensor:
    """Keep at least one unit in every coupled group, so every state stays physically removable.

    A group with all units pruned would leave a layer with zero channels, which cuts the network.
    """
    states = states.clone()
    start = 0
    for size in group_sizes:
        block = states[:, start:start + size]
        empty = ~block.any(dim=1)
        if empty.any():
            picks = torch.randint(size, (int(empty.sum()),), generator=generator)
            rows = empty.nonzero().squeeze(1)
            block[rows, picks] = True
        start += size
    return states


def round_kept_counts(states: torch.Tensor, group_sizes: list[int], multiple: int,
                      generator: torch.Generator) -> torch.Tensor:
    """Keep a multiple of `multiple` units in every group larger than it (the nearest one, at least
    `multiple`), turning random units on or off. Kernels run pruned layers faster at such channel
    counts, on GPUs above all (tensor cores work in blocks of 8 or 16 channels)."""
    if multiple <= 1:
        return states
    states = states.clone()
    start = 0
    for size in group_sizes:
        if size > multiple:
            block = states[:, start:start + size]
            kept = block.sum(dim=1, keepdim=True)
            target = (torch.div(kept + multiple // 2, multiple, rounding_mode="floor") * multiple).clamp(multiple, size)
            states[:, start:start + size] = _flip_to_count(block, target, generator)
        start += size
    return states


def set_kept_counts(states: torch.Tensor, group_sizes: list[int], counts: torch.Tensor,
                    generator: torch.Generator) -> torch.Tensor:
    """Make every state keep exactly `counts[g]` units of group g, turning random units on or off:
    which units survive stays the search's choice, how many is the caller's."""
    states = states.clone()
    start = 0
    for size, count in zip(group_sizes, counts.tolist()):
        block = states[:, start:start + size]
        target = torch.full((states.shape[0], 1), min(max(int(count), 1), size))
        states[:, start:start + size] = _flip_to_count(block, target, generator)
        start += size
    return states


def _flip_to_count(block: torch.Tensor, target: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """`block` [S, size] with random units turned on or off until row i keeps target[i] units."""
    block = block.clone()
    kept = block.sum(dim=1, keepdim=True)
    keys = torch.rand(block.shape, generator=generator)
    # rank the units that may flip (off ones to add, on ones to drop) in a random order
    add_rank = torch.where(block, math.inf, keys).argsort(dim=1).argsort(dim=1)
    drop_rank = torch.where(block, keys, math.inf).argsort(dim=1).argsort(dim=1)
    block |= add_rank < (target - kept).clamp(min=0)
    block &= ~(drop_rank < (kept - target).clamp(min=0))
    return block


def kept_per_group(state: torch.Tensor, group_sizes: list[int]) -> torch.Tensor:
    """How many units of each group `state` keeps."""
    return torch.stack([block.sum() for block in state.split(group_sizes)])


@dataclass
class Population:
    """States [S, U] with the energy each was last scored with (inf = never scored)."""

    states: torch.Tensor
    energies: torch.Tensor

    @classmethod
    def initial(cls, size: int, num_units: int, p_init: float, group_sizes: list[int],
                generator: torch.Generator) -> "Population":
        states = repair_empty_groups(random_states(size, num_units, p_init, generator), group_sizes, generator)
        return cls(states=states, energies=torch.full((size,), math.inf))

    @property
    def scored(self) -> bool:
        return bool(torch.isfinite(self.energies).all())

    def select(self, children: torch.Tensor, child_energies: torch.Tensor, temperature: float,
               generator: torch.Generator) -> torch.Tensor:
        """Replace accepted parents in place; returns the acceptance mask."""
        accepted = accept_children(self.energies, child_energies, temperature, generator)
        self.states = torch.where(accepted.unsqueeze(1), children, self.states)
        self.energies = torch.where(accepted, child_energies, self.energies)
        return accepted

    @property
    def best_index(self) -> int:
        return int(torch.argmin(self.energies))

    @property
    def best_state(self) -> torch.Tensor:
        return self.states[self.best_index]

    @property
    def best_energy(self) -> float:
        return float(self.energies[self.best_index])
