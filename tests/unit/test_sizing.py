"""Baselines held to a number of parameters: the bisection over a ranking rule's keep fraction."""

from __future__ import annotations

import pytest
import torch

from edropout_ray.models import lenet5
from edropout_ray.pruning.sizing import fit_to_parameters, parameters_fraction
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
    state = fit_to_parameters(space, per_layer_rule(space, torch.rand(space.num_units)), target)
    assert abs(parameters_fraction(space, state) - target) < 0.01
    exported = space.export(state)
    kept = sum(p.numel() for p in exported.parameters())
    assert kept == space.kept_parameters(state), "counted from masks as the exported model counts them"


def test_a_target_outside_the_unit_interval_is_refused(space):
    with pytest.raises(ValueError, match="in \\(0, 1\\]"):
        fit_to_parameters(space, per_layer_rule(space, torch.rand(space.num_units)), 1.5)


@pytest.mark.parametrize("target", [0.5, 0.25])
@pytest.mark.parametrize("multiple", [1, 8])
def test_counts_for_parameters_keep_the_target_whichever_units(space, target, multiple):
    from edropout_ray.evolution.population import set_kept_counts
    from edropout_ray.pruning.sizing import counts_for_parameters

    counts = counts_for_parameters(space, target, multiple)
    assert len(counts) == len(space.group_sizes) and bool((counts >= 1).all())
    none_kept = torch.zeros(3, space.num_units, dtype=torch.bool)
    states = set_kept_counts(none_kept, space.group_sizes, counts, torch.Generator().manual_seed(0))
    assert len({tuple(s.tolist()) for s in states}) == 3  # three different choices of units ...
    for state in states:  # ... of the same size
        assert abs(parameters_fraction(space, state) - target) < 0.02
