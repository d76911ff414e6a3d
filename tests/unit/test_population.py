"""The evolution operator's statistics, selection rules and reproducibility."""

from __future__ import annotations

import math

import pytest
import torch

from edropout_ray.evolution.population import (Population, accept_children, distinct_donors, reference_operator,
                                     repair_empty_groups, round_kept_counts)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_donors_are_three_distinct_members_other_than_self():
    donors = distinct_donors(8, gen())
    for _ in range(200):
        donors = distinct_donors(8, gen(_))
        for i, row in enumerate(donors.tolist()):
            assert len(set(row)) == 3 and i not in row


def test_donors_are_uniform_over_the_others():
    counts = torch.zeros(5, 5)
    for seed in range(2000):
        for i, row in enumerate(distinct_donors(5, gen(seed)).tolist()):
            counts[i, row] += 1
    off_diagonal = counts[~torch.eye(5, dtype=torch.bool)]
    assert counts.diag().sum() == 0
    # each of the 4 others is picked 3/4 of the time: 1500 of 2000 draws
    assert off_diagonal.min() > 1400 and off_diagonal.max() < 1600


def test_operator_needs_four_states():
    with pytest.raises(ValueError, match="at least 4"):
        distinct_donors(3, gen())


def test_about_ten_percent_of_bits_are_mutation_candidates():
    # identical members: x_b == x_c everywhere, so every candidate flips x_a; CR = 1 keeps all of them
    states = torch.zeros(8, 20_000, dtype=torch.bool)
    children = reference_operator(states, mutation_factor=0.9, crossover_rate=1.0, generator=gen())
    assert children.float().mean().item() == pytest.approx(0.10, abs=0.005)


def test_crossover_rate_is_honoured():
    # F = 0: every bit is a candidate, so the mutant is ~x everywhere; CR picks the mutant's bit
    states = torch.zeros(8, 20_000, dtype=torch.bool)
    for rate in (0.3, 0.9):
        children = reference_operator(states, mutation_factor=0.0, crossover_rate=rate, generator=gen(1))
        assert children.float().mean().item() == pytest.approx(rate, abs=0.01)


def test_disagreeing_donors_prune_the_bit():
    # half the members all-ones, half all-zeros: wherever x_b != x_c a candidate bit becomes 0
    states = torch.zeros(8, 4000, dtype=torch.bool)
    states[:4] = True
    g = gen(2)
    donors = distinct_donors(8, gen(2))
    children = reference_operator(states, mutation_factor=0.0, crossover_rate=1.0, generator=g)
    for i, (a, b, c) in enumerate(donors.tolist()):
        x_a, agree = states[a], states[b] == states[c]
        expected = torch.where(agree, ~x_a, torch.zeros_like(x_a))
        assert torch.equal(children[i], expected)


def test_greedy_selection_keeps_parent_on_ties():
    parents = torch.tensor([1.0, 2.0, 3.0])
    children = torch.tensor([0.5, 2.0, 4.0])
    assert accept_children(parents, children, 0.0, gen()).tolist() == [True, False, False]


def test_temperature_acceptance_probability():
    parents = torch.zeros(40_000)
    children = torch.full((40_000,), 1.0)  # worse by 1
    accepted = accept_children(parents, children, temperature=2.0, generator=gen())
    assert accepted.float().mean().item() == pytest.approx(math.exp(-0.5), abs=0.01)
    assert accept_children(parents, children - 2, 2.0, gen()).all()  # better children always accepted


def test_population_is_reproducible_and_best_is_lowest_energy():
    a = Population.initial(8, 100, 0.5, [50, 50], gen(7))
    b = Population.initial(8, 100, 0.5, [50, 50], gen(7))
    assert torch.equal(a.states, b.states)
    assert a.states.float().mean().item() == pytest.approx(0.5, abs=0.05)
    a.energies = torch.tensor([3.0, 1.0, 2.0, 5.0, 4.0, 9.0, 8.0, 7.0])
    assert a.best_index == 1 and torch.equal(a.best_state, a.states[1])


def test_select_replaces_accepted_parents_only():
    population = Population(states=torch.zeros(4, 3, dtype=torch.bool), energies=torch.tensor([1.0, 1.0, 1.0, 1.0]))
    children = torch.ones(4, 3, dtype=torch.bool)
    population.select(children, torch.tensor([0.0, 2.0, 0.5, 1.0]), 0.0, gen())
    assert population.states.all(dim=1).tolist() == [True, False, True, False]
    assert population.energies.tolist() == [0.0, 1.0, 0.5, 1.0]


def test_repair_keeps_one_unit_per_group():
    states = torch.zeros(6, 10, dtype=torch.bool)
    repaired = repair_empty_groups(states, [3, 7], gen())
    assert (repaired[:, :3].sum(dim=1) == 1).all() and (repaired[:, 3:].sum(dim=1) == 1).all()


def test_rounding_keeps_a_multiple_of_the_block_in_every_larger_group():
    generator = torch.Generator().manual_seed(0)
    sizes = [64, 20, 5]  # the 5-unit group is smaller than the block: left as it is
    states = repair_empty_groups(torch.rand(32, sum(sizes), generator=generator) < 0.5, sizes, generator)
    rounded = round_kept_counts(states, sizes, 8, generator)
    for start, size in ((0, 64), (64, 20)):
        kept, before = rounded[:, start:start + size].sum(dim=1), states[:, start:start + size].sum(dim=1)
        assert ((kept % 8 == 0) | (kept == size)).all() and (kept >= 8).all()
        assert ((kept - before).abs() <= 4).all(), "the nearest multiple"
        changed = rounded[:, start:start + size] != states[:, start:start + size]
        assert (changed.sum(dim=1) == (kept - before).abs()).all(), "only as many units flip as needed"
    assert torch.equal(rounded[:, 84:], states[:, 84:])
    assert torch.equal(round_kept_counts(states, sizes, 1, generator), states)


def test_set_kept_counts_keeps_exactly_the_counts_and_the_kept_units_it_can():
    from edropout_ray.evolution.population import kept_per_group, set_kept_counts

    generator = torch.Generator().manual_seed(0)
    sizes = [4, 10, 6]
    states = torch.rand(5, 20, generator=generator) < 0.5
    counts = torch.tensor([1, 7, 6])
    fixed = set_kept_counts(states, sizes, counts, generator)
    for before, after in zip(states, fixed):
        assert torch.equal(kept_per_group(after, sizes), counts)
        for b, a, count in zip(before.split(sizes), after.split(sizes), counts.tolist()):
            # only what the count forces changes: all of a smaller set stays, a larger one only loses units
            if int(b.sum()) <= count:
                assert bool(a[b].all())
            else:
                assert not bool(a[~b].any())
