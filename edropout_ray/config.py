"""One typed config for a run, validated once at the edge (YAML file plus `--set key=value`)."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import logging
import math
import typing
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from . import choices
from .choices import EXPORT_FORMATS, did_you_mean, is_object_spec, is_timm_spec
from .config_values import coerce
from .errors import ConfigError

log = logging.getLogger(__name__)

_CHOICES = {
    "method": choices.METHODS,
    "dropnet_strategy": choices.DROPNET_STRATEGIES,
    "dropnet_reset": choices.DROPNET_RESETS,
    "optimizer": choices.OPTIMIZERS,
    "selection": choices.SELECTIONS,
    "lr_schedule": choices.LR_SCHEDULES,
    "scoring": choices.SCORING_MODES,
    "score_precision": choices.SCORE_PRECISIONS,
    "device": choices.DEVICES,
    "layer_widths": choices.LAYER_WIDTHS,
    "train_while_searching": choices.TRAIN_WHILE_SEARCHING,
    "lr_after_freeze": choices.LR_AFTER_FREEZE,
}


@dataclass
class Config:
    """Every knob of a run. Population and evolution follow the paper (docs/algorithm.md); selection
    and the training recipe are the ones measured to train stably in short budgets (docs/quality.md,
    "What did not work"); jobs/paper/ holds the paper's own recipe."""

    # what to prune, on what
    model: str = "edropout_ray.models:small_cnn"
    dataset: str = "digits"
    data_dir: str = "data"
    image_size: int | None = None
    augment: bool = True
    val_fraction: float = 0.1
    # budget
    epochs: int = 30
    max_steps_per_epoch: int | None = None
    batch_size: int = 128
    # population and evolution
    population_size: int = 8
    temperature: float = 0.0
    p_init: float = 0.5
    mutation_factor: float = 0.9
    crossover_rate: float = 0.9
    selection: str = "paired"
    energy: str = "margin"
    kappa: float = 10.0
    # pruning schedule: freeze the best state once the population has converged, from this epoch on
    # (an epoch index, or a fraction of `epochs`; null = never)
    converge_after: int | float | None = None
    converge_patience: int = 10
    converge_diversity: float = 0.02
    # schedule: dense steps first (a share of the run's steps), so the search starts on trained weights;
    # the learner trains one of the `train_top` lowest-energy states (1 = the best); search: false freezes
    # the energy-best initial state at the first step after the warm-up (the no-search ablation)
    dense_warmup: float = 0.15
    train_top: int = 1
    search: bool = True
    # until the freeze the learner trains the best state(s) (the paper) or every unit (dense: every state is
    # then scored on equally trained weights); freeze_by: share of the run's steps by which the population
    # freezes at the latest (null: only when it converges)
    train_while_searching: str = "dense"
    freeze_by: float | None = 0.3
    # once the mask freezes the cosine rate goes on from where it is (continue) or starts again from lr and
    # anneals over the steps left (restart: the pruned network fine-tuned as after learning-rate rewinding)
    lr_after_freeze: str = "restart"
    # with prune_target_params or prune_target_macs: every group keeps the same share (uniform; the search
    # picks units), or the search also picks each group's width, every state brought to the target (searched)
    layer_widths: str = "searched"
    # layers whose output channels are never cut (fnmatch module-name patterns, as Torch-Pruning's
    # ignored_layers): the coupled group that cuts them gets no units (pruning/kept_layers.py)
    keep_layers: list[str] = dataclasses.field(default_factory=list)
    # learner
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "cosine"
    lr_step: int = 50
    lr_gamma: float = 0.1
    # run
    seed: int = 0
    dense_baseline: bool = False
    scoring: str = "auto"
    # scoring forwards: autocast precision, images in channels-last, samples per state (null: the whole batch)
    score_precision: str = "float32"
    score_channels_last: bool = False
    score_batch: int | None = None
    train_at_size: bool = True  # the learner trains the state's network at its own size where the model allows
    channel_multiple: int = 8  # every state keeps a multiple of this many units per layer (1: any count)
    device: str = "auto"
    num_workers: int = 0
    # pruning method: EDropout, or a baseline pruned to `prune_target` (fraction of units kept), to
    # `prune_target_params` (fraction of parameters kept) or to `prune_target_macs` (fraction of MACs kept)
    method: str = "edropout"
    prune_target: float = 0.5
    prune_target_params: float | None = None  # fraction of trainable parameters; overrides prune_target
    prune_target_macs: float | None = None  # fraction of MACs per sample at the run's input size; likewise
    # fraction of the dense model's latency on the run's device at batch latency_target_batch: a measured latency
    # model (artifacts/latency_model.py) turns it into a MACs fraction that holds every state
    prune_target_latency: float | None = None
    latency_target_batch: int = 128
    dropnet_strategy: str = "min"
    dropnet_fraction: float = 0.2
    dropnet_reset: str = "initial"
    dropnet_patience: int = 5
    l1_per_layer: bool = True
    kept_per_group: list[int] | None = None  # fixed_random: units kept per coupled group (compare: EDropout's)
    # distributed runtime (shards = 0: one process; N: N shard actors and a learner actor on Ray)
    shards: int = 0
    overlap: bool = False
    sync_every: int = 1
    shard_cpus: float = 1.0
    shard_gpus: float = 0.0
    shards_start_ahead: int = 20  # steps before the dense warm-up ends at which the shards are started
    learner_cpus: float = 1.0
    learner_gpus: float = 0.0
    learner_workers: int = 1  # data-parallel learner processes (each learner_cpus, learner_gpus); needs shards >= 1
    share_devices_across_phases: bool = True  # learner_workers > 1: one learner worker while the shards search
    # the population scored by the learner's workers themselves (the first `shards` of them, each a slice):
    # no shard processes; every worker scores while searching and trains all run long (distributed/coordinator.py)
    score_on_learners: bool = False
    # checkpoints: every N steps (0 = never) into the output folder, for --resume
    checkpoint_every: int = 0
    # files of the pruned model: pt2 (torch.export), onnx (checked by ONNX Runtime)
    export_formats: list[str] = dataclasses.field(default_factory=lambda: ["pt2"])
    # the report's latency of the exported model against the dense one, per batch size ([] = not timed)
    latency_batches: list[int] = dataclasses.field(default_factory=lambda: [1, 128])
    latency_repeats: int = 20  # at least 5: a median and a spread (artifacts/latency.py)
    # the report also evaluates the trained weights with every unit kept and under random masks (25/50/75% of
    # the units pruned), as the paper reports; false skips these four passes over the test set
    report_extra_masks: bool = True
    # faults on Ray: restarts of a lost learner actor (replayed from the latest checkpoint), and how
    # long the run waits for a silent cluster or a restarting actor before it stops
    learner_restarts: int = 3
    liveness_timeout: float = 30.0
    restart_timeout: float = 300.0

    def __post_init__(self) -> None:
        self._check_types()
        self._check_ranges()
        self._check_names()
        self.data_dir = absolute_location(self.data_dir)

    def _check_types(self) -> None:
        hints = _type_hints()
        for f in fields(self):
            value = getattr(self, f.name)
            expected = hints[f.name]
            coerced = coerce(f.name, value, expected)
            object.__setattr__(self, f.name, coerced)

    def _check_ranges(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        need(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        need(self.max_steps_per_epoch is None or self.max_steps_per_epoch >= 1,
             f"max_steps_per_epoch must be >= 1 or null, got {self.max_steps_per_epoch}")
        need(self.batch_size >= 2, f"batch_size must be >= 2, got {self.batch_size}")
        need(self.population_size >= 4,
             f"population_size must be >= 4 (the evolution operator draws 3 donors besides each member), "
             f"got {self.population_size}")
        need(self.temperature >= 0, f"temperature must be >= 0 (0 = greedy selection), got {self.temperature}")
        for name in ("p_init", "mutation_factor", "crossover_rate"):
            value = getattr(self, name)
            need(0 <= value <= 1, f"{name} must be in [0, 1], got {value}")
        need(0 <= self.val_fraction < 1, f"val_fraction must be in [0, 1), got {self.val_fraction}")
        need(0 < self.prune_target <= 1, f"prune_target (fraction of units kept) must be in (0, 1], got "
             f"{self.prune_target}")
        need(self.prune_target_params is None or 0 < self.prune_target_params <= 1,
             f"prune_target_params (fraction of parameters kept) must be in (0, 1] or null, got "
             f"{self.prune_target_params}")
        need(self.prune_target_macs is None or 0 < self.prune_target_macs <= 1,
             f"prune_target_macs (fraction of MACs kept) must be in (0, 1] or null, got {self.prune_target_macs}")
        need(self.prune_target_latency is None or 0 < self.prune_target_latency <= 1,
             f"prune_target_latency (fraction of the dense model's latency) must be in (0, 1] or null, got "
             f"{self.prune_target_latency}")
        need(self.latency_target_batch >= 1, f"latency_target_batch must be >= 1, got {self.latency_target_batch}")
        targets = [name for name in ("prune_target_params", "prune_target_macs", "prune_target_latency")
                   if getattr(self, name) is not None]
        need(len(targets) <= 1, f"{' and '.join(targets)} are all set: a run is held to one size; set the others "
             "to null")
        need(0 < self.dropnet_fraction < 1, f"dropnet_fraction must be in (0, 1), got {self.dropnet_fraction}")
        need(self.dropnet_patience >= 1, f"dropnet_patience must be >= 1, got {self.dropnet_patience}")
        need(0 <= self.dense_warmup < 1, f"dense_warmup (share of the run's steps trained dense first) must be in "
             f"[0, 1), got {self.dense_warmup}")
        need(self.freeze_by is None or self.dense_warmup < self.freeze_by <= 1,
             f"freeze_by (share of the run's steps by which the mask freezes) must be in (dense_warmup, 1] or null, "
             f"got {self.freeze_by}")
        need(1 <= self.train_top <= self.population_size,
             f"train_top must be in [1, population_size={self.population_size}], got {self.train_top}")
        need(self.method != "fixed_random" or bool(self.kept_per_group),
             "method fixed_random needs kept_per_group (units kept per coupled group, e.g. from an EDropout run's "
             "final mask; edropout-ray compare fills it in)")
        need(self.kappa > 0, f"kappa must be > 0, got {self.kappa}")
        self.converge_after = _converge_after(self.converge_after)
        need(self.converge_patience >= 1, f"converge_patience must be >= 1, got {self.converge_patience}")
        need(0 <= self.converge_diversity < 1, f"converge_diversity (fraction of units) must be in [0, 1), got "
             f"{self.converge_diversity}")
        need(self.lr > 0 and math.isfinite(self.lr), f"lr must be a positive number, got {self.lr}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(self.lr_step >= 1, f"lr_step (epochs between learning-rate decays) must be >= 1, got {self.lr_step}")
        need(0 < self.lr_gamma <= 1, f"lr_gamma must be in (0, 1], got {self.lr_gamma}")
        need(self.image_size is None or self.image_size >= 1, f"image_size must be >= 1, got {self.image_size}")
        need(self.shards >= 0, f"shards must be >= 0 (0 = one process), got {self.shards}")
        need(self.shards_start_ahead >= 0, f"shards_start_ahead must be >= 0 steps, got {self.shards_start_ahead}")
        need(self.score_batch is None or self.score_batch >= 1,
             f"score_batch (samples per state scored) must be >= 1 or null (the whole batch), got {self.score_batch}")
        need(self.sync_every >= 1, f"sync_every must be >= 1, got {self.sync_every}")
        for name in ("shard_cpus", "shard_gpus", "learner_cpus", "learner_gpus"):
            need(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        need(self.checkpoint_every >= 0, f"checkpoint_every must be >= 0 (0 = never), got {self.checkpoint_every}")
        need(self.learner_workers >= 1, f"learner_workers must be >= 1, got {self.learner_workers}")
        need(self.learner_workers == 1 or self.shards >= 1,
             f"learner_workers: {self.learner_workers} needs the Ray runtime: set shards >= 1 (with shards: 0 the run "
             "is one process)")
        need(not self.score_on_learners or 1 <= self.shards <= self.learner_workers,
             f"score_on_learners puts the population's {self.shards} shard(s) in the learner's "
             f"{self.learner_workers} worker(s): set 1 <= shards <= learner_workers")
        need(self.batch_size >= self.learner_workers,
             f"batch_size ({self.batch_size}) must be at least learner_workers ({self.learner_workers}): the global "
             "batch is split over them")
        need(self.learner_restarts >= 0, f"learner_restarts must be >= 0, got {self.learner_restarts}")
        for name in ("liveness_timeout", "restart_timeout"):
            need(getattr(self, name) > 0, f"{name} must be a number of seconds > 0, got {getattr(self, name)}")
        need(self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}")
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:  # the closest name is looked for only then: a sweep loads many
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}"
                                  f"{did_you_mean(getattr(self, name), allowed)}")
        need(isinstance(self.keep_layers, list) and all(isinstance(p, str) and p for p in self.keep_layers),
             f"keep_layers must be a list of module-name patterns such as ['patch_embed.proj', 'layer4.*'], got "
             f"{self.keep_layers!r}")
        wrong = [f for f in self.export_formats if f not in EXPORT_FORMATS]
        need(bool(self.export_formats) and not wrong,
             f"export_formats must be a non-empty list of {', '.join(EXPORT_FORMATS)}, got {self.export_formats!r}"
             f"{did_you_mean(wrong[0], EXPORT_FORMATS) if wrong else ''}")
        need(self.channel_multiple >= 1, f"channel_multiple must be >= 1 (1: no rounding), got {self.channel_multiple}")
        need(all(b >= 1 for b in self.latency_batches) and self.latency_repeats >= 5,
             f"latency_batches must be batch sizes >= 1 ([] to skip timing) and latency_repeats >= 5 (a median and "
             f"a spread), got "
             f"{self.latency_batches!r} and {self.latency_repeats!r}")

    def _check_names(self) -> None:
        """Energy, model and dataset by name, without importing anything optional or building anything."""
        if self.energy not in choices.ENERGIES and not is_object_spec(self.energy):
            raise ConfigError(f"energy must be one of {', '.join(choices.ENERGIES)} or 'package.module:function', "
                              f"got {self.energy!r}{did_you_mean(self.energy, choices.ENERGIES)}")
        if self.model.startswith(choices.TIMM_PREFIX):
            if not is_timm_spec(self.model):
                raise ConfigError(f"model {self.model!r} must look like 'timm:<name>' (e.g. timm:resnet18)")
        elif ":" in self.model:
            if not is_object_spec(self.model):
                raise ConfigError(f"model {self.model!r} must look like 'package.module:callable'")
        elif self.model not in (known := _torchvision_models()):
            raise ConfigError(f"unknown torchvision model {self.model!r}{did_you_mean(self.model, known)}; pick a "
                              "classifier from torchvision.models (e.g. resnet18, mobilenet_v2), a timm model as "
                              "'timm:<name>', or 'package.module:callable'")
        datasets = choices.DATASETS + (choices.STREAMED_DATASET,)
        if self.dataset not in datasets:
            raise ConfigError(f"dataset must be one of {', '.join(datasets)}, got {self.dataset!r}"
                              f"{did_you_mean(self.dataset, datasets)}")

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        known = {f.name for f in fields(cls)}
        unknown = [key for key in values if key not in known]
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, known, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ConfigError(f"unknown config key {', '.join(hints)}; every key is in docs/config.md")
        return cls(**values)

    @property
    def size_target(self) -> tuple[str, float] | None:
        """(cost, fraction) of the size every state is held to ('params' or 'macs'), or None (units). A
        latency target must have been turned into a MACs target first (train.resolve_latency_target)."""
        if self.prune_target_latency is not None:
            raise ConfigError("prune_target_latency is held through a measured latency model: the run turns it into "
                              "prune_target_macs first (train.resolve_latency_target); this entry point does not")
        if self.prune_target_params is not None:
            return "params", self.prune_target_params
        if self.prune_target_macs is not None:
            return "macs", self.prune_target_macs
        return None

    @property
    def converge_epoch(self) -> int | None:
        """The first epoch in which the population may freeze (None: never)."""
        if isinstance(self.converge_after, float):
            return int(self.converge_after * self.epochs)
        return self.converge_after

    def idle_converge_after(self) -> str | None:
        """Why `converge_after` cannot act in this run (the freeze_by deadline comes first), or None."""
        epoch, deadline = self.converge_epoch, None if self.freeze_by is None else self.freeze_by * self.epochs
        if self.method != "edropout" or not self.search or epoch is None or deadline is None or epoch < deadline:
            return None
        return (f"converge_after {self.converge_after} has no effect: its epoch {epoch} comes at or after the "
                f"freeze_by deadline ({self.freeze_by} of {self.epochs} epochs: epoch {deadline:g}), which freezes "
                f"the population first; set freeze_by: null to freeze on convergence only, or converge_after < "
                f"{deadline:g}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "Config":
        return Config.from_dict(self.to_dict() | changes)


def absolute_location(location: str) -> str:
    """A path in a config means the same folder wherever the run goes on: a relative one is made absolute
    against the directory the command started in, here at load, before Tune gives each trial another
    working directory (or a Ray task runs elsewhere). A URI (s3://...) is kept as written."""
    return location if "://" in location else str(Path(location).expanduser().absolute())


def _converge_after(value: int | float | None) -> int | float | None:
    """`1` and `1.0` mean the same: a whole number is an epoch index (kept as an int), a value in (0, 1)
    a fraction of the epochs; 0 (either way the first epoch) is an index too."""
    if value is None or (isinstance(value, int) and value >= 0):
        return value
    if float(value).is_integer() and value >= 0:
        return int(value)
    if 0 < value < 1:
        return value
    raise ConfigError(f"converge_after must be a whole epoch index (0, 1, 15, ...), a fraction of the epochs in "
                      f"(0, 1) such as 0.5, or null (never freeze), got {value}")


@functools.cache
def _type_hints() -> dict:
    """The declared type of every key, read once (a sweep checks thousands of trial configs)."""
    return typing.get_type_hints(Config)


@functools.cache
def _torchvision_models() -> tuple[str, ...]:
    """The classifier names torchvision can build (listed, none is built)."""
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


def parse_override(text: str) -> tuple[str, object]:
    """'key=value' with the value read as YAML (so 0.5, true, null and [1, 2] work)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({error})") from None
    return key.strip(), value


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of key: value, got {type(loaded).__name__}")
        values.update(loaded)
    for text in overrides:
        key, value = parse_override(text)
        values[key] = value
    config = Config.from_dict(values)
    if (idle := config.idle_converge_after()) is not None:
        log.warning(idle)
    return config
