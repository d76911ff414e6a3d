"""The one training loop every method runs through: EDropout, the dense baseline, DropNet, L1, random.

Epochs of steps, validation after each, checkpoints every N steps. What differs between methods is
an option of the loop, not another loop: the state evolves (EDropout) or stays fixed (a baseline's
phase, the dense network); training may stop early when validation loss stops improving (DropNet).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from ..artifacts import checkpoint
from .step import EDropoutEngine, StepRecord
from .run_setup import RunSetup, steps_per_epoch
from ..artifacts.storage import Folder


def _progress(total: int, done: int, description: str, enabled: bool):
    return tqdm(total=total, initial=done, desc=description, unit="step", dynamic_ncols=True, leave=False,
                disable=not (enabled and sys.stderr.isatty()))


class TrainLoop:
    """Epochs of engine steps, with validation per epoch and checkpoints every N steps.

    `state`: train this fixed state instead of evolving one (the engine's evolution is not used).
    `epochs`: the budget (default: the config's); each epoch is `epoch_steps` steps (default: the
    setup's `steps_per_epoch`; a baseline's shorter phases pass fewer, so budgets match in steps).
    `patience`: stop once validation loss has not improved for this many epochs (None: never).
    """

    def __init__(self, engine: EDropoutEngine, setup: RunSetup, label: str, *, state: torch.Tensor | None = None,
                 epochs: int | None = None, epoch_steps: int | None = None, patience: int | None = None,
                 checkpoint_dir: Path | Folder | None = None, on_epoch_end=None):
        self.engine, self.setup, self.label = engine, setup, label
        self.state = state
        self.epochs = setup.config.epochs if epochs is None else epochs
        self.epoch_steps = steps_per_epoch(setup) if epoch_steps is None else epoch_steps
        self.patience = patience
        self.checkpoint_dir = checkpoint_dir
        self.on_epoch_end = on_epoch_end  # called with (loop, epoch row): how Tune gets its reports
        self.step_rows: list[dict] = []
        self.epoch_rows: list[dict] = []
        self.epoch, self.step_in_epoch = 0, 0
        self.best_val_loss, self.epochs_without_gain = math.inf, 0
        self.loader_state: torch.Tensor | None = None
        self._resume_rng: torch.Tensor | None = None
        if self.evolve:
            engine.plan(self.epochs * self.epoch_steps)

    @property
    def evolve(self) -> bool:
        return self.state is None

    @property
    def stopped_early(self) -> bool:
        return self.patience is not None and self.epochs_without_gain >= self.patience

    def run(self, progress: bool = True) -> None:
        config, device = self.setup.config, self.setup.device
        per_epoch = self.epoch_steps
        loader = self.setup.train_loader
        done = self.epoch * per_epoch + self.step_in_epoch
        with _progress(self.epochs * per_epoch, done, self.label, progress) as bar:
            while self.epoch < self.epochs and not self.stopped_early:
                started = time.perf_counter()
                if self._resume_rng is None:
                    self.loader_state = loader.generator.get_state()
                else:
                    loader.generator.set_state(self.loader_state)  # replay this epoch's batch order
                batches = iter(loader)
                for index in range(per_epoch):
                    x, y = next(batches)
                    if index < self.step_in_epoch:
                        continue  # already trained before the interruption
                    if self._resume_rng is not None:
                        torch.set_rng_state(self._resume_rng)  # as it was when the checkpoint was taken
                        self._resume_rng = None
                    self._one_step(x.to(device), y.to(device), bar)
                    self.step_in_epoch = index + 1
                    steps = self.epoch * per_epoch + self.step_in_epoch
                    if self.checkpoint_dir is not None and config.checkpoint_every \
                            and steps % config.checkpoint_every == 0:
                        self.save_checkpoint()
                if self._resume_rng is not None:  # the checkpoint was taken after this epoch's last step
                    torch.set_rng_state(self._resume_rng)
                    self._resume_rng = None
                self._end_epoch(time.perf_counter() - started)

    def _one_step(self, x, y, bar) -> None:
        if self.evolve:
            was_frozen = self.engine.frozen
            record = self.engine.step(x, y, self.epoch)
            self.step_rows.append(record)
            if self.engine.frozen and not was_frozen:
                print(f"[{self.label}] mask frozen after step {record.step}: {self.engine.freeze_reason}",
                      file=sys.stderr, flush=True)
            bar.set_postfix(kept=f"{record.kept_fraction:.2f}", energy=f"{record.best_energy:.2f}")
        else:
            self.engine.learner.step(self.state, x, y)
        bar.update(1)

    def _end_epoch(self, seconds: float) -> None:
        state = self.engine.best_state if self.evolve else self.state
        loader = self.setup.val_loader
        if loader:
            val = self.engine.validate(state, loader, self.setup.device)
        else:
            self.engine.finish()  # the driver's model gets the learner's weights, as validation would
            val = {"top1": None, "loss": None}
        row = {"epoch": self.epoch, "val_top1": val["top1"], "val_loss": val["loss"], "lr": self.engine.learner.learning_rate(),
               "kept_fraction": float(state.float().mean()), "frozen": self.evolve and self.engine.frozen,
               "seconds": seconds}
        self.epoch_rows.append(row)
        self.engine.end_epoch()
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self.loader_state = self.setup.train_loader.generator.get_state()  # the next epoch's batch order
        self._track_val_loss(val["loss"])
        _epoch_line(self.label, self.epochs, row)
        if self.on_epoch_end is not None:
            self.on_epoch_end(self, row)

    def _track_val_loss(self, loss: float | None) -> None:
        if loss is None or self.patience is None:
            return
        if loss < self.best_val_loss:
            self.best_val_loss, self.epochs_without_gain = loss, 0
        else:
            self.epochs_without_gain += 1

    # ---- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self, folder: str | Path | Folder | None = None) -> None:
        """Into `folder`, by default the loop's `checkpoint_dir`."""
        checkpoint.save_checkpoint(self.checkpoint_dir if folder is None else folder, {
            "engine": self.engine.checkpoint(), "num_units": self.engine.space.num_units,
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "loader_state": self.loader_state,
            "torch_rng": torch.get_rng_state(), "best_val_loss": self.best_val_loss,
            "epochs_without_gain": self.epochs_without_gain,
            "step_rows": [asdict(r) for r in self.step_rows], "epoch_rows": list(self.epoch_rows),
        })

    def restore(self, payload: dict) -> None:
        checkpoint.check_matches(payload["engine"]["learner"], self.engine.space.model.state_dict(),
                                 self.engine.space.num_units, payload["num_units"])
        self.engine.load_state_dict(payload["engine"])
        self.epoch, self.step_in_epoch = payload["epoch"], payload["step_in_epoch"]
        self.loader_state, self._resume_rng = payload["loader_state"], payload["torch_rng"]
        self.best_val_loss = payload.get("best_val_loss", math.inf)  # absent from checkpoints of older versions
        self.epochs_without_gain = payload.get("epochs_without_gain", 0)
        self.step_rows = [StepRecord(**row) for row in payload["step_rows"]]
        self.epoch_rows = list(payload["epoch_rows"])


def _epoch_line(label: str, epochs: int, row: dict) -> None:
    val = "n/a" if row["val_top1"] is None else f"{row['val_top1']:.2f}%"
    frozen = " (mask frozen)" if row["frozen"] else ""
    print(f"[{label}] epoch {row['epoch'] + 1}/{epochs}: val top-1 {val}, units kept "
          f"{row['kept_fraction']:.1%}, {row['seconds']:.1f}s{frozen}", file=sys.stderr, flush=True)
