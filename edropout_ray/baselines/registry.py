"""Every baseline by its method name: the one place a name in `choices.METHODS` meets the function
that runs it.

A dict rather than an if-chain, so a name nobody wired up is an error instead of quietly running
another method; tests/unit/test_baselines.py holds its keys to `choices.METHODS`.
"""

from __future__ import annotations

import functools
from typing import Callable

from ..config import Config
from ..errors import ConfigError
from ..pruning.space import PruningSpace
from ..training.run_setup import PrunedRun, RunSetup
from .pruners import run_dropnet, run_fixed_random, run_ranked
from .torch_pruning import run_group_norm, run_iterative

Baseline = Callable[[PruningSpace, Config, RunSetup], PrunedRun]

BASELINES: dict[str, Baseline] = {
    "dropnet": run_dropnet,
    "l1": functools.partial(run_ranked, criterion="l1"),
    "random": functools.partial(run_ranked, criterion="random"),
    "fixed_random": run_fixed_random,
    "tp_group_norm": run_group_norm,
    "tp_magnitude": functools.partial(run_iterative, importance="magnitude"),
    "tp_taylor": functools.partial(run_iterative, importance="taylor"),
}


def run_baseline(space: PruningSpace, config: Config, setup: RunSetup) -> PrunedRun:
    """The baseline `config.method` names, trained to its final state."""
    baseline = BASELINES.get(config.method)
    if baseline is None:
        raise ConfigError(f"no baseline is named {config.method!r}; the baselines are {', '.join(BASELINES)} "
                          "('edropout' is trained by train.run, not here)")
    return baseline(space, config, setup)
