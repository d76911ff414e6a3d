"""Checkpoints of a run: written atomically, read without executing pickled code.

A checkpoint holds everything the run needs to continue as if never stopped: the learner's
weights, optimizer and schedule; the population and its energies; the random generators; the
step counters and the history so far. It is a dict of tensors and plain Python values saved with
`torch.save` and read with `torch.load(weights_only=True)`, which refuses arbitrary objects.
The folder is a local path or a `pyarrow.fs` URI (storage.py), so a cluster's nodes can share it.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from ..config import Config
from ..errors import CheckpointError
from .storage import Folder, open_folder

CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = "config.json"
FORMAT = 1


def checkpoint_path(folder: str | Path | Folder) -> str:
    return open_folder(folder).file(CHECKPOINT_FILE)


def save_checkpoint(folder: str | Path | Folder, payload: dict) -> str:
    """Serialize in memory, then replace the old checkpoint atomically (storage.Folder.write_bytes)."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **payload}, buffer)
    folder = open_folder(folder)
    folder.write_bytes(CHECKPOINT_FILE, buffer.getvalue())
    return folder.file(CHECKPOINT_FILE)


def load_checkpoint(folder: str | Path | Folder) -> dict:
    folder = open_folder(folder)
    path = folder.file(CHECKPOINT_FILE)
    if not folder.exists(CHECKPOINT_FILE):
        raise CheckpointError(f"no checkpoint at {path}: was the run started with checkpoint_every > 0 and this "
                              "--output folder?")
    try:
        payload = torch.load(io.BytesIO(folder.read_bytes(CHECKPOINT_FILE)), weights_only=True, map_location="cpu")
    except Exception as error:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a checkpoint of this program ({error}); it was "
                              "left untouched: restore it from a copy or start a new run in another folder") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has an unknown format; it was left untouched")
    return payload


def resume_hint(folder: str | Path | Folder) -> str:
    """What a user can do after the run was lost: the resume command, or why there is none."""
    if open_folder(folder).exists(CHECKPOINT_FILE):
        return f"its checkpoint is untouched: continue with `edropout-ray train --resume {folder}`"
    return "no checkpoint was written (checkpoint_every: 0): start the run again"


def save_config(folder: str | Path | Folder, config: Config) -> None:
    open_folder(folder).write_bytes(CONFIG_FILE, json.dumps(config.to_dict(), indent=2).encode())


def load_saved_config(folder: str | Path | Folder) -> Config:
    folder = open_folder(folder)
    path = folder.file(CONFIG_FILE)
    if not folder.exists(CONFIG_FILE):
        raise CheckpointError(f"{path} is missing: --resume needs the folder of an earlier run")
    try:
        return Config.from_dict(json.loads(folder.read_bytes(CONFIG_FILE)))
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
