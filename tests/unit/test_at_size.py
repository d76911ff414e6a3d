"""States run at their own size: the same numbers as the masked network, and a clear fallback."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

from helpers import inputs_of, random_states, space_of
from edropout_ray.config import Config
from edropout_ray.training.learner import Learner
from edropout_ray.pruning.space import PruningSpace


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "small_cnn", "mlp", "resnet20"])
def test_training_at_size_equals_masked_training(name, optimizer):
    """Same loss, weights and optimizer state after every step (float64), across changes of the state:
    each change writes the trained slices back and gathers the new state's."""
    spaces = [copy.deepcopy(space_of(name, torch.float64)) for _ in range(2)]
    for module in (m for space in spaces for m in space.model.modules()):
        if isinstance(module, nn.Dropout):  # its draws follow the tensor's size: the same network, other noise
            module.p = 0.0
    config = Config(optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 1e-3, momentum=0.9, weight_decay=1e-2)
    at_size = Learner(spaces[0], config.replace(train_at_size=True))
    masked = Learner(spaces[1], config.replace(train_at_size=False))
    assert at_size.at_size and not masked.at_size
    states = random_states(spaces[0], 2, seed=3)
    x = inputs_of(name, batch=8, dtype=torch.float64)
    y = torch.arange(len(x)) % 10
    for step, state in enumerate([states[0], states[0], states[1], states[0], states[0]]):
        a, b = at_size.step(state, x, y), masked.step(state, x, y)
        assert a.loss == pytest.approx(b.loss, rel=1e-9, abs=1e-12), f"step {step}"
        assert a.accuracy == b.accuracy
        _assert_same_learner_state(at_size.state_dict(), masked.state_dict(), f"after step {step}")
        # from equal states again: tiny-batch training amplifies float64 noise ~100x per step
        masked.load_state_dict(at_size.state_dict())


def _assert_same_learner_state(actual: dict, expected: dict, where: str) -> None:
    """float64; at size runs images channels-last, which sums in another order (1e-9 relative seen)."""
    for key, value in expected["model"].items():
        torch.testing.assert_close(actual["model"][key], value, rtol=1e-7, atol=1e-10,
                                   msg=lambda m, key=key: f"{key} {where}: {m}")
    actual_state, expected_state = actual["optimizer"]["state"], expected["optimizer"]["state"]
    assert actual_state.keys() == expected_state.keys()
    for index, entries in expected_state.items():
        for key, value in entries.items():
            torch.testing.assert_close(
                actual_state[index][key], value, rtol=1e-7, atol=1e-10,
                msg=lambda m, index=index, key=key: f"optimizer state {index} {key} {where}: {m}")


def test_weights_written_back_are_what_a_resumed_learner_continues_from():
    """state_dict() of a learner training at size is the full dense state: a fresh learner loaded
    from it takes the next step exactly as the original does."""
    space = copy.deepcopy(space_of("resnet18"))
    config = Config(optimizer="sgd", lr=0.05, momentum=0.9)
    original = Learner(space, config)
    state = random_states(space, 1, seed=4)[0]
    x, y = inputs_of("resnet18", batch=8), torch.arange(8) % 10
    original.step(state, x, y)
    saved = copy.deepcopy(original.state_dict())
    resumed = Learner(copy.deepcopy(space_of("resnet18")), config)
    resumed.load_state_dict(saved)
    assert resumed.step(state, x, y).loss == original.step(state, x, y).loss
    for key, value in original.weights().items():
        assert torch.equal(resumed.weights()[key], value), key


def test_compact_tensors_are_the_exported_models():
    """The gathered tensors of a state are, name by name, the exported (physically pruned) model's."""
    space = space_of("resnet18")
    state = random_states(space, 1, seed=2)[0]
    exported = dict(space.export(state).state_dict())
    compact = space.compact_tensors(state)
    assert compact, "resnet18 has cut tensors"
    for name, value in compact.items():
        assert torch.equal(value, exported[name]), name


def _group_norm_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def test_a_model_that_cannot_run_at_size_is_masked_and_said_once(caplog):
    """GroupNorm over channels keeps its own channel count: scoring and training fall back to
    masking, with one warning naming the reason, and give the masked numbers."""
    torch.manual_seed(0)
    space = PruningSpace(_group_norm_cnn(), torch.randn(2, 3, 12, 12), scoring="at_size")
    x, y = torch.randn(4, 3, 12, 12), torch.arange(4)
    states = random_states(space, 2, seed=1)
    with caplog.at_level(logging.WARNING, logger="edropout_ray.pruning.space"):
        at_size = space.score(states, x, y)
        space.score(states, x, y)
        learner = Learner(space, Config())
    warnings = [r.getMessage() for r in caplog.records if "masked, at the dense cost" in r.getMessage()]
    assert len(warnings) == 1 and "GroupNorm" in warnings[0], warnings
    assert not learner.at_size
    space.scoring = "loop"
    torch.testing.assert_close(at_size, space.score(states, x, y), rtol=0, atol=0)


