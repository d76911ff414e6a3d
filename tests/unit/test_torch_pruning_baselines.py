"""Torch-Pruning's pipelines as baselines: real tiny runs on digits, and the scores being TP's own."""

from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp
import torchvision
from torch import nn

from edropout_ray.baselines import pruners
from edropout_ray.baselines import torch_pruning as tpb
from edropout_ray.baselines.registry import run_baseline
from edropout_ray.config import Config
from edropout_ray.errors import UnsupportedModelError
from edropout_ray.pruning.sizing import parameters_fraction, size_fraction
from edropout_ray.pruning.space import PruningSpace
from edropout_ray.training.learner import Learner
from edropout_ray.training.run_setup import prepare


def _digits(method: str, **changes):
    changes = {"prune_target_params": 0.3} | changes
    config = Config(model="edropout_ray.models:small_cnn", method=method, epochs=3, max_steps_per_epoch=4,
                    batch_size=32, seed=2, **changes)
    setup = prepare(config)
    return config, setup, PruningSpace(setup.new_model(), setup.example_inputs())


@pytest.mark.parametrize("method", ["tp_group_norm", "tp_magnitude", "tp_taylor"])
def test_each_method_keeps_the_parameters_asked_for_and_pruned_units_never_move(method, monkeypatch):
    """Every phase trains its state without moving the pruned units; iterative rounds only remove
    units; the end state holds the parameter target; the step budget is the other methods'."""
    phases, steps = [], []
    train = tpb._train

    def recording_train(space, config, setup, state, *args, **kwargs):
        before = {k: v.clone() for k, v in space.model.state_dict().items()}
        result = train(space, config, setup, state, *args, **kwargs)
        phases.append((state.clone(), before, {k: v.clone() for k, v in space.model.state_dict().items()}))
        return result

    monkeypatch.setattr(tpb, "_train", recording_train)
    monkeypatch.setattr(pruners, "_train", recording_train)  # the dense first phase (pruners.dense_phase)
    step = Learner.step
    monkeypatch.setattr(Learner, "step", lambda self, *args: steps.append(1) or step(self, *args))
    config, setup, space = _digits(method)
    pruned = run_baseline(space, config, setup)

    assert parameters_fraction(space, pruned.state) == pytest.approx(0.3, abs=0.02)
    assert torch.equal(phases[-1][0], pruned.state)
    assert len(phases) == (2 if method == "tp_group_norm" else 1 + tpb.ROUNDS)
    assert bool(phases[0][0].all()), "the first phase trains the dense network"
    for (earlier, _, _), (later, _, _) in zip(phases, phases[1:]):
        assert not bool((later & ~earlier).any()), "a pruned unit came back"
    for state, before, after in phases[1:]:
        moved = 0
        for name, keep in space.keep_masks(state).items():
            assert torch.equal(after[name][~keep], before[name][~keep]), f"a pruned entry of {name} moved"
            moved += int((after[name][keep] != before[name][keep]).sum())
        assert moved > 0, "kept units must learn"
    budget = 3 * 4
    assert budget - tpb.ROUNDS <= len(steps) <= budget  # phases of whole steps: at most one lost per round


def _group_norms(space: PruningSpace) -> torch.Tensor:
    """Tensor[U]: each unit's squared L2 norm over its whole coupled group (TP's, unnormalized, summed)."""
    pruner = tpb.make_pruner(space, tp.importance.GroupMagnitudeImportance(p=2, normalizer=None,
                                                                          group_reduction="sum"))
    return tpb.unit_scores(space, pruner, torch.ones(space.num_units, dtype=torch.bool))


