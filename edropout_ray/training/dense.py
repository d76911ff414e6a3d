"""The dense baseline: the same architecture, initial weights and budget, trained with every unit kept.

With `checkpoint_every` it checkpoints into its own folder (`dense/` in the run's output) and
continues from there when it starts again with the same config: after Ray retries its task on
another node, or a `train --resume`. The dense run is deterministic for a config, so continuing
from any checkpoint of the same config gives the result of an uninterrupted run.
"""

from __future__ import annotations

import logging

import torch

from ..artifacts import checkpoint
from ..artifacts.storage import Folder
from ..errors import CheckpointError
from ..pruning.evaluation import evaluate
from .loop import TrainLoop
from .run_setup import RunSetup, steps_per_epoch
from .step import EDropoutEngine

log = logging.getLogger(__name__)

FOLDER = "dense"  # inside the run's output


def train_dense(setup: RunSetup, progress: bool, checkpoint_dir: Folder | None = None) -> dict:
    """Train the unpruned network in this process; its test metrics and per-epoch rows."""
    space = setup.new_space()
    all_kept = torch.ones(space.num_units, dtype=torch.bool)
    engine = EDropoutEngine(space, setup.config, total_steps=setup.config.epochs * steps_per_epoch(setup))
    keep = checkpoint_dir if setup.config.checkpoint_every else None
    loop = TrainLoop(engine, setup, "dense", state=all_kept, checkpoint_dir=keep)
    if keep is not None:
        _continue_or_start(loop, keep, setup)
    loop.run(progress)
    return {"test": evaluate(space, all_kept, setup.test_loader, setup.device), "epochs": loop.epoch_rows}


def _continue_or_start(loop: TrainLoop, folder: Folder, setup: RunSetup) -> None:
    """Restore the folder's checkpoint if it was written under this config; else mark the folder as this
    config's (a checkpoint of another config, or an unreadable one, is replaced as training goes)."""
    config = setup.config
    if folder.exists(checkpoint.CHECKPOINT_FILE) and folder.exists(checkpoint.CONFIG_FILE):
        try:
            if checkpoint.load_saved_config(folder).to_dict() == config.to_dict():
                loop.restore(checkpoint.load_checkpoint(folder))
                log.info("the dense baseline continues from its checkpoint in %s (epoch %d, step %d)", folder,
                         loop.epoch + 1, loop.step_in_epoch)
                return
        except CheckpointError as error:
            log.warning("the dense baseline starts over: %s", error)
    checkpoint.save_config(folder, config)
