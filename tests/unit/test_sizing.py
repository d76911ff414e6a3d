"""Baselines held to a number of parameters: the bisection over a ranking rule's keep fraction."""

from __future__ import annotations

import pytest
import torch

from edropout_ray.models import lenet5
from edropout_ray.pruning.sizing import fit_to_size, parameters_fraction
from edropout_ray.pruning.space import PruningSpace


@pytest.fixture(scope="module")
def space():
    torch.manual_seed(0)
    return PruningSpace(lenet5(), torch.randn(2, 1, 28, 28))


def per_layer_rule(space, scores):
    """Keep the top `fraction` of every coupled group by score (at least one unit each)."""
    def state_for(fraction):
        state = torch.zeros(space.num_units, dtype=torch.bool)
        for group in space.groups:
            block = scores[group.start:group.start + group.size]
            count = max(1, round(fraction * group.size))
            state[group.start + torch.argsort(block, descending=True)[:count]] = True
        return state
    return state_for


@pytest.mark.parametrize("target", [0.1, 0.225, 0.5, 0.8])
def test_the_fitted_state_keeps_the_parameters_asked_for(space, target):
    state = fit_to_size(space, per_layer_rule(space, torch.rand(space.num_units)), target)
    assert abs(parameters_fraction(space, state) - target) < 0.01
    exported = space.export(state)
    kept = sum(p.numel() for p in exported.parameters())
    assert kept == space.kept_parameters(state), "counted from masks as the exported model counts them"


def test_a_target_outside_the_unit_interval_is_refused(space):
    with pytest.raises(ValueError, match="in \\(0, 1\\]"):
        fit_to_size(space, per_layer_rule(space, torch.rand(space.num_units)), 1.5)


@pytest.mark.parametrize("target", [0.5, 0.25])
@pytest.mark.parametrize("multiple", [1, 8])
def test_counts_for_parameters_keep_the_target_whichever_units(space, target, multiple):
    from edropout_ray.evolution.population import set_kept_counts
    from edropout_ray.pruning.sizing import counts_for_size

    counts = counts_for_size(space, target, multiple)
    assert len(counts) == len(space.group_sizes) and bool((counts >= 1).all())
    none_kept = torch.zeros(3, space.num_units, dtype=torch.bool)
    states = set_kept_counts(none_kept, space.group_sizes, counts, torch.Generator().manual_seed(0))
    assert len({tuple(s.tolist()) for s in states}) == 3  # three different choices of units ...
    for state in states:  # ... of the same size
        assert abs(parameters_fraction(space, state) - target) < 0.02


@pytest.mark.parametrize("name", ["resnet18", "small_cnn"])
def test_searched_widths_come_in_blocks_of_eight_where_the_target_allows(name):
    """Rounded to multiples of 8, a state is held within ROUNDED_FIT_TOLERANCE of the target; one whose
    narrow layers cannot get that close keeps the exact fit drawn from the same random order. ResNet-18's
    groups (64 to 512 channels) always allow it."""
    from helpers import random_states, space_of
    from edropout_ray.evolution.population import kept_per_group
    from edropout_ray.pruning.sizing import ROUNDED_FIT_TOLERANCE, fit_states_to_size

    space = space_of(name)
    states = random_states(space, 12, p_keep=0.7, seed=0)
    exact = fit_states_to_size(space, states, 0.4, torch.Generator().manual_seed(1))
    rounded = fit_states_to_size(space, states, 0.4, torch.Generator().manual_seed(1), multiple=8)
    sizes = torch.tensor(space.group_sizes)
    in_blocks = 0
    for state, exact_state in zip(rounded, exact):
        counts = kept_per_group(state, space.group_sizes)
        if bool(((counts % 8 == 0) | (sizes <= 8)).all()):
            in_blocks += 1
            assert abs(parameters_fraction(space, state) - 0.4) <= ROUNDED_FIT_TOLERANCE
        else:
            assert torch.equal(state, exact_state)
    assert abs(parameters_fraction(space, exact[0]) - 0.4) < 0.01
    assert in_blocks == len(states) if name == "resnet18" else 0 < in_blocks


def test_uniform_counts_without_exact_moves_stay_near_uniform_and_on_the_multiple(space):
    from edropout_ray.pruning.sizing import counts_for_size, size_fraction, state_with_counts

    sizes = torch.tensor(space.group_sizes)  # LeNet-5: 20, 50, 500
    for target in (0.3, 0.6):
        counts = counts_for_size(space, target, 8, cost="macs", exact=False)
        assert all(int(c) % 8 == 0 for c in counts), counts
        shares = counts / sizes
        assert float(shares.max() - shares.min()) < 0.3, f"far from one share of every group: {counts.tolist()}"
        kept = size_fraction(space, state_with_counts(space.group_sizes, counts), "macs")
        assert abs(kept - target) < 0.1
    exact = counts_for_size(space, 0.6, 8, cost="macs")  # the moves may leave widths far apart for an exact size
    assert abs(size_fraction(space, state_with_counts(space.group_sizes, exact), "macs") - 0.6) < 0.01


def test_scaled_counts_grow_and_shrink_a_states_widths_together(space):
    from edropout_ray.pruning.sizing import scaled_counts, size_fraction, state_with_counts

    own = torch.tensor([8, 40, 376])
    before = size_fraction(space, state_with_counts(space.group_sizes, own), "macs")
    for target in (before * 1.25, before * 0.7):
        counts = scaled_counts(space, own, target, 8, cost="macs")
        kept = size_fraction(space, state_with_counts(space.group_sizes, counts), "macs")
        assert abs(kept - target) < 0.06 and all(int(c) % 8 == 0 or int(c) == s for c, s in zip(counts, (20, 50, 500)))
        grew = target > before
        assert all((int(c) >= int(o)) if grew else (int(c) <= int(o)) for c, o in zip(counts, own)), counts.tolist()
    assert scaled_counts(space, own, 1.0, 8, cost="macs").tolist() == [20, 50, 500]
