"""A sweep file, read and checked whole before Ray starts: every value of every search list is a valid run.

Nothing here imports Ray or torch, so a mistake in a sweep file is answered at once.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..config import Config, absolute_location, parse_override
from ..errors import ConfigError

log = logging.getLogger(__name__)

SCHEDULERS = ("fifo", "asha", "pbt")
# keys PBT may change mid-run: they steer selection and the schedule, not the shapes of the run
MUTABLE_KEYS = ("temperature", "mutation_factor", "crossover_rate", "converge_after", "converge_patience", "kappa",
                "sync_every")
DOMAIN_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
SPEC_FILE = "sweep.json"
# every value is checked on its own; every combination too while there are at most this many
# (a config is built in about a millisecond)
MAX_COMBINATIONS_CHECKED = 1000


@dataclass
class SweepSpec:
    """A sweep file: fixed `base` keys, a `search` space, and how to explore it."""

    base: dict = field(default_factory=dict)
    search: dict = field(default_factory=dict)
    num_samples: int = 1
    scheduler: str = "fifo"
    params_weight: float = 0.0  # objective = val top-1 - params_weight * (% of parameters kept)
    grace_period: int = 1  # ASHA: epochs before a trial may be stopped
    perturbation_interval: int = 2  # PBT: epochs between exploit/explore
    mutations: dict = field(default_factory=dict)  # PBT: key -> domain, keys from MUTABLE_KEYS
    max_concurrent: int = 0  # 0 = as many as the cluster fits
    max_failures: int = 2  # restarts of a failed trial from its last checkpoint (Tune's FailureConfig)

    def __post_init__(self) -> None:
        self._resolve_paths()
        keys = set(Config.__dataclass_fields__)
        for section in ("search", "mutations"):
            for key, domain in getattr(self, section).items():
                if key not in keys:
                    raise ConfigError(f"sweep {section}: {key!r} is not a config key")
                check_domain(key, domain)
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"sweep scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        if self.scheduler == "pbt":
            if not self.mutations:
                raise ConfigError("scheduler pbt needs `mutations`: keys among " + ", ".join(MUTABLE_KEYS))
            fixed = [k for k in self.mutations if k not in MUTABLE_KEYS]
            if fixed:
                raise ConfigError(f"PBT cannot change {', '.join(fixed)} mid-run (they fix the run's shapes); "
                                  f"mutable keys: {', '.join(MUTABLE_KEYS)}")
        if self.num_samples < 1:
            raise ConfigError(f"num_samples must be >= 1, got {self.num_samples}")
        if not isinstance(self.max_failures, int) or self.max_failures < 0:
            raise ConfigError(f"max_failures (restarts of a failed trial) must be an integer >= 0, got "
                              f"{self.max_failures!r}")
        for idle in sorted(check_trials(self.base, self.axes())):
            log.warning("sweep: %s", idle)

    def _resolve_paths(self) -> None:
        """Relative paths against the directory the sweep started in: trials run in folders of their own."""
        if isinstance(self.base.get("data_dir"), str):
            self.base = {**self.base, "data_dir": absolute_location(self.base["data_dir"])}
        domain = self.search.get("data_dir")
        if isinstance(domain, dict) and len(domain) == 1 and isinstance(next(iter(domain.values())), list):
            kind, values = next(iter(domain.items()))
            self.search = {**self.search, "data_dir": {kind: [absolute_location(v) if isinstance(v, str) else v
                                                              for v in values]}}

    def axes(self) -> dict[str, tuple[str, list]]:
        """Every swept key: (its section, the values a trial may get: a list's values, a range's ends)."""
        axes = {key: ("mutations", points(domain)) for key, domain in self.mutations.items()}
        for key, domain in self.search.items():
            mutated = axes.get(key, ("", []))[1]
            axes[key] = ("search", points(domain) + [v for v in mutated if v not in points(domain)])
        return axes

    def first_trial(self) -> Config:
        """The config of the first value of every swept key (its resources are every trial's)."""
        return Config.from_dict({**self.base, **{key: values[0] for key, (_, values) in self.axes().items()}})


def check_domain(key: str, spec) -> None:
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DOMAIN_KINDS:
        raise ConfigError(f"search space of {key!r} must be one of {{{', '.join(DOMAIN_KINDS)}: values}}, got "
                          f"{spec!r}")
    kind, values = next(iter(spec.items()))
    if not isinstance(values, list) or not values:
        raise ConfigError(f"search space of {key!r}: {kind} needs a non-empty list")
    if kind in ("uniform", "loguniform", "randint"):
        numbers = len(values) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if not numbers or values[0] >= values[1] or (kind == "loguniform" and values[0] <= 0) or \
                (kind == "randint" and not all(isinstance(v, int) for v in values)):
            raise ConfigError(f"search space of {key!r}: {kind} needs [low, high] with low < high"
                              f"{' > 0' if kind == 'loguniform' else ''}{', integers' if kind == 'randint' else ''}"
                              f", got {values!r}")


def points(spec: dict) -> list:
    """The values a domain can give that a check must try: all of a list, the ends of a range."""
    kind, values = next(iter(spec.items()))
    if kind == "randint":  # Tune's randint excludes the upper end
        return [values[0], values[1] - 1]
    return list(values)


def check_trials(base: dict, axes: dict[str, tuple[str, list]]) -> set[str]:
    """Refuse the sweep if any value of any swept key (then any combination, while few) makes an invalid
    config; return the warnings of the configs (keys that cannot act), once each."""
    first = {key: values[0] for key, (_, values) in axes.items()}
    idle = _check_one({**base, **first}, "sweep")
    for key, (section, values) in axes.items():
        for value in values[1:]:
            idle |= _check_one({**base, **first, key: value}, f"sweep {section}: {key} = {value!r}")
    if len(axes) > 1 and math.prod(len(values) for _, values in axes.values()) <= MAX_COMBINATIONS_CHECKED:
        for combination in itertools.product(*(values for _, values in axes.values())):
            trial = dict(zip(axes, combination))
            idle |= _check_one({**base, **trial}, "sweep: the trial " + ", ".join(f"{k} = {v!r}"
                                                                                   for k, v in trial.items()))
    return idle


def _check_one(values: dict, what: str) -> set[str]:
    try:
        config = Config.from_dict(values)
    except ConfigError as error:
        raise ConfigError(f"{what}: {error}" if what == "sweep" else f"{what} is refused: {error}") from None
    idle = config.idle_converge_after()
    return {idle} if idle else set()


def load_sweep(path: str | Path, overrides: list[str] = ()) -> SweepSpec:
    """The sweep file at `path`, with `overrides` ('key=value', as `train --set`) applied to its base."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"sweep file {path} is not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"sweep file {path} must be a mapping")
    unknown = set(values) - set(SweepSpec.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"unknown sweep keys {sorted(unknown)}; known: {sorted(SweepSpec.__dataclass_fields__)}")
    base = dict(values.get("base") or {})
    for text in overrides:
        key, value = parse_override(text)
        swept = [section for section in ("search", "mutations") if key in (values.get(section) or {})]
        if swept:
            raise ConfigError(f"--set {key}: the sweep file's {swept[0]} sweeps {key}; drop --set {key} or "
                              f"remove {key} from {swept[0]}")
        base[key] = value
    return SweepSpec(**{**values, "base": base})


def load_saved_spec(output) -> SweepSpec:
    """The spec a sweep saved in its output (for --resume)."""
    from ..artifacts.storage import open_folder

    output = open_folder(output)
    if not output.exists(SPEC_FILE):
        raise ConfigError(f"no sweep to resume in {output}: {output.file(SPEC_FILE)} is missing")
    return SweepSpec(**json.loads(output.read_text(SPEC_FILE)))
