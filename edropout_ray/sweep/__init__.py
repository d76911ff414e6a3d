"""`edropout-ray sweep`: Ray Tune over any config key (grid, random, ASHA, PBT).

`spec` reads and checks a sweep file without Ray or torch; `tuning` runs the trials on Ray Tune.
The names of `tuning` are imported on first use, so checking a sweep file loads neither.
"""

import importlib

from .spec import MUTABLE_KEYS, SCHEDULERS, SPEC_FILE, SweepSpec, load_saved_spec, load_sweep

__all__ = ["MUTABLE_KEYS", "SCHEDULERS", "SPEC_FILE", "SweepFailed", "SweepInterrupted", "SweepSpec", "collect",
           "export_best", "load_saved_spec", "load_sweep", "pareto_front", "run_sweep", "train_trial",
           "trial_resources"]


def __getattr__(name: str):
    """The Tune side (`tuning`: run_sweep, trial_resources, ...), imported when first asked for."""
    if name.startswith("__"):
        raise AttributeError(name)
    tuning = importlib.import_module(f"{__name__}.tuning")  # not `from . import`: that asks __getattr__ again
    try:
        return getattr(tuning, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
