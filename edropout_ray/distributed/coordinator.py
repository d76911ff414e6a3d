"""The coordinator: the same EDropout step as in one process, over shard actors and a learner actor.

The shards live only while the population searches: started `shards_start_ahead` steps before the
dense warm-up ends (Ray places them and they build their model meanwhile), ended at the step that
freezes the mask, so their CPUs and GPUs go back to Ray for the rest of the run. A run resumed after
the freeze starts none.

With `overlap: true`, the children of step t+1 are scored while the learner runs step t, so the
energies use weights one step old; the learner then never waits for scoring.

With `score_on_learners: true` there are no shard processes: the first `shards` of the learner's workers
score the population, each a slice, with their own replicas (the weights after the last step, as in one
process), then take part in the step. Every worker is held and works for the whole run; nothing is
started, resized or sent weights at the phases' changes.

Faults: a dead shard is replaced by the pool; a lost learner is recovered by its proxy; a shard
that lacks the weights it was sent makes the coordinator recover the learner and score again.
Every wait checks the cluster (liveness.py), so a lost cluster stops the run instead of hanging it.
"""

from __future__ import annotations

import ray
import torch

from ..config import Config
from ..training.contract import StepResult
from ..training.step import EDropoutEngine, PendingStep
from .learner_actor import LearnerWorker, RemoteLearner
from .learner_group import LearnerGroup
from .liveness import Liveness
from ..models import ModelRecipe
from .shard import ShardPool, ShardWorker, WeightsLost
from .usage import summarize
from ..pruning.scoring_options import ScoringOptions
from ..pruning.space import PruningSpace


