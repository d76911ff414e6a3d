"""EDropout: energy-based dropout and pruning of deep networks, in one process or on Ray.

The names that need torch (the energies, the pruning space) are imported when first used, so the
command line answers `--help` and a config mistake without loading torch and Torch-Pruning.
"""

from .config import Config, load_config
from .errors import (CheckpointError, ConfigError, EDropoutError, NonFiniteLossError, NothingToPruneError,
                     UnsupportedModelError)

__all__ = [
    "CheckpointError", "Config", "ConfigError", "EDropoutError", "NonFiniteLossError", "NothingToPruneError",
    "PruningSpace", "UnsupportedModelError", "cross_entropy_energy", "load_config", "margin_energy",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    """`edropout_ray.PruningSpace` and the energies, imported on first use (they import torch)."""
    if name == "PruningSpace":
        from .pruning.space import PruningSpace

        return PruningSpace
    if name in ("cross_entropy_energy", "margin_energy"):
        from .evolution import energies

        return getattr(energies, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
