"""Training phases that many runs train alike, trained once and read back.

A comparison trains the same dense phases again and again: L1's and random's first half and the
iterative pipelines' first quarter are dense training of the same model from the same seed, whatever
the size, budget or method, and the dense reference is the same for every cell of a model and seed.
An entry is keyed by a hash of all that the phase's result depends on: the config's training settings
(not its pruning settings), the phase's kind and steps, and the state it starts from (the model's
tensors, the global random generator, the train loader's generator). Reading an entry back leaves the
model and both generators as training would have, so a run that hits the cache ends bit for bit as
one that trains the phase (tests/unit/test_phase_cache.py). Entries are local files, written whole
(a temporary file renamed), so runs on one machine share a folder; an unreadable entry is trained again.
The data files are named in the key (the config's dataset and data_dir) but not hashed: a cache folder
belongs to one copy of the data, and entries are pickles, so a folder is only as trusted as its writer.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable, TypeVar

import torch

from ..config import Config

log = logging.getLogger(__name__)
T = TypeVar("T")

# config keys that change what a run prunes or where it runs, not how a dense phase trains
NOT_TRAINING = frozenset({
    "population_size", "temperature", "p_init", "mutation_factor", "crossover_rate", "selection", "energy", "kappa",
    "converge_after", "converge_patience", "converge_diversity", "dense_warmup", "train_top", "search",
    "train_while_searching", "freeze_by", "lr_after_freeze", "layer_widths", "dense_baseline", "scoring",
    "score_precision", "score_channels_last", "score_batch", "channel_multiple", "method", "prune_target",
    "prune_target_params", "prune_target_macs", "prune_target_latency", "latency_target_batch", "dropnet_strategy",
    "dropnet_fraction", "dropnet_reset", "dropnet_patience", "l1_per_layer", "kept_per_group", "shards", "overlap",
    "sync_every", "shard_cpus", "shard_gpus", "shards_start_ahead", "learner_cpus", "learner_gpus", "learner_workers",
    "share_devices_across_phases", "score_on_learners", "checkpoint_every", "export_formats", "latency_batches",
    "latency_repeats", "report_extra_masks", "learner_restarts", "liveness_timeout", "restart_timeout"})


class PhaseCache:
    """A folder of trained phases; `hits` and `misses` count this process's lookups."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.hits, self.misses = 0, 0

    def phase(self, kind: str, config: Config, steps: int, train: Callable[[], T], *,
              model: torch.nn.Module | None = None, loader=None, seeds_itself: bool = False) -> T:
        """`train()`'s result, read back when the same phase was trained before, else trained and saved.

        `model`, `loader`: what the phase trains and draws batches from (their state is part of the key
        and is restored from the entry). `seeds_itself`: the phase reseeds the global generator first (the
        dense reference builds its model from the seed), so the generator's state before it is no part of
        the key; its state after is restored all the same.
        """
        key = _key(kind, config, steps, model, loader, seeds_itself)
        path = self.folder / f"{kind}-{key}.pt"
        entry = self._read(path)
        if entry is not None:
            self.hits += 1
            if model is not None:
                model.load_state_dict(entry["model"])
            _set_generators(entry["generators"], loader)
            log.info("%s phase of %d steps read from %s", kind, steps, path)
            return entry["result"]
        self.misses += 1
        result = train()
        weights = None if model is None else {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        saved = {"result": result, "generators": _generators(loader), "model": weights}
        self._write(path, saved)
        return result

    @staticmethod
    def _read(path: Path) -> dict | None:
        if not path.exists():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # a torn or foreign file: train the phase again, it is replaced
            log.warning("phase cache entry %s is unreadable (%s: %s); training the phase again", path,
                        type(error).__name__, error)
            return None

    def _write(self, path: Path, entry: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                torch.save(entry, file)
            os.replace(temporary, path)  # whole or not at all: another run may be reading the folder
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def _key(kind: str, config: Config, steps: int, model, loader, seeds_itself: bool) -> str:
    digest = hashlib.sha256()
    training = {k: v for k, v in config.to_dict().items() if k not in NOT_TRAINING}
    digest.update(json.dumps({"kind": kind, "steps": steps, "config": training, "torch": torch.__version__},
                             sort_keys=True, default=str).encode())
    if model is not None:
        for name, tensor in model.state_dict().items():
            digest.update(name.encode())
            digest.update(_bytes(tensor))
    state = _generators(loader)
    if seeds_itself:
        state.pop("torch"), state.pop("cuda")
    for name in sorted(state):
        if state[name] is not None:
            digest.update(name.encode())
            tensors = state[name] if isinstance(state[name], list) else [state[name]]
            digest.update(b"".join(_bytes(t) for t in tensors))
    return digest.hexdigest()[:24]


def _bytes(tensor: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    buffer.write(str((tensor.dtype, tuple(tensor.shape))).encode())
    buffer.write(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return buffer.getvalue()


def _generators(loader) -> dict:
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "loader": loader.generator.get_state() if getattr(loader, "generator", None) is not None else None}


def _set_generators(state: dict, loader) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if state["loader"] is not None and getattr(loader, "generator", None) is not None:
        loader.generator.set_state(state["loader"])