class DistributedEngine(EDropoutEngine):
    """EDropoutEngine whose scorer is a ShardPool and whose learner is a remote actor: the step's
    sequence is the base class's; only how it scores and how it learns differ."""

    def __init__(self, space: PruningSpace, config: Config, pool: ShardPool, learner: RemoteLearner,
                 shards_follow_phases: bool = True):
        super().__init__(space, config, scorer=self._score, learner=learner)
        self.pool = pool
        self.learner: RemoteLearner = learner
        # False: the shards start with the learner and live to the end (the shape before phases; benchmarks)
        self.shards_follow_phases = shards_follow_phases
        # the learner on one worker while the shards search, on all of them before and after
        self.scores_on_learners = config.score_on_learners
        self.shares_devices = (shards_follow_phases and config.share_devices_across_phases
                               and config.learner_workers > 1 and not self.scores_on_learners)
        if not shards_follow_phases and not self.scores_on_learners:
            self._start_shards()

    def _start_shards(self) -> None:
        if self.shares_devices:  # the learner's other workers make room for the shards
            self._collect_pending()
            self.learner.resize(1)
        self.pool.start()
        self.learner.publish()  # the weights they will score with

    def _prepare_step(self) -> None:
        """Shards up shortly before the population is first scored, and only if it will be."""
        if self.scores_on_learners or self.pool.running or self.frozen or not self.shards_follow_phases:
            return
        if self.step_count >= self.warmup_steps - self.config.shards_start_ahead:
            self._start_shards()

    def _after_freeze(self, was_frozen: bool) -> None:
        super()._after_freeze(was_frozen)
        if self.frozen and self.shards_follow_phases and self.pool.running:
            self.pool.stop("the mask is frozen")
            if self.shares_devices:  # the shards' devices back to the learner
                self._collect_pending()
                self.learner.resize(self.config.learner_workers)

    def _score(self, states: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.scores_on_learners:  # queued behind the step in flight on the same workers
            return self.learner.score(states, x, y)
        while True:
            try:
                return self.pool(states, x, y)
            except WeightsLost as error:  # bounded: each recovery uses up one of the learner's restarts
                self.learner.recover(error)

    def _learn(self, state: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> StepResult | PendingStep:
        """With `overlap`, this step's children were scored while the learner's previous step ran on its
        actor (with the weights from before that step); the shards get the newer weights only now, and
        this step's result is collected at the next one. With `score_on_learners` every step is sent before
        the previous one's result is collected, so the workers always have the next call queued; scores are
        queued behind the step on the same workers, so they see its weights anyway."""
        if self.scores_on_learners:  # sent before the last one is collected: the workers never wait for the driver
            pending = self.learner.step_async(state, x, y)
            self._collect_pending()
            return pending
        if not self.config.overlap:
            return self.learner.step(state, x, y)
        self._collect_pending()
        self.learner.publish_if_due()
        return self.learner.step_async(state, x, y)

    def validate(self, state: torch.Tensor, loader, device: torch.device) -> dict[str, float]:
        """On the learner's workers, a share of the batches each: they hold the weights and the devices, which
        would otherwise wait while the driver validates. Queued behind the step in flight, as scores are."""
        return self.learner.evaluate(state, loader)

    def checkpoint(self) -> dict:
        saved = super().checkpoint()
        self.learner.restart_from(saved["learner"])  # a learner lost from now on resumes from this state
        return saved

    def finish(self) -> None:
        self._collect_pending()
        self.space.model.load_state_dict(self.learner.weights())

    def resources(self) -> dict:
        """report.json's `resources`: the learner's and every shard's time held and busy so far (shards
        still running are ended first: call it when the run is over)."""
        self.pool.stop()
        return summarize([*self.learner.usage(), *self.pool.usage])

    def usage_so_far(self) -> dict:
        """`resources()` until now, every process left running (a sweep trial reports it each epoch)."""
        return summarize([*self.learner.usage(), *self.pool.usage_so_far()])

    def close(self) -> None:
        self.pool.close()
        self.learner.close()


def start_distributed_engine(space: PruningSpace, config: Config, recipe: ModelRecipe,
                             total_steps: int | None = None, shards_follow_phases: bool = True) -> DistributedEngine:
    """Start the learner actor, seeded with the driver's weights, and a pool of `config.shards` shard
    actors that the engine starts when the search nears (never, with `score_on_learners`); `total_steps`: the run's length, over which
    the learner's cosine schedule anneals."""
    example = space.example_inputs.cpu()
    shard_device = "cuda" if config.shard_gpus > 0 else "cpu"
    shard_actor = ray.remote(ShardWorker).options(num_cpus=config.shard_cpus, num_gpus=config.shard_gpus)

    def make_shard():
        return shard_actor.remote(recipe, example, config.scoring, config.energy, config.kappa, shard_device,
                                  ScoringOptions.of(config), tuple(config.keep_layers))

    liveness = Liveness(config.liveness_timeout, config.restart_timeout)
    pool = ShardPool(make_shard, config.shards, liveness, expected_units=space.num_units,
                     resources=(config.shard_cpus, config.shard_gpus))
    learner = _start_learner(space, config, recipe, pool, liveness, total_steps)
    try:
        return DistributedEngine(space, config, pool, learner, shards_follow_phases)
    except BaseException:  # the actors started would hold their CPUs and GPUs until the driver exits
        pool.close()
        learner.close()
        raise


def _start_learner(space: PruningSpace, config: Config, recipe: ModelRecipe, pool: ShardPool, liveness: Liveness,
                   total_steps: int | None) -> RemoteLearner:
    """The learner's `learner_workers` actors with the driver's weights, behind their proxy. One worker is
    restarted by Ray when lost; a group is started again as a whole by LearnerGroup (max_restarts 0)."""
    weights = {k: v.detach().cpu() for k, v in space.model.state_dict().items()}
    # without checkpoints there is no state to restart a learner from: better stop than restart it empty
    recoverable = config.checkpoint_every > 0 and config.learner_restarts > 0
    ray_restarts = config.learner_restarts if recoverable and config.learner_workers == 1 else 0
    learner_actor = ray.remote(LearnerWorker).options(num_cpus=config.learner_cpus, num_gpus=config.learner_gpus,
                                                      max_restarts=ray_restarts)
    weights_ref = ray.put(weights)  # kept by the closure: a restarted worker is built from the same object
    example = space.example_inputs.cpu()
    device = "cuda" if config.learner_gpus > 0 else "cpu"

    def start_worker():
        return learner_actor.remote(recipe, example, config, weights_ref, device, total_steps)

    scorers = config.shards if config.score_on_learners else 0
    group = LearnerGroup(start_worker, config.learner_workers, liveness,
                         restarts=config.learner_restarts if recoverable else 0,
                         backend="nccl" if config.learner_gpus > 0 else "gloo",
                         resources=(config.learner_cpus, config.learner_gpus), scorers=scorers)
    try:
        return RemoteLearner(group, pool, config.sync_every, liveness, recoverable=recoverable, scorers=scorers)
    except BaseException:
        group.kill()
        raise
