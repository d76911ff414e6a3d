"""The central learner as a Ray actor, and the proxy the engine talks to.

The actor and the proxy satisfy the local `Learner`'s contract (training/contract.py), so the
engine does not know which runtime it drives. After every `sync_every` steps it publishes the
new weights to the shards through the object store, without a trip through the driver.

A lost learner (its node gone, its process killed) is restarted by Ray (`max_restarts`); the
proxy then loads the latest checkpoint's learner state into it and replays the calls made since,
so the run continues as if nothing happened. That state is the one the last checkpoint wrote,
kept in the driver's object store (no read back from storage, and nothing extra to fetch: the
checkpoint fetched it anyway); the batches since then are kept there too, as references.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import ray
import torch

from ..config import Config
from ..training.contract import StepResult
from ..training.learner import Learner
from ..training.run_setup import space_for
from .data_parallel import GradientAverage, PeerLost, free_address, join_group
from .learner_group import BatchPart, LearnerGroup, combine, split_batch
from .liveness import ActorLostError, Liveness
from .placement import actor_device, computing_on
from ..models import ModelRecipe
from .shard import ShardPool
from .usage import BusyClock, ProcessUsage
from ..pruning.evaluation import EvaluationSums, evaluation_sums

log = logging.getLogger(__name__)


class LearnerRestarted(RuntimeError):
    """A restarted actor holds its initial weights again: it refuses work until a state is loaded."""


class LearnerWorker:
    """A `Learner` on its own process and device (a LearnerContract, called through Ray)."""

    def __init__(self, recipe: ModelRecipe, example_inputs: torch.Tensor, config: Config,
                 initial_weights: dict[str, torch.Tensor], device: str = "cpu", total_steps: int | None = None):
        self.device = actor_device(device, "the learner")
        model = recipe.build().to(self.device)
        model.load_state_dict(initial_weights)
        self.learner = Learner(space_for(model, example_inputs.to(self.device), config), config,
                               total_steps=total_steps)
        self.energy, self.kappa = config.energy, config.kappa
        self.clock = BusyClock()
        with warnings.catch_warnings():  # Ray's own property warns about an API it uses internally
            warnings.simplefilter("ignore")
            self.restarted = ray.get_runtime_context().was_current_actor_reconstructed

    def _ready(self) -> Learner:
        if self.restarted:
            raise LearnerRestarted("the learner actor was restarted and has not been given its state yet")
        return self.learner

    def ping(self) -> bool:
        return True

    def busy_seconds(self) -> float:
        """Seconds spent training and exporting weights since this process started."""
        return self.clock.seconds

    def where(self) -> dict:
        """The device it trains on and what Ray gave it (its GPU ids included)."""
        return computing_on(self.device)

    def step(self, state: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        learner = self._ready()
        with self.clock.busy():
            return learner.step(state.to(self.device), x.to(self.device), y.to(self.device))

    def score(self, states: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Energies of `states` with this worker's weights (those after its last step), as a shard scores
        (`score_on_learners`): scoring stores no statistics, so the workers' replicas stay alike."""
        learner = self._ready()
        with self.clock.busy():
            learner.sync()  # the latest step may have trained the state at its size
            learner.model.train()  # batch statistics, as the learner's step sees the network
            return learner.space.score(states, x.to(self.device), y.to(self.device), energy=self.energy,
                                       kappa=self.kappa).cpu()

    def evaluate(self, state: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> EvaluationSums:
        """A validation batch's sums with `state` applied (the workers split the validation set)."""
        learner = self._ready()
        with self.clock.busy():
            learner.sync()
            return evaluation_sums(learner.space, state.to(self.device), [(x, y)], self.device)

    # ---- one worker of a data-parallel learner (learner_group.py) --------------------------------
    def rendezvous(self, local: bool) -> str:
        """Rank 0's 'host:port' for the group's store."""
        return free_address(local)

    def join(self, rank: int, size: int, address: str, backend: str, timeout_s: float) -> None:
        """Join the group; from now on every step averages its gradients with the other workers'."""
        join_group(rank, size, address, backend, timeout_s)
        self.averager = GradientAverage()
        self.learner.before_update = self.averager

    def step_part(self, state: torch.Tensor, x: torch.Tensor, y: torch.Tensor, share: float) -> StepResult:
        """A step on this worker's part of the global batch (`share` of it), averaged over the group."""
        self.averager.share = share
        return self.step(state, x, y)

    def end_epoch(self) -> None:
        self._ready().end_epoch()

    def restart_schedule(self) -> None:
        self._ready().restart_schedule()

    def learning_rate(self) -> float:
        return self._ready().learning_rate()

    def sync(self) -> None:
        self._ready().sync()

    def weights(self) -> dict[str, torch.Tensor]:
        return self._ready().weights()

    def weights_for_broadcast(self) -> dict[str, np.ndarray]:
        """NumPy views of the weights: Ray copies them into the object store once, without pickling
        (tensors would be pickled). Safe without a clone: the return value is stored before this
        single-threaded actor runs its next step."""
        learner = self._ready()
        with self.clock.busy():
            learner.sync()
            return {name: value.detach().cpu().numpy() for name, value in learner.model.state_dict().items()}

    def state_dict(self) -> dict:
        return self._ready().state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.learner.load_state_dict(state)
        self.restarted = False


@dataclass
class ReplayedStep:
    """A step sent to the workers: its state and its batch's parts (object refs, kept until the next
    checkpoint), and its results' refs from the latest sending (a replay sends it again)."""
    state: torch.Tensor
    parts: list[BatchPart]
    future: list | None = None

    def send(self, group: LearnerGroup) -> list:
        self.future = group.step(self.state, self.parts)
        return self.future


@dataclass(frozen=True)
class ReplayedEpochEnd:
    def send(self, group: LearnerGroup) -> list:
        return group.each("end_epoch")


@dataclass(frozen=True)
class ReplayedScheduleRestart:
    def send(self, group: LearnerGroup) -> list:
        return group.each("restart_schedule")


@dataclass(frozen=True)
class Published:
    """Weights were published to the shards at this point (only the last one is published again)."""


ReplayEntry = ReplayedStep | ReplayedEpochEnd | ReplayedScheduleRestart | Published


class RemoteStep:
    """A step running on the learner's workers (a PendingStep): `result()` waits, recovering a lost worker."""

    def __init__(self, learner: "RemoteLearner", sent: ReplayedStep):
        self.learner, self.sent = learner, sent

    def result(self) -> StepResult:
        return combine(self.learner.result(self.sent), [share for _, _, share in self.sent.parts])


# errors that mean "the learner lost its state": a worker died (and may be restarting), came back empty,
# or saw another worker of its group go
LOST = (ray.exceptions.RayActorError, LearnerRestarted, PeerLost)


class RemoteLearner:
    """Drives the learner's workers (a LearnerGroup); publishes rank 0's weights to `pool` every
    `sync_every` steps.

    With `recoverable`, it keeps a replay log: the calls since the last checkpoint's learner state
    (steps with their state and batch, epoch ends, the last publish). When a worker is lost, the group
    is restarted (by Ray for one worker, as a whole for several), and `recover` loads that state into
    every worker and replays the log.
    """

    def __init__(self, group: LearnerGroup, pool: ShardPool, sync_every: int, liveness: Liveness | None = None,
                 recoverable: bool = False, scorers: int = 0):
        self.group, self.pool, self.sync_every = group, pool, sync_every
        self.scorers = scorers  # score_on_learners: the first `scorers` workers score the population
        self.liveness = liveness or Liveness()
        self.recoverable = recoverable
        self.steps = 0
        self.recoveries = 0
        self.log: list[ReplayEntry] = []
        self.snapshot_ref: ray.ObjectRef | None = None
        self.last_step: ReplayedStep | None = None
        if recoverable:  # the state at step 0, until the first checkpoint replaces it
            self.snapshot_ref = ray.put(self._read("state_dict"))
        self.publish()

    @property
    def actor(self):
        """Rank 0's actor: the one that hands out weights and state."""
        return self.group.workers[0]

    # ---- the learner contract, and publishing ---------------------------------------------------
    def publish(self) -> None:
        """The weights after the learner's last submitted step (actor calls run in order), to the shards
        if they are running (only while the population searches)."""
        if not self.pool.running:
            return
        self.pool.publish(self.actor.weights_for_broadcast.remote())
        self._log(Published())

    def publish_if_due(self) -> None:
        if self.steps % self.sync_every == 0:
            self.publish()

    def step_async(self, state: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> RemoteStep:
        """Start a step without publishing its weights: the caller decides when shards get them."""
        self.steps += 1
        entry = ReplayedStep(state.cpu(), split_batch(x.cpu(), y.cpu(), self.group.size))
        self._log(entry)
        entry.send(self.group)
        self.last_step = entry
        return RemoteStep(self, entry)

    def result(self, sent: ReplayedStep) -> list[StepResult]:
        """The workers' results of a step sent; if a worker was lost meanwhile, recover and take the step's
        replayed results (every step since the checkpoint is replayed, those still awaited included)."""
        while True:
            try:
                return self.liveness.get(sent.future, "the learner's step")
            except LOST as error:
                if self.recoverable and not any(entry is sent for entry in self.log):
                    raise  # sent before the latest checkpoint, which awaits every step first: not replayable
                self.recover(error)

    def step(self, state: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        pending = self.step_async(state, x, y)
        self.publish_if_due()
        return pending.result()

    def score(self, states: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Energies of `states`, a contiguous slice on each of the first `scorers` workers, after every step
        sent so far (actor calls run in order). A worker lost meanwhile is recovered (restart, replay: a step
        still awaited gets its replayed results) and the states are scored again; scoring changes no state,
        so nothing of it is replayed."""
        x_ref, y_ref = ray.put(x.cpu()), ray.put(y.cpu())
        while True:
            workers = self.group.workers[:self.scorers]
            chunks = [chunk for chunk in torch.tensor_split(states.cpu(), len(workers)) if len(chunk)]
            futures = [worker.score.remote(chunk, x_ref, y_ref) for worker, chunk in zip(workers, chunks)]
            try:
                return torch.cat(self.liveness.get(futures, "the learner workers' scoring"))
            except LOST as error:
                self.recover(error)

    def evaluate(self, state: torch.Tensor, batches) -> dict[str, float]:
        """Validation metrics of `state` on `batches`, shared out over the workers; a worker lost meanwhile
        is recovered and the batches evaluated again."""
        while True:
            try:
                return self.group.evaluate(state.cpu(), batches).metrics()
            except LOST as error:
                self.recover(error)

    def end_epoch(self) -> None:
        self._log(ReplayedEpochEnd())
        try:
            self.liveness.get(self.group.each("end_epoch"), "the learner's end of epoch")
        except LOST as error:
            self.recover(error)  # the replay ends the epoch

    def restart_schedule(self) -> None:
        self._log(ReplayedScheduleRestart())
        self._call("restart_schedule")

    def learning_rate(self) -> float:
        return self._read("learning_rate")

    def sync(self) -> None:
        """Nothing to do here: the actor syncs before it hands out weights or state."""

    def weights(self) -> dict[str, torch.Tensor]:
        return self._read("weights")

    def state_dict(self) -> dict:
        return self._read("state_dict")

    def restart_from(self, state: dict) -> None:
        """`state` (this learner's, just written to a checkpoint) is where a lost learner restarts:
        the replay log starts again from it."""
        if not self.recoverable:
            return
        self.snapshot_ref = ray.put(state)
        # the shards' weights are this state's only if they were published after the last step
        published_now = bool(self.log) and isinstance(self.log[-1], Published)
        self.log = [Published()] if published_now else []

    def load_state_dict(self, state: dict) -> None:
        state_ref = ray.put(state)
        self.liveness.get(self.group.each("load_state_dict", state_ref), "the learner's state")
        if self.recoverable:
            self.snapshot_ref, self.log = state_ref, []
        self.publish()

    def resize(self, workers: int) -> None:
        """Continue on `workers` workers (all calls so far finished first): the learner gives devices to the
        shards while the population searches, and takes them back at the freeze."""
        if workers == self.group.size:
            return
        if self.last_step is not None:
            self.result(self.last_step)
        state_ref = ray.put(self._read("state_dict"))
        log.info("the learner continues on %d worker(s) (it had %d)", workers, self.group.size)
        self.group.resize(workers, state_ref)

    def usage(self) -> list[ProcessUsage]:
        """Each worker's time held and busy."""
        return self.group.usage()

    def close(self) -> None:
        self.group.kill()

    # ---- recovery ------------------------------------------------------------------------------
    def _log(self, entry: ReplayEntry) -> None:
        if self.recoverable:
            self.log.append(entry)

    def _read(self, method: str):
        """`method`'s answer from rank 0, recovering a lost learner."""
        while True:
            try:
                return self.liveness.get(self.group.first(method), "the learner")[0]
            except LOST as error:
                self.recover(error)

    def _call(self, method: str) -> None:
        """`method` on every worker, recovering a lost learner (the replay makes the call again)."""
        try:
            self.liveness.get(self.group.each(method), "the learner")
        except LOST as error:
            self.recover(error)

    def recover(self, cause: BaseException) -> None:
        """Restart the lost learner, load the latest checkpoint's state, replay the log."""
        if isinstance(cause, ray.exceptions.RayTaskError) and not isinstance(cause, (LearnerRestarted, PeerLost)):
            raise cause  # a bug in a step, not a lost actor
        self.liveness.check_cluster("the learner")  # the whole cluster gone: say so, not "the learner"
        if not self.recoverable:
            message = (f"lost the learner actor ({type(cause).__name__}), which is restarted only from a checkpoint: "
                       "set checkpoint_every (and learner_restarts > 0) to survive this")
            raise ActorLostError(message) from None
        self.recoveries += 1
        steps = sum(1 for entry in self.log if isinstance(entry, ReplayedStep))
        log.warning("the learner actor was lost (%s); restarting it from the latest checkpoint and replaying %d "
                    "steps", type(cause).__name__, steps)
        self.group.restart()
        self.group.each("load_state_dict", self.snapshot_ref)
        last_publish = max((i for i, entry in enumerate(self.log) if isinstance(entry, Published)), default=None)
        for index, entry in enumerate(self.log):
            if isinstance(entry, Published):
                if index == last_publish and self.pool.running:  # earlier ones were superseded before any score
                    self.pool.publish(self.actor.weights_for_broadcast.remote())
                continue
            entry.send(self.group)
        if last_publish is None and self.pool.running:  # the shards' weights predate the checkpoint: the closest
            log.warning("republishing the checkpoint's weights to the shards")
            self.pool.publish(self.actor.weights_for_broadcast.remote())
