"""EDropout: energy-based dropout and pruning of deep networks, in one process or on Ray."""

from .config import Config, load_config
from .evolution.energies import cross_entropy_energy, margin_energy
from .errors import (CheckpointError, ConfigError, EDropoutError, NonFiniteLossError, NothingToPruneError,
                     UnsupportedModelError)
from .pruning.space import PruningSpace

__all__ = [
    "CheckpointError", "Config", "ConfigError", "EDropoutError", "NonFiniteLossError", "NothingToPruneError",
    "PruningSpace", "UnsupportedModelError", "cross_entropy_energy", "load_config", "margin_energy",
]
__version__ = "0.1.0"
