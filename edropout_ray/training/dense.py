"""The dense baseline: the same architecture, initial weights and budget, trained with every unit kept."""

from __future__ import annotations

import torch

from ..pruning.evaluation import evaluate
from .loop import TrainLoop
from .run_setup import RunSetup, steps_per_epoch
from .step import EDropoutEngine


def train_dense(setup: RunSetup, progress: bool) -> dict:
    """Train the unpruned network in this process; its test metrics and per-epoch rows."""
    space = setup.new_space()
    all_kept = torch.ones(space.num_units, dtype=torch.bool)
    engine = EDropoutEngine(space, setup.config, total_steps=setup.config.epochs * steps_per_epoch(setup))
    loop = TrainLoop(engine, setup, "dense", state=all_kept)
    loop.run(progress)
    return {"test": evaluate(space, all_kept, setup.test_loader, setup.device), "epochs": loop.epoch_rows}
