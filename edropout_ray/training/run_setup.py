"""A run's setup: data loaders, device and model recipe, built once from the config.

Below the trainer, the training loop, the baselines and the report, which all read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..config import Config
from ..data import DataSplits, load_dataset, make_loader
from ..errors import ConfigError
from ..models import ModelRecipe, is_torchvision_name
from ..pruning.scoring_options import ScoringOptions
from ..pruning.space import PruningSpace
from .phase_cache import PhaseCache


def space_for(model: torch.nn.Module, example_inputs: torch.Tensor, config: Config) -> PruningSpace:
    """`model`'s pruning space as `config` asks for it (scoring, its options, kept layers): the driver's and
    every learner worker's alike."""
    return PruningSpace(model, example_inputs, scoring=config.scoring, options=ScoringOptions.of(config),
                        keep_layers=tuple(config.keep_layers))


@dataclass
class RunSetup:
    config: Config
    data: DataSplits  # or streaming.StreamingSplits: num_classes, in_channels, image_size, the loaders
    device: torch.device
    train_loader: object
    val_loader: object
    test_loader: object
    phase_cache: PhaseCache | None = None  # dense phases trained once for many runs (training/phase_cache.py)

    @property
    def recipe(self) -> ModelRecipe:
        return ModelRecipe(self.config.model, self.data.num_classes, self.data.in_channels, self.data.image_size,
                           self.config.seed)

    def new_model(self) -> torch.nn.Module:
        """The same initial weights every time for the same seed (EDropout and its dense baseline)."""
        return self.recipe.build().to(self.device)

    def new_space(self) -> PruningSpace:
        """The model of `new_model()` traced into its pruning space: how every entry point starts a run."""
        return space_for(self.new_model(), self.example_inputs(), self.config)

    def example_inputs(self) -> torch.Tensor:
        x, _ = next(iter(self.test_loader))
        return x[:2].to(self.device)


@dataclass
class PrunedRun:
    """What every method's training ends with: the final state and its history (EDropout also has
    per-step rows and the reason its mask froze)."""

    state: torch.Tensor
    epoch_rows: list[dict]
    step_rows: list = field(default_factory=list)
    freeze_reason: str | None = None
    resources: dict | None = None  # what a run on Ray held and used (distributed/usage.py)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device is 'cuda' but no CUDA device is visible; use device: auto or cpu")
    return torch.device(name)


def prepare(config: Config) -> RunSetup:
    """The data, device and loaders of a run. A `parquet` dataset streams through Ray Data: the command
    connects to Ray first (a lower layer does not start a cluster)."""
    if config.dataset == "parquet":
        return _prepare_parquet(config)
    # the dataset's name was checked when the config was loaded (choices.DATASETS)
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


def _prepare_parquet(config: Config) -> RunSetup:
    """Shards written by `edropout-ray convert` (local or s3://), streamed by Ray Data on the connected Ray."""
    from ..data.streaming import load_streaming

    data = load_streaming(config.data_dir, image_size=config.image_size or 224, channels=3,
                          batch_size=config.batch_size, seed=config.seed,
                          eval_batch_size=max(config.batch_size, 256))
    return RunSetup(config, data, pick_device(config.device), data.train, data.val, data.test)


def steps_per_epoch(setup: RunSetup) -> int:
    steps = len(setup.train_loader)
    cap = setup.config.max_steps_per_epoch
    return min(steps, cap) if cap else steps
