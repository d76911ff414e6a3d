"""Population shards: Ray actors that score their slice of the states, all in one vectorized call.

Shards exist only while the population searches: `ShardPool.start` starts them (a few steps before
the dense warm-up ends, so their start-up is hidden) and `stop` ends them when the mask freezes,
which gives their CPUs and GPUs back to Ray. `ShardPool` scatters the children over the shards and gathers their energies. A shard that dies
is replaced by a new actor that receives the latest published weights, and its slice is scored
again, so no population state is lost (docs/design.md, invariant 6): the coordinator keeps the
authoritative population, the shards only ever hold copies of their slices. A shard that could not
load the weights it was sent (the learner died before they reached it) refuses to score with old
ones: it raises WeightsLost, and the coordinator recovers the learner and publishes them again.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Callable

import ray
import torch

from .liveness import ActorLostError, Liveness
from .placement import actor_device, computing_on
from .usage import BusyClock, ProcessUsage
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
                 device: str = "cpu", options: ScoringOptions | None = None, keep_layers: tuple[str, ...] = ()):
        self.device = actor_device(device, "a population shard")
        model = recipe.build().to(self.device).train()  # score with batch statistics, as the learner trains
        self.space = PruningSpace(model, example_inputs.to(self.device), scoring=scoring, options=options,
                                  keep_layers=keep_layers)
        self.energy, self.kappa = energy, kappa
        self.states: torch.Tensor | None = None
        self.energies: torch.Tensor | None = None
        self.weights_lost = False
        self.clock = BusyClock()

    def busy_seconds(self) -> float:
        return self.clock.seconds

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
        with self.clock.busy(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*not writable.*")
            tensors = {k: torch.as_tensor(v) for k, v in weights.items()}
            self.space.model.load_state_dict(tensors)

    def score(self, states: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.weights_lost:
            raise WeightsLost("this shard's latest weights were lost with the learner")
        with self.clock.busy():
            x, y = x.to(self.device), y.to(self.device)
            energies = self.space.score(states, x, y, energy=self.energy, kappa=self.kappa).cpu()
        self.states, self.energies = states.clone(), energies
        return energies


class ShardPool:
    """N shard actors behind one scorer call `(states, x, y) -> energies`, while started.

    `expected_units`: the driver's unit count; shards that build another model stop the run at
    their first score. `resources`: what each shard process reserves (for the usage report).
    """

    def __init__(self, make_shard: Callable[[], "ray.actor.ActorHandle"], count: int,
                 liveness: Liveness | None = None, expected_units: int | None = None,
                 resources: tuple[float, float] = (1.0, 0.0)):
        self.make_shard, self.count = make_shard, count
        self.liveness = liveness or Liveness()
        self.expected_units = expected_units
        self.cpus, self.gpus = resources
        self.shards: list = []
        self.started_at: list[float] = []
        self.starting: list | None = None  # a num_units call on each shard just started, not yet checked
        self.weights_ref: ray.ObjectRef | None = None
        self.replacements = 0
        self.usage: list[ProcessUsage] = []  # shards ended so far

    @property
    def running(self) -> bool:
        return bool(self.shards)

    def start(self) -> None:
        """Start the shards (Ray places them meanwhile); the first score waits for them."""
        if self.running:
            return
        self.shards = [self.make_shard() for _ in range(self.count)]
        self.started_at = [time.monotonic()] * self.count
        self.starting = [shard.num_units.remote() for shard in self.shards]
        log.info("started %d population shards", self.count)

    def _check_started(self) -> None:
        if self.starting is None:
            return
        units = self.liveness.started(self.starting, "the shards to start")
        self.starting = None
        if self.expected_units is not None and any(u != self.expected_units for u in units):
            raise RuntimeError(f"shards found {units} units, the driver {self.expected_units}: the model must build "
                               "deterministically from its name")

    def stop(self, why: str = "the run is over") -> None:
        """End every shard, their time recorded; no weights go to them any more."""
        if not self.running:
            return
        busy = self._busy_seconds()
        for index, shard in enumerate(self.shards):
            self._end(index, shard, busy[index])
        log.info("ended the %d population shards: %s", len(self.shards), why)
        self.shards, self.started_at, self.starting, self.weights_ref = [], [], None, None

    def _busy_seconds(self) -> list[float]:
        """Each shard's busy time; 0 for one that died or does not answer within 10 s (its time is lost)."""
        busy = [0.0] * len(self.shards)
        try:
            refs = [shard.busy_seconds.remote() for shard in self.shards]
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=10.0)
            for index, ref in enumerate(refs):
                if ref in ready:
                    try:
                        busy[index] = ray.get(ref)
                    except ray.exceptions.RayError:
                        pass
        except Exception:  # the cluster is gone: nothing to ask
            pass
        return busy

    def usage_so_far(self) -> list[ProcessUsage]:
        """The ended shards' time, and the running ones' until now (they keep running)."""
        busy = self._busy_seconds() if self.running else []
        now = time.monotonic()
        return self.usage + [ProcessUsage("shard", index, self.cpus, self.gpus, held_s=now - self.started_at[index],
                                          busy_s=busy[index]) for index in range(len(self.shards))]

    def _end(self, index: int, shard, busy: float) -> None:
        self.usage.append(ProcessUsage("shard", index, self.cpus, self.gpus,
                                       held_s=time.monotonic() - self.started_at[index], busy_s=busy))
        try:
            ray.kill(shard)
        except Exception:  # already gone
            pass

    def publish(self, weights_ref: "ray.ObjectRef") -> None:
        """Send weights through the object store; each shard applies them before its next score."""
        self.weights_ref = weights_ref
        for shard in self.shards:
            shard.load_weights.remote([weights_ref])

    def score_async(self, states: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> "PendingScores":
        if not self.running:
            raise RuntimeError("the population shards were not started: ShardPool.start() comes before scoring")
        self._check_started()
        chunks = [c for c in torch.tensor_split(states, len(self.shards)) if len(c)]
        x_ref, y_ref = ray.put(x.cpu()), ray.put(y.cpu())
        futures = [shard.score.remote(chunk, x_ref, y_ref) for shard, chunk in zip(self.shards, chunks)]
        return PendingScores(self, chunks, x_ref, y_ref, futures)

    def __call__(self, states: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.score_async(states, x, y).result()

    def replace(self, index: int) -> None:
        self.replacements += 1
        log.warning("population shard %d died; starting a replacement with the latest weights", index)
        self._end(index, self.shards[index], busy=0.0)
        shard = self.make_shard()
        if self.weights_ref is not None:
            shard.load_weights.remote([self.weights_ref])
        self.shards[index] = shard
        self.started_at[index] = time.monotonic()

    def close(self) -> None:
        self.stop()


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
