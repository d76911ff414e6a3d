"""Population shards: Ray actors that score their slice of the states, all in one vectorized call.

`ShardPool` scatters the children over the shards and gathers their energies. A shard that dies
is replaced by a new actor that receives the latest published weights, and its slice is scored
again, so no population state is lost (docs/design.md, invariant 6): the coordinator keeps the
authoritative population, the shards only ever hold copies of their slices. A shard that could not
load the weights it was sent (the learner died before they reached it) refuses to score with old
ones: it raises WeightsLost, and the coordinator recovers the learner and publishes them again.
"""

from __future__ import annotations

import logging
import warnings
from typing import Callable

import ray
import torch

from .liveness import ActorLostError, Liveness
from .placement import actor_device, computing_on
from ..models import ModelRecipe
from ..pruning.scoring_options import ScoringOptions
from ..pruning.space import PruningSpace

log = logging.getLogger(__name__)

MAX_REPLACEMENTS_PER_CALL = 3


class WeightsLost(RuntimeError):
    """The shard's last weights never arrived: scoring now would use older ones."""


class ShardWorker:
    """A model replica on its own device and the slice of states it last scored."""

    def __init__(self, recipe: ModelRecipe, example_inputs: torch.Tensor, scoring: str, energy: str, kappa: float,
                 device: str = "cpu", options: ScoringOptions | None = None):
        self.device = actor_device(device, "a population shard")
        model = recipe.build().to(self.device).train()  # score with batch statistics, as the learner trains
        self.space = PruningSpace(model, example_inputs.to(self.device), scoring=scoring, options=options)
        self.energy, self.kappa = energy, kappa
        self.states: torch.Tensor | None = None
        self.energies: torch.Tensor | None = None
        self.weights_lost = False

    def num_units(self) -> int:
        return self.space.num_units

    def where(self) -> dict:
        """The device it scores on and what Ray gave it (its GPU ids included)."""
        return computing_on(self.device)

    def load_weights(self, boxed: list) -> None:
        """`[ref]` of tensors, or of NumPy arrays read zero-copy from the object store (read-only: copied in).

        Boxed so that Ray does not resolve the ref before the call: a ref that fails to resolve would
        fail this call unseen, and the shard would go on scoring with the weights it had before.
        """
        try:
            weights = ray.get(boxed[0])
        except ray.exceptions.RayError:  # the learner died before, or while, making them
            self.weights_lost = True
            return
        self.weights_lost = False
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*not writable.*")
            tensors = {k: torch.as_tensor(v) for k, v in weights.items()}
        self.space.model.load_state_dict(tensors)

    def score(self, states: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.weights_lost:
            raise WeightsLost("this shard's latest weights were lost with the learner")
        x, y = x.to(self.device), y.to(self.device)
        energies = self.space.score(states, x, y, energy=self.energy, kappa=self.kappa).cpu()
        self.states, self.energies = states.clone(), energies
        return energies


class ShardPool:
    """N shard actors behind one scorer call `(states, x, y) -> energies`."""

    def __init__(self, make_shard: Callable[[], "ray.actor.ActorHandle"], count: int,
                 liveness: Liveness | None = None):
        self.make_shard = make_shard
        self.liveness = liveness or Liveness()
        self.shards = [make_shard() for _ in range(count)]
        self.weights_ref: ray.ObjectRef | None = None
        self.replacements = 0

    def publish(self, weights_ref: "ray.ObjectRef") -> None:
        """Send weights through the object store; each shard applies them before its next score."""
        self.weights_ref = weights_ref
        for shard in self.shards:
            shard.load_weights.remote([weights_ref])

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
            shard.load_weights.remote([self.weights_ref])
        self.shards[index] = shard

    def close(self) -> None:
        for shard in self.shards:
            try:
                ray.kill(shard)
            except Exception:  # the cluster is already gone
                pass


class PendingScores:
    """Energies being computed; `result()` gathers them, re-scoring the slices of dead shards.

    Raises WeightsLost (after every slice is in) when a shard lacks the weights it was sent.
    """

    def __init__(self, pool: ShardPool, chunks, x_ref, y_ref, futures):
        self.pool, self.chunks, self.x_ref, self.y_ref, self.futures = pool, chunks, x_ref, y_ref, futures

    def result(self) -> torch.Tensor:
        energies, lost = [], None
        for index, (chunk, future) in enumerate(zip(self.chunks, self.futures)):
            for attempt in range(MAX_REPLACEMENTS_PER_CALL + 1):
                try:
                    energies.append(self.pool.liveness.get(future, f"population shard {index}"))
                    break
                except WeightsLost as error:
                    lost = error
                    break
                except ray.exceptions.RayActorError:
                    if attempt == MAX_REPLACEMENTS_PER_CALL:
                        raise ActorLostError(f"population shard {index} died {attempt + 1} times in one step; "
                                             "its node keeps failing") from None
                    self.pool.replace(index)
                    future = self.pool.shards[index].score.remote(chunk, self.x_ref, self.y_ref)
        if lost is not None:
            raise WeightsLost(str(lost))
        return torch.cat(energies)
