"""A whole EDropout run: data, model, training loop (one process or Ray), checkpoints, report.

`run(config, output_dir)` is the plain function a Tune trainable or a Ray job wraps.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import checkpoint, history
from .config import Config
from .data import DATASETS, DataSplits, load_dataset, make_loader
from .engine import EDropoutEngine, StepRecord
from .errors import CheckpointError, ConfigError, RunLostError
from .evaluation import evaluate
from .models import ModelRecipe, is_torchvision_name
from .report import build_report, write_report
from .space import PruningSpace
from .storage import Folder, open_folder

log = logging.getLogger(__name__)


@dataclass
class RunSetup:
    config: Config
    data: DataSplits  # or streaming.StreamingSplits: num_classes, in_channels, image_size, the loaders
    device: torch.device
    train_loader: object
    val_loader: object
    test_loader: object

    @property
    def recipe(self) -> ModelRecipe:
        return ModelRecipe(self.config.model, self.data.num_classes, self.data.in_channels, self.data.image_size,
                           self.config.seed)

    def new_model(self) -> torch.nn.Module:
        """The same initial weights every time for the same seed (EDropout and its dense baseline)."""
        return self.recipe.build().to(self.device)

    def example_inputs(self) -> torch.Tensor:
        x, _ = next(iter(self.test_loader))
        return x[:2].to(self.device)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device is 'cuda' but no CUDA device is visible; use device: auto or cpu")
    return torch.device(name)


def prepare(config: Config, address: str | None = None) -> RunSetup:
    if config.dataset == "parquet":
        return _prepare_parquet(config, address)
    if config.dataset not in DATASETS:
        raise ConfigError(f"dataset must be one of {', '.join(DATASETS + ('parquet',))}, got {config.dataset!r}")
    channels = 3 if is_torchvision_name(config.model) else None  # torchvision classifiers take RGB
    data = load_dataset(config.dataset, config.data_dir, image_size=config.image_size, channels=channels,
                        seed=config.seed, val_fraction=config.val_fraction, augment=config.augment)
    device = pick_device(config.device)
    train_loader = make_loader(data.train, config.batch_size, shuffle=True, seed=config.seed,
                               num_workers=config.num_workers, drop_last=len(data.train) > config.batch_size)
    eval_batch = max(config.batch_size, 256)
    val_loader = make_loader(data.val, eval_batch, shuffle=False, num_workers=config.num_workers) \
        if len(data.val) else None
    test_loader = make_loader(data.test, eval_batch, shuffle=False, num_workers=config.num_workers)
    return RunSetup(config, data, device, train_loader, val_loader, test_loader)


def _prepare_parquet(config: Config, address: str | None = None) -> RunSetup:
    """Shards written by `edropout-ray convert` (local or s3://), streamed by Ray Data, which needs Ray."""
    from .cluster import connect
    from .streaming import load_streaming

    connect(config, address)
    data = load_streaming(config.data_dir, image_size=config.image_size or 224, channels=3,
                          batch_size=config.batch_size, seed=config.seed,
                          eval_batch_size=max(config.batch_size, 256))
    return RunSetup(config, data, pick_device(config.device), data.train, data.val, data.test)


def steps_per_epoch(setup: RunSetup) -> int:
    steps = len(setup.train_loader)
    cap = setup.config.max_steps_per_epoch
    return min(steps, cap) if cap else steps


def _progress(total: int, done: int, description: str, enabled: bool):
    return tqdm(total=total, initial=done, desc=description, unit="step", dynamic_ncols=True, leave=False,
                disable=not (enabled and sys.stderr.isatty()))


class TrainLoop:
    """Epochs of engine steps, with validation per epoch and checkpoints every N steps."""

    def __init__(self, engine: EDropoutEngine, setup: RunSetup, label: str, *, evolve: bool = True,
                 checkpoint_dir: Path | Folder | None = None, on_epoch_end=None):
        self.engine, self.setup, self.label, self.evolve = engine, setup, label, evolve
        self.checkpoint_dir = checkpoint_dir
        self.on_epoch_end = on_epoch_end  # called with (loop, epoch row): how Tune gets its reports
        self.step_rows: list[dict] = []
        self.epoch_rows: list[dict] = []
        self.epoch, self.step_in_epoch = 0, 0
        self.loader_state: torch.Tensor | None = None
        self._resume_rng: torch.Tensor | None = None

    def run(self, progress: bool = True) -> None:
        config, device = self.setup.config, self.setup.device
        per_epoch = steps_per_epoch(self.setup)
        all_kept = torch.ones(self.engine.space.num_units, dtype=torch.bool)
        loader = self.setup.train_loader
        done = self.epoch * per_epoch + self.step_in_epoch
        with _progress(config.epochs * per_epoch, done, self.label, progress) as bar:
            while self.epoch < config.epochs:
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
                    self._one_step(x.to(device), y.to(device), all_kept, bar)
                    self.step_in_epoch = index + 1
                    if config.checkpoint_every and self.engine.step_count % config.checkpoint_every == 0:
                        self.save_checkpoint()
                if self._resume_rng is not None:  # the checkpoint was taken after this epoch's last step
                    torch.set_rng_state(self._resume_rng)
                    self._resume_rng = None
                self._end_epoch(all_kept, time.perf_counter() - started)

    def _one_step(self, x, y, all_kept, bar) -> None:
        if self.evolve:
            record = self.engine.step(x, y, self.epoch)
            self.step_rows.append(record)
            bar.set_postfix(kept=f"{record.kept_fraction:.2f}", energy=f"{record.best_energy:.2f}")
        else:
            self.engine.learner.step(all_kept, x, y)
        bar.update(1)

    def _end_epoch(self, all_kept, seconds: float) -> None:
        self.engine.finish()  # the driver's model gets the learner's weights for validation
        state = self.engine.best_state if self.evolve else all_kept
        loader = self.setup.val_loader
        val = evaluate(self.engine.space, state, loader, self.setup.device) if loader else {"top1": None, "loss": None}
        row = {"epoch": self.epoch, "val_top1": val["top1"], "val_loss": val["loss"], "lr": self.engine.learner.lr,
               "kept_fraction": float(state.float().mean()), "frozen": self.evolve and self.engine.frozen,
               "seconds": seconds}
        self.epoch_rows.append(row)
        self.engine.end_epoch()
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self.loader_state = self.setup.train_loader.generator.get_state()  # the next epoch's batch order
        _epoch_line(self.label, self.setup.config.epochs, row)
        if self.on_epoch_end is not None:
            self.on_epoch_end(self, row)

    # ---- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        checkpoint.save_checkpoint(self.checkpoint_dir, {
            "engine": self.engine.state_dict(), "num_units": self.engine.space.num_units,
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "loader_state": self.loader_state,
            "torch_rng": torch.get_rng_state(),
            "step_rows": [asdict(r) for r in self.step_rows], "epoch_rows": list(self.epoch_rows),
        })

    def restore(self, payload: dict) -> None:
        checkpoint.check_matches(payload["engine"]["learner"], self.engine.space.model.state_dict(),
                                 self.engine.space.num_units, payload["num_units"])
        self.engine.load_state_dict(payload["engine"])
        self.epoch, self.step_in_epoch = payload["epoch"], payload["step_in_epoch"]
        self.loader_state, self._resume_rng = payload["loader_state"], payload["torch_rng"]
        self.step_rows = [StepRecord(**row) for row in payload["step_rows"]]
        self.epoch_rows = list(payload["epoch_rows"])