def test_auto_scoring_runs_at_size_on_the_cpu():
    space = space_of("resnet18")
    assert space.scoring_mode_for(torch.zeros(1)) == "at_size"
    assert space_of("mobilenet_v2").at_size_supported, "depthwise convs run at size (groups set to the kept channels)"


def test_latency_report_times_both_models_at_every_batch():
    from edropout_ray.artifacts.latency import compare_latency

    space = space_of("small_cnn")
    state = random_states(space, 1, seed=3)[0]
    found = compare_latency(space.model, space.export(state), inputs_of("small_cnn"), [1, 16], repeats=6)
    assert found["device"] == "cpu" and found["threads"] == torch.get_num_threads()
    for batch in (1, 16):
        row = found[f"batch_{batch}"]
        assert row["dense_ms"] > 0 and row["pruned_ms"] > 0 and row["repeats"] == 6
        low, high = row["speedup_interval"]
        assert low <= row["speedup"] <= high and row["significant"] == (not low <= 1.0 <= high)
        assert {row["dense_layout"], row["pruned_layout"]} <= {"contiguous", "channels_last"}


def test_after_the_freeze_the_network_trained_at_size_is_the_masked_and_the_exported_one():
    """Across the switch to training at size: the loss on one batch is the same computed by the
    compact network being trained, by the dense model masked with the final mask (weights written
    back), and by the exported model."""
    from edropout_ray.pruning.at_size import run_at_size
    from edropout_ray.training.step import EDropoutEngine

    space = copy.deepcopy(space_of("resnet18", torch.float64))
    engine = EDropoutEngine(space, Config(population_size=4, converge_after=0, converge_patience=1, lr=0.01))
    x, y = inputs_of("resnet18", batch=8, dtype=torch.float64), torch.arange(8) % 10
    for _ in range(6):
        engine.step(x, y, epoch=0)
    assert engine.frozen and engine.learner.at_size
    compact = engine.learner._compact
    assert torch.equal(compact.state.bool(), engine.final_mask.bool()), "the learner trains the frozen state at size"
    space.model.eval()
    with torch.no_grad():
        at_size = run_at_size(space.model, compact.params | compact.buffers, x, space.sized_layers)
        engine.finish()  # writes the compact weights back into the dense model
        masked = space.masked_forward(engine.final_mask, x)
        exported = space.export(engine.final_mask).eval()(x)
    loss = lambda logits: torch.nn.functional.cross_entropy(logits, y).item()
    assert loss(at_size) == pytest.approx(loss(masked), rel=1e-9)
    assert loss(exported) == pytest.approx(loss(masked), rel=1e-9)


class _TiedConvs(nn.Module):
    """Two convs, then one 3x3 conv's weight and bias used by two layers (tied weights)."""

    def __init__(self):
        super().__init__()
        self.stem, self.stem_bn = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.mid, self.mid_bn = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.shared, self.shared_bn = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.again, self.again_bn = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.again.weight, self.again.bias = self.shared.weight, self.shared.bias
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem_bn(self.stem(x)).relu()
        x = self.mid_bn(self.mid(x)).relu()
        x = self.shared_bn(self.shared(x)).relu()
        return self.fc(self.again_bn(self.again(x)).relu().mean((2, 3)))


def test_layers_that_share_a_weight_stay_whole_and_the_rest_trains_at_size(caplog):
    """Cutting a shared tensor for one layer would cut it for the other: the groups that touch it are
    kept whole, with a warning naming it; the stem's group is pruned, and trained at size it takes the
    same steps as masked (the shared weight's gradient summed over both uses, as in the dense model)."""
    torch.manual_seed(0)
    x, y = torch.randn(6, 3, 8, 8, dtype=torch.float64), torch.arange(6) % 10
    with caplog.at_level(logging.WARNING, logger="edropout_ray.pruning.space"):
        spaces = [PruningSpace(_TiedConvs().double(), x[:2]) for _ in range(2)]
    assert [g.root for g in spaces[0].groups] == ["stem"]
    assert "'shared.weight' is a tensor another layer shares" in caplog.text
    spaces[1].model.load_state_dict(spaces[0].model.state_dict())
    config = Config(optimizer="sgd", lr=0.05, momentum=0.9)
    at_size = Learner(spaces[0], config.replace(train_at_size=True))
    masked = Learner(spaces[1], config.replace(train_at_size=False))
    assert at_size.at_size
    state = torch.tensor([1.0] * 8 + [0.0] * 8)
    for step in range(3):
        a, b = at_size.step(state, x, y), masked.step(state, x, y)
        assert a.loss == pytest.approx(b.loss, rel=1e-9), f"step {step}"
        _assert_same_learner_state(at_size.state_dict(), masked.state_dict(), f"after step {step}")
