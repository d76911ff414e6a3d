"""Checkpoints of a run: written atomically, read without executing pickled code.

A checkpoint holds everything the run needs to continue as if never stopped: the learner's
weights, optimizer and schedule; the population and its energies; the random generators; the
step counters and the history so far. It is a dict of tensors and plain Python values saved with
`torch.save` and read with `torch.load(weights_only=True)`, which refuses arbitrary objects.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .config import Config
from .errors import CheckpointError

CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = "config.json"
FORMAT = 1


def checkpoint_path(folder: str | Path) -> Path:
    return Path(folder) / CHECKPOINT_FILE


def save_checkpoint(folder: str | Path, payload: dict) -> Path:
    """Write to a temporary file, flush it to disk, then rename over the old one (atomic)."""
    path = checkpoint_path(folder)
    temporary = path.with_suffix(".tmp")
    torch.save({"format": FORMAT, **payload}, temporary)
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    return path


def load_checkpoint(folder: str | Path) -> dict:
    path = checkpoint_path(folder)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: was the run started with checkpoint_every > 0 and this "
                              "--output folder?")
    try:
        payload = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a checkpoint of this program ({error}); it was "
                              "left untouched: restore it from a copy or start a new run in another folder") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has an unknown format; it was left untouched")
    return payload


def save_config(folder: str | Path, config: Config) -> None:
    (Path(folder) / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2))


def load_saved_config(folder: str | Path) -> Config:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: --resume needs the folder of an earlier run")
    try:
        return Config.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path} is not a valid run config ({error})") from None


def check_matches(learner_state: dict, model_tensors: dict[str, torch.Tensor], num_units: int,
                  saved_num_units: int) -> None:
    """Refuse a checkpoint taken from another architecture or pruning space."""
    if saved_num_units != num_units:
        raise CheckpointError(f"the checkpoint is for a pruning space of {saved_num_units} units, this model "
                              f"has {num_units}: it belongs to another model or config")
    saved = learner_state["model"]
    mismatched = [name for name, value in model_tensors.items()
                  if name not in saved or tuple(saved[name].shape) != tuple(value.shape)]
    if mismatched or len(saved) != len(model_tensors):
        raise CheckpointError(f"the checkpoint's weights do not fit this model (first mismatch: "
                              f"{(mismatched or ['extra tensors'])[0]})")