def _epoch_line(label: str, epochs: int, row: dict) -> None:
    val = "n/a" if row["val_top1"] is None else f"{row['val_top1']:.2f}%"
    frozen = " (mask frozen)" if row["frozen"] else ""
    print(f"[{label}] epoch {row['epoch'] + 1}/{epochs}: val top-1 {val}, units kept "
          f"{row['kept_fraction']:.1%}, {row['seconds']:.1f}s{frozen}", file=sys.stderr, flush=True)


def make_engine(space: PruningSpace, setup: RunSetup, address: str | None = None) -> EDropoutEngine:
    """One process for `shards: 0`; shard actors and a learner actor on Ray otherwise."""
    config = setup.config
    if config.shards == 0:
        return EDropoutEngine(space, config)
    from .cluster import connect
    from .coordinator import start_distributed_engine

    connect(config, address)
    return start_distributed_engine(space, config, setup.recipe)


def resume_config(output: Folder, given: Config | None) -> Config:
    """The config saved with the run; a config given with --resume must agree with it."""
    saved = checkpoint.load_saved_config(output)
    if given is not None:
        differing = [k for k, v in given.to_dict().items() if saved.to_dict()[k] != v]
        if differing:
            raise CheckpointError(f"--resume continues the run in {output} with its saved config; these keys differ "
                                  f"from it: {', '.join(differing)}. Drop --config/--set, or start a new run")
    return saved


