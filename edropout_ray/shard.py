"""Population shards: Ray actors that score their slice of the states, all in one vectorized call.

`ShardPool` scatters the children over the shards and gathers their energies. A shard that dies
is replaced by a new actor that receives the latest published weights, and its slice is scored
again, so no population state is lost (DESIGN.md, invariant 6): the coordinator keeps the
authoritative population, the shards only ever hold copies of their slices.
"""

from __future__ import annotations

import logging
import warnings
from typing import Callable

import ray
import torch

from .models import ModelRecipe
from .space import PruningSpace

log = logging.getLogger(__name__)

MAX_REPLACEMENTS_PER_CALL = 3


class ShardWorker:
    """A model replica on its own device and the slice of states it last scored."""

    def __init__(self, recipe: ModelRecipe, example_inputs: torch.Tensor, scoring: str, energy: str, kappa: float,
                 device: str = "cpu"):
        self.device = torch.device(device)
        model = recipe.build().to(self.device).train()  # score with batch statistics, as the learner trains
        self.space = PruningSpace(model, example_inputs.to(self.device), scoring=scoring)
        self.energy, self.kappa = energy, kappa
        self.states: torch.Tensor | None = None
        self.energies: torch.Tensor | None = None

    def num_units(self) -> int:
        return self.space.num_units

    def load_weights(self, weights: dict) -> None:
        """Tensors, or NumPy arrays read zero-copy from the object store (read-only: copied in)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*not writable.*")
            tensors = {k: torch.as_tensor(v) for k, v in weights.items()}
        self.space.model.load_state_dict(tensors)

    def score(self, states: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = x.to(self.device), y.to(self.device)
        energies = self.space.score(states, x, y, energy=self.energy, kappa=self.kappa).cpu()
        self.states, self.energies = states.clone(), energies
        return energies


class ShardPool:
    """N shard actors behind one scorer call `(states, x, y) -> energies`."""

    def __init__(self, make_shard: Callable[[], "ray.actor.ActorHandle"], count: int):
        self.make_shard = make_shard
        self.shards = [make_shard() for _ in range(count)]
        self.weights_ref: ray.ObjectRef | None = None
        self.replacements = 0

    def publish(self, weights_ref: "ray.ObjectRef") -> None:
        """Send weights through the object store; each shard applies them before its next score."""
        self.weights_ref = weights_ref
        for shard in self.shards:
            shard.load_weights.remote(weights_ref)

    def score_async(self, states: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> "PendingScores":
        chunks = [c for c in torch.tensor_split(states, len(self.shards)) if len(c)]
        x_ref, y_ref = ray.put(x.cpu()), ray.put(y.cpu())
        futures = [shard.score.remote(chunk, x_ref, y_ref) for shard, chunk in zip(self.shards, chunks)]
        return PendingScores(self, chunks, x_ref, y_ref, futures)

    def __call__(self, states: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.score_async(states, x, y).result()

    def replace(self, index: int) -> None:
        self.replacements += 1
        log.warning("population shard %d died; starting a replacement with the latest weights", index)
        try:
            ray.kill(self.shards[index])
        except Exception:  # already gone
            pass
        shard = self.make_shard()
        if self.weights_ref is not None:
            shard.load_weights.remote(self.weights_ref)
        self.shards[index] = shard

    def close(self) -> None:
        for shard in self.shards:
            ray.kill(shard)


class PendingScores:
    """Energies being computed; `result()` gathers them, re-scoring the slices of dead shards."""

    def __init__(self, pool: ShardPool, chunks, x_ref, y_ref, futures):
        self.pool, self.chunks, self.x_ref, self.y_ref, self.futures = pool, chunks, x_ref, y_ref, futures

    def result(self) -> torch.Tensor:
        energies = []
        for index, (chunk, future) in enumerate(zip(self.chunks, self.futures)):
            for attempt in range(MAX_REPLACEMENTS_PER_CALL + 1):
                try:
                    energies.append(ray.get(future))
                    break
                except ray.exceptions.RayActorError:
                    if attempt == MAX_REPLACEMENTS_PER_CALL:
                        raise
                    self.pool.replace(index)
                    future = self.pool.shards[index].score.remote(chunk, self.x_ref, self.y_ref)
        return torch.cat(energies)