def test_group_norm_regularization_shrinks_the_least_important_groups():
    """The same dense steps from the same weights, with and without GroupNormPruner.regularize: the
    groups the regularizer ranks least important end with smaller norms, the most important barely move."""
    ends = {}
    for reg in (None, 1e-2):
        torch.manual_seed(0)
        config, setup, space = _digits("tp_group_norm")
        start = _group_norms(space)
        hook = None if reg is None else tpb.make_pruner(space, tp.importance.GroupMagnitudeImportance(p=2),
                                                        reg=reg).regularize
        tpb._train(space, config, setup, torch.ones(space.num_units, dtype=torch.bool), 8, None, "sparse",
                   after_backward=hook)
        ends[reg] = _group_norms(space)
    plain, regularized = ends[None], ends[1e-2]
    layer = tpb.layer_of_units(space)
    for g in range(int(layer.max()) + 1):
        members = (layer == g).nonzero().squeeze(1)
        order = members[torch.argsort(start[members])]
        weakest, strongest = order[:len(order) // 4], order[-(len(order) // 4):]
        shrink = lambda units: float(regularized[units].sum() / plain[units].sum())  # noqa: E731
        assert shrink(weakest) < 0.97, f"group {g}: the least important groups must shrink"
        assert shrink(weakest) < shrink(strongest), f"group {g}: the regularizer pushes hardest on the weakest"


def test_unit_scores_are_torch_prunings_group_magnitude_importance():
    """A hand-built MLP: unit i of the hidden layer scores TP's GroupMagnitudeImportance of its group,
    and with units pruned, the kept units score what TP computes on the physically pruned model."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    space = PruningSpace(model, torch.randn(2, 4))
    everything = torch.ones(space.num_units, dtype=torch.bool)
    importance = tp.importance.GroupMagnitudeImportance(p=2, normalizer=None)
    scores = tpb.unit_scores(space, tpb.make_pruner(space, importance), everything)
    # by hand: the mean of the squared norms of the neuron's row (out) and of its column in the next layer (in)
    w0, w2, w4 = model[0].weight.detach(), model[2].weight.detach(), model[4].weight.detach()
    expected = torch.cat([(w0.pow(2).sum(1) + w2.pow(2).sum(0)) / 2, (w2.pow(2).sum(1) + w4.pow(2).sum(0)) / 2])
    torch.testing.assert_close(scores, expected)
    # and straight from TP on its own dependency graph
    graph = tp.DependencyGraph().build_dependency(copy.deepcopy(model), example_inputs=torch.randn(2, 4))
    first = graph.get_pruning_group(graph.model[0], tp.prune_linear_out_channels, list(range(6)))
    torch.testing.assert_close(scores[:6], importance(first).float())

    state = everything.clone()
    state[[1, 4, 6 + 2]] = False
    pruned_scores = tpb.unit_scores(space, tpb.make_pruner(space, importance), state)
    assert torch.isinf(pruned_scores[~state]).all() and (pruned_scores[~state] < 0).all()
    exported = space.export(state)
    graph = tp.DependencyGraph().build_dependency(exported, example_inputs=torch.randn(2, 4))
    on_exported = torch.cat([importance(graph.get_pruning_group(layer, tp.prune_linear_out_channels,
                                                                list(range(layer.out_features)))).float()
                             for layer in (exported[0], exported[2])])
    torch.testing.assert_close(pruned_scores[state], on_exported)


def test_a_heads_score_is_the_mean_of_torch_prunings_importance_over_its_q_k_v_rows():
    """Heads are one unit here and rows of the qkv projection in Torch-Pruning (heads.py): the pipelines
    score a head by its rows, and the MLP neurons as before."""
    pytest.importorskip("timm")
    from edropout_ray.models import small_vit

    torch.manual_seed(0)
    model = small_vit(image_size=28)
    space = PruningSpace(model, torch.randn(2, 1, 28, 28))
    importance = tp.importance.GroupMagnitudeImportance(p=2, normalizer=None)
    scores = tpb.unit_scores(space, tpb.make_pruner(space, importance), torch.ones(space.num_units, dtype=torch.bool))
    graph = tp.DependencyGraph().build_dependency(copy.deepcopy(model), example_inputs=torch.randn(2, 1, 28, 28))
    heads = next(g for g in space.groups if g.root == "blocks.1.attn")
    qkv = graph.model.blocks[1].attn.qkv
    rows = importance(graph.get_pruning_group(qkv, tp.prune_linear_out_channels, list(range(qkv.out_features))))
    per_head = rows.float().view(3, heads.size, -1).mean(dim=(0, 2))  # [q | k | v], heads in order in each
    torch.testing.assert_close(scores[heads.start:heads.start + heads.size], per_head)
    assert per_head.unique().numel() == heads.size, "distinct heads: a wrong row-to-head map would show"


def test_torch_prunings_pipelines_refuse_the_packed_heads_of_torchs_attention():
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2,
                                                 hidden_dim=16, mlp_dim=32, num_classes=10)
    space = PruningSpace(model, torch.randn(2, 3, 32, 32))
    with pytest.raises(UnsupportedModelError, match="nn.MultiheadAttention.*random or l1"):
        tpb.make_pruner(space, tp.importance.GroupMagnitudeImportance())


def test_taylor_scores_need_and_use_gradients():
    """GroupTaylorImportance on the accumulated gradients: |w * dw| summed, zero for a dead unit."""
    config, setup, space = _digits("tp_taylor")
    everything = torch.ones(space.num_units, dtype=torch.bool)
    pruner = tpb.make_pruner(space, tp.importance.GroupTaylorImportance())
    before = {k: v.clone() for k, v in space.model.state_dict().items()}
    tpb.accumulate_gradients(space, everything, setup, batches=2)
    assert all(p.grad is not None for p in space.model.parameters())
    for name, value in space.model.state_dict().items():
        assert torch.equal(value, before[name]), f"scoring moved {name}"
    scores = tpb.unit_scores(space, pruner, everything)
    assert torch.isfinite(scores).all() and (scores >= 0).all() and scores.max() > 0


def test_learner_hook_runs_between_backward_and_step_on_the_dense_model():
    """after_backward sees this step's gradients on the model's own parameters (so the learner trains
    masked, not at size), and what it adds to them is what the optimizer applies."""
    config, setup, space = _digits("tp_group_norm")
    x, y = next(iter(setup.train_loader))
    plain = copy.deepcopy(space)
    seen = []

    def hook(model):
        seen.append(all(p.grad is not None for p in model.parameters()))
        with torch.no_grad():
            for p in model.parameters():
                p.grad.zero_()  # nothing to apply: plain SGD without decay then moves nothing

    learner = Learner(space, config.replace(weight_decay=0.0), after_backward=hook)
    assert not learner.at_size and Learner(plain, config).at_size
    before = {k: v.clone() for k, v in space.model.named_parameters()}
    learner.step(torch.ones(space.num_units, dtype=torch.bool), x, y)
    assert seen == [True]
    for name, value in space.model.named_parameters():
        assert torch.equal(value, before[name]), name


@pytest.mark.parametrize("method", ["tp_group_norm", "tp_magnitude"])
def test_torch_pruning_pipelines_hold_a_macs_target(method):
    config, setup, space = _digits(method, prune_target_params=None, prune_target_macs=0.3)
    pruned = run_baseline(space, config, setup)
    assert size_fraction(space, pruned.state, "macs") == pytest.approx(0.3, abs=0.02)
