"""DropNet's unit selection on hand-made networks whose activations are known, and L1 ranking."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edropout_ray import choices
from edropout_ray.baselines.pruners import FILL_ABOVE_MISS, keep_top, ranked_state_at_size, run_ranked, select_to_drop
from edropout_ray.baselines.registry import BASELINES, run_baseline
from edropout_ray.baselines.torch_pruning import run_iterative
from edropout_ray.config import Config
from edropout_ray.errors import ConfigError
from edropout_ray.pruning.space import PruningSpace
from edropout_ray.baselines.unit_scores import layer_of_units, mean_abs_activation, weight_l1_norms

LAYER1 = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
LAYER2 = [0.5, 0.1, 0.4, 0.2, 0.3]


@pytest.fixture(scope="module")
def known_space() -> PruningSpace:
    """Hidden layer 1 outputs 1..6 for the input e0; hidden layer 2 outputs LAYER2 whatever the input."""
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    with torch.no_grad():
        for layer in (model[0], model[2], model[4]):
            layer.weight.zero_()
            layer.bias.zero_()
        model[0].weight[:, 0] = torch.tensor(LAYER1)
        model[2].bias.copy_(torch.tensor(LAYER2))
    return PruningSpace(model, torch.eye(4)[:2])


def loader(batches: int = 3):
    x = torch.zeros(8, 4)
    x[:, 0] = 1.0
    return [(x, torch.zeros(8, dtype=torch.long))] * batches


def everything(space):
    return torch.ones(space.num_units, dtype=torch.bool)


def test_mean_activation_is_the_known_post_activation(known_space):
    scores = mean_abs_activation(known_space, everything(known_space), loader(), torch.device("cpu"))
    torch.testing.assert_close(scores, torch.tensor(LAYER1 + LAYER2))


def test_conv_units_are_averaged_over_samples_and_positions():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, -2.0]).view(2, 1, 1, 1))
        model[0].bias.zero_()
    space = PruningSpace(model, torch.rand(2, 1, 2, 2))
    x = torch.tensor([[[[1.0, 3.0], [0.0, 0.0]]], [[[0.0, 0.0], [0.0, 4.0]]]])  # 2 samples, 2x2
    scores = mean_abs_activation(space, everything(space), [(x, torch.zeros(2, dtype=torch.long))],
                                 torch.device("cpu"))
    # channel 0 = relu(x): mean over 2 samples x 4 positions = 8 / 8; channel 1 = relu(-2x) = 0
    assert scores[:2].tolist() == [1.0, 0.0]


@pytest.mark.parametrize("strategy, dropped", [
    ("min", [7, 9, 10, 8]),  # the four lowest overall: all in layer 2
    ("max", [5, 4, 3, 2]),   # the four highest overall: all in layer 1
    ("min_layer", [0, 1, 7, 9]),  # the lowest two of each layer
])
def test_scored_strategies_drop_the_expected_units(known_space, strategy, dropped):
    scores = torch.tensor(LAYER1 + LAYER2)
    state = select_to_drop(scores, everything(known_space), layer_of_units(known_space), strategy, 0.34,
                           torch.Generator().manual_seed(0))
    assert sorted((~state).nonzero().squeeze(1).tolist()) == sorted(dropped)


@pytest.mark.parametrize("strategy, per_layer", [("random", None), ("random_layer", [2, 2])])
def test_random_strategies_ignore_scores_and_are_seeded(known_space, strategy, per_layer):
    scores = torch.tensor(LAYER1 + LAYER2)
    layer = layer_of_units(known_space)
    draws = [select_to_drop(scores, everything(known_space), layer, strategy, 0.34, torch.Generator().manual_seed(s))
             for s in (0, 0, 1, 2, 3)]
    assert torch.equal(draws[0], draws[1])
    assert any(not torch.equal(draws[0], d) for d in draws[2:])
    for state in draws:
        assert int((~state).sum()) == 4
        if per_layer:
            assert [int((~state[layer == g]).sum()) for g in (0, 1)] == per_layer


def test_the_last_unit_of_a_layer_is_never_dropped(known_space):
    state = everything(known_space)
    state[6:10] = False  # layer 2 keeps only unit 10
    scores = torch.tensor(LAYER1 + LAYER2)
    after = select_to_drop(scores, state, layer_of_units(known_space), "min", 0.9, torch.Generator())
    assert bool(after[10]) and int(after[:6].sum()) >= 1


def test_l1_norms_and_keep_top(known_space):
    norms = weight_l1_norms(known_space)
    # layer 1 neuron i has one weight LAYER1[i] of 4 inputs; layer 2's weights are zero
    torch.testing.assert_close(norms, torch.tensor([v / 4 for v in LAYER1] + [0.0] * 5))
    layer = layer_of_units(known_space)
    per_layer = keep_top(torch.tensor(LAYER1 + LAYER2), 0.5, layer, per_layer=True)
    assert per_layer.nonzero().squeeze(1).tolist() == [3, 4, 5, 6, 8]  # top 3 of 6, top 2 (round 2.5) of 5
    overall = keep_top(torch.tensor(LAYER1 + LAYER2), 0.3, layer, per_layer=False)
    assert overall.nonzero().squeeze(1).tolist() == [3, 4, 5, 6]  # top 3 overall, plus one so layer 2 lives


@pytest.mark.parametrize("target", [0.5, 0.25])
def test_a_ranking_held_to_macs_comes_within_half_a_point_where_its_top_k_cannot(target):
    """LeNet-5's first-layer channels are large steps of MACs: some random rankings' closest top-k miss."""
    from edropout_ray.models import lenet5
    from edropout_ray.pruning.sizing import fit_to_size, size_fraction

    torch.manual_seed(0)
    space = PruningSpace(lenet5(), torch.randn(2, 1, 28, 28))
    layer = layer_of_units(space)
    top_k_misses, misses = [], []
    for seed in range(12):
        scores = torch.rand(space.num_units, generator=torch.Generator().manual_seed(seed))
        top_k = fit_to_size(space, lambda f: keep_top(scores, f, layer, per_layer=False), target, cost="macs")
        top_k_misses.append(abs(size_fraction(space, top_k, "macs") - target))
        state = ranked_state_at_size(space, scores, layer, False, "macs", target)
        misses.append(abs(size_fraction(space, state, "macs") - target))
        assert (state.unsqueeze(1) & (layer.unsqueeze(1) == torch.arange(3))).any(0).all()  # no layer emptied
    assert max(top_k_misses) > FILL_ABOVE_MISS  # the case the fill exists for occurs
    assert max(misses) <= FILL_ABOVE_MISS


@pytest.mark.parametrize("method, cost", [("l1", "params"), ("random", "params"), ("dropnet", "params"),
                                          ("l1", "macs"), ("dropnet", "macs")])
def test_baselines_keep_the_size_asked_for_within_the_same_steps(method, cost, monkeypatch):
    """What `compare` relies on: a baseline held to EDropout's parameters (or MACs), trained for its steps."""
    from edropout_ray.training.learner import Learner
    from edropout_ray.training.run_setup import prepare
    from edropout_ray.pruning.sizing import size_fraction

    steps = []
    step = Learner.step
    monkeypatch.setattr(Learner, "step", lambda self, *args: steps.append(1) or step(self, *args))
    config = Config(model="edropout_ray.models:small_cnn", method=method, epochs=3, max_steps_per_epoch=4,
                    batch_size=32, dropnet_patience=1, seed=2, **{f"prune_target_{cost}": 0.3})
    setup = prepare(config)
    space = PruningSpace(setup.new_model(), setup.example_inputs())
    pruned = run_baseline(space, config, setup)
    assert size_fraction(space, pruned.state, cost) == pytest.approx(0.3, abs=0.02)
    budget = 3 * 4
    if method == "dropnet":  # phases of whole steps: rounding loses at most one step per cycle
        assert budget - 8 <= len(steps) <= budget
    else:
        assert len(steps) == budget


def test_the_registry_names_every_baseline_method_and_nothing_else():
    """A method added to choices.METHODS without a function (or the reverse) fails here, not at run time."""
    assert set(BASELINES) == set(choices.METHODS) - {"edropout"}


def test_a_method_without_a_baseline_is_refused_by_name():
    with pytest.raises(ConfigError, match="no baseline is named 'edropout'.*the baselines are dropnet"):
        run_baseline(None, Config(method="edropout"), None)


@pytest.mark.parametrize("run, bad", [(run_ranked, {"criterion": "dropnet"}), (run_iterative, {"importance": "l1"})])
def test_a_ranking_the_pruners_do_not_know_is_refused_not_run_as_random(run, bad):
    with pytest.raises(ValueError, match=f"must be one of .*got '{next(iter(bad.values()))}'"):
        run(None, Config(), None, **bad)
