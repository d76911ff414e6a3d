"""The coordinator: the same EDropout step as in one process, over shard actors and a learner actor.

With `overlap: true`, the children of step t+1 are scored while the learner runs step t, so the
energies use weights one step old; the learner then never waits for scoring.

Faults: a dead shard is replaced by the pool; a lost learner is recovered by its proxy; a shard
that lacks the weights it was sent makes the coordinator recover the learner and score again.
Every wait checks the cluster (liveness.py), so a lost cluster stops the run instead of hanging it.
"""

from __future__ import annotations

import ray
import torch

from ..config import Config
from ..errors import DeviceError
from ..training.contract import StepResult
from ..training.step import EDropoutEngine, PendingStep
from .learner_actor import LearnerWorker, RemoteLearner
from .liveness import Liveness
from ..models import ModelRecipe
from .shard import ShardPool, ShardWorker, WeightsLost
from ..pruning.scoring_options import ScoringOptions
from ..pruning.space import PruningSpace


class DistributedEngine(EDropoutEngine):
    """EDropoutEngine whose scorer is a ShardPool and whose learner is a remote actor: the step's
    sequence is the base class's; only how it scores and how it learns differ."""

    def __init__(self, space: PruningSpace, config: Config, pool: ShardPool, learner: RemoteLearner):
        super().__init__(space, config, scorer=self._score, learner=learner)
        self.pool = pool
        self.learner: RemoteLearner = learner

    def _score(self, states: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        while True:
            try:
                return self.pool(states, x, y)
            except WeightsLost as error:  # bounded: each recovery uses up one of the learner's restarts
                self.learner.recover(error)

    def _learn(self, state: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> StepResult | PendingStep:
        """With `overlap`, this step's children were scored while the learner's previous step ran on its
        actor (with the weights from before that step); the shards get the newer weights only now, and
        this step's result is collected at the next one."""
        if not self.config.overlap:
            return self.learner.step(state, x, y)
        self._collect_pending()
        self.learner.publish_if_due()
        return self.learner.step_async(state, x, y)

    def checkpoint(self) -> dict:
        saved = super().checkpoint()
        self.learner.restart_from(saved["learner"])  # a learner lost from now on resumes from this state
        return saved

    def finish(self) -> None:
        self._collect_pending()
        self.space.model.load_state_dict(self.learner.weights())

    def close(self) -> None:
        self.pool.close()
        self.learner.close()


def _started(liveness: Liveness, refs, what: str):
    """Wait for actors to start; one whose construction found a GPU torch cannot use raises that
    DeviceError itself (Ray wraps it in an ActorDiedError whose text ends with it)."""
    try:
        return liveness.get(refs, what)
    except ray.exceptions.ActorDiedError as error:
        prefix = f"{DeviceError.__module__}.{DeviceError.__name__}: "
        line = next((line for line in str(error).splitlines() if line.startswith(prefix)), None)
        if line is None:
            raise
        raise DeviceError(line[len(prefix):]) from None


def start_distributed_engine(space: PruningSpace, config: Config, recipe: ModelRecipe,
                             total_steps: int | None = None) -> DistributedEngine:
    """Start `config.shards` shard actors and one learner actor, seeded with the driver's weights;
    `total_steps`: the run's length, over which the learner's cosine schedule anneals."""
    example = space.example_inputs.cpu()
    shard_device = "cuda" if config.shard_gpus > 0 else "cpu"
    shard_actor = ray.remote(ShardWorker).options(num_cpus=config.shard_cpus, num_gpus=config.shard_gpus)

    def make_shard():
        return shard_actor.remote(recipe, example, config.scoring, config.energy, config.kappa, shard_device,
                                  ScoringOptions.of(config))

    liveness = Liveness(config.liveness_timeout, config.restart_timeout)
    pool = ShardPool(make_shard, config.shards, liveness)
    try:
        learner = _start_learner(space, config, recipe, pool, liveness, total_steps)
    except BaseException:  # the shards started would hold their CPUs and GPUs until the driver exits
        pool.close()
        raise
    return DistributedEngine(space, config, pool, learner)


def _start_learner(space: PruningSpace, config: Config, recipe: ModelRecipe, pool: ShardPool, liveness: Liveness,
                   total_steps: int | None) -> RemoteLearner:
    """Once the shards are up, the learner actor with the driver's weights, behind its proxy."""
    units = _started(liveness, [shard.num_units.remote() for shard in pool.shards], "the shards to start")
    if any(u != space.num_units for u in units):
        raise RuntimeError(f"shards found {units} units, the driver {space.num_units}: the model must build "
                           "deterministically from its name")
    weights = {k: v.detach().cpu() for k, v in space.model.state_dict().items()}
    # without checkpoints there is no state to restart a learner from: better stop than restart it empty
    recoverable = config.checkpoint_every > 0 and config.learner_restarts > 0
    learner_actor = ray.remote(LearnerWorker).options(num_cpus=config.learner_cpus, num_gpus=config.learner_gpus,
                                                      max_restarts=config.learner_restarts if recoverable else 0)
    weights_ref = ray.put(weights)
    actor = learner_actor.remote(recipe, space.example_inputs.cpu(), config, weights_ref,
                                 "cuda" if config.learner_gpus > 0 else "cpu", total_steps)
    try:
        _started(liveness, actor.ping.remote(), "the learner to start")
    except BaseException:
        ray.kill(actor)
        raise
    return RemoteLearner(actor, pool, config.sync_every, liveness, recoverable=recoverable, keep=(weights_ref,))
