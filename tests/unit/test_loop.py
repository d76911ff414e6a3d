"""The one training loop's options: a fixed state, and early stopping on validation loss."""

from __future__ import annotations

import torch

from edropout_ray.config import Config
from edropout_ray.training.step import EDropoutEngine
from edropout_ray.training.loop import TrainLoop
from edropout_ray.training.run_setup import prepare
from edropout_ray.pruning.space import PruningSpace

MLP = "edropout_ray.models:mlp"


def loop_on_digits(state_of=None, **config) -> TrainLoop:
    setup = prepare(Config(model=MLP, batch_size=32, seed=1, **config))
    space = PruningSpace(setup.new_model(), setup.example_inputs())
    state = state_of(space) if state_of else None
    return TrainLoop(EDropoutEngine(space, setup.config), setup, "test", state=state)


def test_fixed_state_trains_only_its_units_for_the_whole_budget():
    loop = loop_on_digits(lambda space: torch.arange(space.num_units) % 2 == 0, epochs=2, max_steps_per_epoch=3)
    space = loop.engine.space
    before = {name: value.detach().clone() for name, value in space.model.named_parameters()}
    loop.run(progress=False)
    assert [row["epoch"] for row in loop.epoch_rows] == [0, 1] and not loop.step_rows
    assert all(row["kept_fraction"] == 0.5 and not row["frozen"] for row in loop.epoch_rows)
    assert torch.equal(loop.state, torch.arange(space.num_units) % 2 == 0)  # never evolved
    keep = space.keep_masks(loop.state)
    for name, value in space.model.named_parameters():
        kept = keep.get(name, torch.ones_like(value, dtype=torch.bool))  # absent: no unit prunes this tensor
        assert torch.equal(value[~kept], before[name][~kept]), name  # pruned entries never move
        assert not torch.equal(value[kept], before[name][kept]), name  # kept ones were trained


def test_patience_stops_once_validation_loss_stops_improving():
    # lr 1e-30 leaves every float32 weight as it is: the validation loss never improves after epoch 0
    frozen_weights = dict(optimizer="sgd", lr=1e-30, epochs=8, max_steps_per_epoch=1)
    loop = loop_on_digits(lambda space: torch.ones(space.num_units, dtype=torch.bool), **frozen_weights)
    loop.patience = 2
    loop.run(progress=False)
    assert len(loop.epoch_rows) == 3 and loop.stopped_early  # epoch 0 sets the best, 2 more without gain
    assert len({row["val_loss"] for row in loop.epoch_rows}) == 1
    patient = loop_on_digits(lambda space: torch.ones(space.num_units, dtype=torch.bool), **frozen_weights)
    patient.run(progress=False)
    assert len(patient.epoch_rows) == 8 and not patient.stopped_early  # no patience: the whole budget
