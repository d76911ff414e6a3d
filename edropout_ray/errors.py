"""User-facing errors: each message says what is wrong and how to fix it.

The CLI turns any `EDropoutError` into one clean line and a non-zero exit.
"""


class EDropoutError(Exception):
    """Base class for mistakes a user can fix (bad config, missing data, ...)."""


class ConfigError(EDropoutError, ValueError):
    """A config field is unknown, of the wrong type or out of range."""


class UnsupportedModelError(EDropoutError):
    """The model cannot be pruned safely (a layer kind the pruning space cannot remove)."""


class NothingToPruneError(EDropoutError):
    """The model has no unit that can be removed without touching its outputs."""


class NonFiniteLossError(EDropoutError, FloatingPointError):
    """The training loss became NaN or infinite."""


class CheckpointError(EDropoutError):
    """A checkpoint is corrupt or does not match the run it is loaded into."""


class RunLostError(EDropoutError):
    """The run lost what it runs on (the Ray cluster, or an actor for good); its checkpoint is intact.

    Not the user's mistake: the CLI exits with code 3, so a script can tell it from bad input and
    retry with `--resume`.
    """

    exit_code = 3


class DenseBaselineError(EDropoutError):
    """The dense baseline's Ray task failed; the pruned run's own artifacts are written before this is raised."""


class DeviceError(EDropoutError):
    """An actor or task holds a GPU that torch cannot use (no CUDA build, no driver)."""