def run(config: Config | None, output_dir: str | Path, progress: bool = True, *, resume: bool = False,
        address: str | None = None) -> dict:
    """Train with EDropout, export the pruned model, write every artifact, return the report.

    `output_dir` is a local folder or a pyarrow.fs URI (s3://...): config and checkpoints are written
    there as the run goes; with a URI the other artifacts are made in a local folder, then uploaded.
    """
    storage = open_folder(output_dir)
    payload = None
    if resume:
        config = resume_config(storage, config)
        payload = checkpoint.load_checkpoint(storage)  # before anything is written: a bad one is left alone
    elif config is None:
        raise ValueError("a config is needed unless resuming")
    with _local_folder(storage) as output:
        return _run(config, storage, output, payload, progress, address)


@contextlib.contextmanager
def _local_folder(storage: Folder):
    if storage.is_local:
        Path(storage.path).mkdir(parents=True, exist_ok=True)
        yield Path(storage.path)
        return
    with tempfile.TemporaryDirectory(prefix="edropout-run-") as staging:
        yield Path(staging)
        storage.upload(Path(staging))


def _run(config: Config, storage: Folder, output: Path, payload: dict | None, progress: bool,
         address: str | None) -> dict:
    started = time.perf_counter()
    setup = prepare(config, address)
    space = PruningSpace(setup.new_model(), setup.example_inputs(), scoring=config.scoring)
    log.info("pruning space: %s", space.describe())
    checkpoint.save_config(storage, config)
    if config.method == "edropout":
        final_mask, step_rows, epoch_rows = _train_edropout(space, setup, storage, payload, progress, address)
    else:
        if payload is not None or config.shards:
            raise ConfigError(f"method {config.method!r} runs in one process without checkpoints: drop --resume "
                              "and shards")
        from .baselines import run_baseline

        pruned = run_baseline(space, config, setup)
        final_mask, step_rows, epoch_rows = pruned.state, [], pruned.epoch_rows
    edropout_seconds = time.perf_counter() - started

    dense = None
    if config.dense_baseline:
        dense_space = PruningSpace(setup.new_model(), setup.example_inputs(), scoring=config.scoring)
        dense_loop = TrainLoop(EDropoutEngine(dense_space, config), setup, "dense", evolve=False)
        dense_loop.run(progress)
        all_kept = torch.ones(dense_space.num_units, dtype=torch.bool)
        dense = {"test": evaluate(dense_space, all_kept, setup.test_loader, setup.device),
                 "epochs": dense_loop.epoch_rows}

    np.save(output / "final_mask.npy", final_mask.cpu().numpy())
    if step_rows:
        history.write_rows(step_rows, output / history.HISTORY_FILE)
    history.write_rows(epoch_rows, output / history.EPOCHS_FILE)
    history.plot_history([asdict(r) for r in step_rows], epoch_rows, output / history.PLOT_FILE,
                         dense["epochs"] if dense else None)
    report = build_report(space, final_mask, setup, output, dense=dense,
                          converged_at_step=_converged_at(step_rows), edropout_seconds=edropout_seconds)
    report["wall_seconds"] = time.perf_counter() - started
    report["shards"] = config.shards
    write_report(report, output)
    return report


def _train_edropout(space: PruningSpace, setup: RunSetup, output: Folder, payload: dict | None, progress: bool,
                    address: str | None):
    """The EDropout loop on the configured runtime; returns (final mask, step rows, epoch rows)."""
    engine = make_engine(space, setup, address)
    try:
        loop = TrainLoop(engine, setup, "edropout", checkpoint_dir=output)
        if payload is not None:
            loop.restore(payload)
        loop.run(progress)
        engine.finish()  # again: a resumed run that had already finished runs no epoch
    except RunLostError as error:
        raise type(error)(f"{error}; {checkpoint.resume_hint(output)}") from None
    finally:
        engine.close()
    return engine.best_state.clone(), loop.step_rows, loop.epoch_rows


def _converged_at(step_rows) -> int | None:
    for row in step_rows:
        if row.frozen:
            return row.step
    return None
