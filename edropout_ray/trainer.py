"""A whole EDropout run in one process: data, model, training loop, then the report.

`run(config, output_dir)` is the plain function a Tune trainable or a Ray job wraps.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import history
from .config import Config
from .data import DATASETS, DataSplits, load_dataset, make_loader
from .engine import EDropoutEngine
from .errors import ConfigError
from .evaluation import evaluate
from .models import build_model, is_torchvision_name
from .report import build_report, write_report
from .space import PruningSpace

log = logging.getLogger(__name__)


@dataclass
class RunSetup:
    config: Config
    data: DataSplits
    device: torch.device
    train_loader: object
    val_loader: object
    test_loader: object

    def new_model(self) -> torch.nn.Module:
        """The same initial weights every time for the same seed (EDropout and its dense baseline)."""
        torch.manual_seed(self.config.seed)
        model = build_model(self.config.model, self.data.num_classes, self.data.in_channels, self.data.image_size)
        return model.to(self.device)

    def example_inputs(self) -> torch.Tensor:
        x, _ = next(iter(self.test_loader))
        return x[:2].to(self.device)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device is 'cuda' but no CUDA device is visible; use device: auto or cpu")
    return torch.device(name)


def prepare(config: Config) -> RunSetup:
    if config.dataset not in DATASETS:
        raise ConfigError(f"dataset must be one of {', '.join(DATASETS)}, got {config.dataset!r}")
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


def steps_per_epoch(setup: RunSetup) -> int:
    steps = len(setup.train_loader)
    cap = setup.config.max_steps_per_epoch
    return min(steps, cap) if cap else steps


def _progress(total: int, description: str, enabled: bool):
    return tqdm(total=total, desc=description, unit="step", disable=not (enabled and sys.stderr.isatty()),
                dynamic_ncols=True, leave=False)


def train_loop(engine: EDropoutEngine, setup: RunSetup, label: str, progress: bool, evolve: bool = True):
    """Epochs of engine steps; returns (step rows, epoch rows). With evolve=False: plain training."""
    config, device = setup.config, setup.device
    space = engine.space
    step_rows, epoch_rows = [], []
    per_epoch = steps_per_epoch(setup)
    all_kept = torch.ones(space.num_units, dtype=torch.bool)
    with _progress(config.epochs * per_epoch, label, progress) as bar:
        for epoch in range(config.epochs):
            started = time.perf_counter()
            for i, (x, y) in enumerate(setup.train_loader):
                if i >= per_epoch:
                    break
                x, y = x.to(device), y.to(device)
                if evolve:
                    record = engine.step(x, y, epoch)
                    step_rows.append(record)
                    bar.set_postfix(loss=f"{record.loss:.3f}", kept=f"{record.kept_fraction:.2f}")
                else:
                    engine.learner.step(all_kept, x, y)
                bar.update(1)
            state = engine.best_state if evolve else all_kept
            val = evaluate(space, state, setup.val_loader, device) if setup.val_loader else {"top1": None, "loss": None}
            row = {"epoch": epoch, "val_top1": val["top1"], "val_loss": val["loss"], "lr": engine.learner.lr,
                   "kept_fraction": float(state.float().mean()), "frozen": evolve and engine.frozen,
                   "seconds": time.perf_counter() - started}
            epoch_rows.append(row)
            engine.end_epoch()
            _epoch_line(label, config.epochs, row)
    return step_rows, epoch_rows


def _epoch_line(label: str, epochs: int, row: dict) -> None:
    val = "n/a" if row["val_top1"] is None else f"{row['val_top1']:.2f}%"
    frozen = " (mask frozen)" if row["frozen"] else ""
    print(f"[{label}] epoch {row['epoch'] + 1}/{epochs}: val top-1 {val}, units kept "
          f"{row['kept_fraction']:.1%}, {row['seconds']:.1f}s{frozen}", file=sys.stderr, flush=True)


def run(config: Config, output_dir: str | Path, progress: bool = True) -> dict:
    """Train with EDropout, export the pruned model, write every artifact, return the report."""
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    setup = prepare(config)
    model = setup.new_model()
    space = PruningSpace(model, setup.example_inputs(), scoring=config.scoring)
    log.info("pruning space: %s", space.describe())
    engine = EDropoutEngine(space, config)
    step_rows, epoch_rows = train_loop(engine, setup, "edropout", progress)
    final_mask = engine.best_state.clone()
    edropout_seconds = time.perf_counter() - started

    dense = None
    if config.dense_baseline:
        dense_space = PruningSpace(setup.new_model(), setup.example_inputs(), scoring=config.scoring)
        dense_engine = EDropoutEngine(dense_space, config)
        _, dense_epochs = train_loop(dense_engine, setup, "dense", progress, evolve=False)
        all_kept = torch.ones(dense_space.num_units, dtype=torch.bool)
        dense = {"test": evaluate(dense_space, all_kept, setup.test_loader, setup.device), "epochs": dense_epochs}

    np.save(output / "final_mask.npy", final_mask.cpu().numpy())
    history.write_rows(step_rows, output / history.HISTORY_FILE)
    history.write_rows(epoch_rows, output / history.EPOCHS_FILE)
    history.plot_history([_as_dict(r) for r in step_rows], epoch_rows, output / history.PLOT_FILE,
                         dense["epochs"] if dense else None)
    report = build_report(space, final_mask, setup, output, dense=dense,
                          converged_at_step=_converged_at(step_rows), edropout_seconds=edropout_seconds)
    report["wall_seconds"] = time.perf_counter() - started
    write_report(report, output)
    (output / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    return report


def _as_dict(row) -> dict:
    return asdict(row)


def _converged_at(step_rows) -> int | None:
    for row in step_rows:
        if row.frozen:
            return row.step
    return None
