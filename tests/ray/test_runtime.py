"""The Ray runtime with real actors (not local mode): invariants 5 and 6, overlap, one engine."""

from __future__ import annotations

import math
from dataclasses import asdict

import pytest
import ray
import torch

from edropout_ray.config import Config
from edropout_ray.distributed.liveness import ActorLostError
from edropout_ray.pruning.space import PruningSpace
from edropout_ray.train import TrainLoop, make_engine, prepare

from helpers import after_each_step

pytestmark = pytest.mark.slow

BUDGET = dict(epochs=2, max_steps_per_epoch=4, batch_size=64, seed=5,
              freeze_by=None)  # the shards score at every step after the warm-up: a kill lands on a scoring step


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def train(shards: int, overlap: bool = False, kill_shard_at: int | None = None, kill_learner_at: int | None = None,
          checkpoint_dir=None, **keys):
    """Run a short training; optionally kill shard 0 (or the learner) after that many steps.
    Returns (mask, rows, engine)."""
    setup = prepare(Config(shards=shards, overlap=overlap, **BUDGET, **keys))
    space = PruningSpace(setup.new_model(), setup.example_inputs())
    engine = make_engine(space, setup)
    def kill_at_its_step(engine):
        if engine.step_count == kill_shard_at:
            ray.kill(engine.pool.shards[0], no_restart=True)
        if engine.step_count == kill_learner_at:  # as a lost node does: Ray may restart it
            ray.kill(engine.learner.actor, no_restart=False)

    after_each_step(engine, kill_at_its_step)
    loop = TrainLoop(engine, setup, f"shards={shards}", checkpoint_dir=checkpoint_dir)
    try:
        loop.run(progress=False)
        engine.finish()
    finally:
        engine.close()
    return engine.best_state.clone(), loop.step_rows, engine


@pytest.fixture(scope="module")
def one_shard():
    return train(shards=1)


def test_same_final_mask_with_one_and_two_shards(one_shard):
    """Invariant 5: the number of shards changes nothing but speed."""
    mask_1, rows_1, _ = one_shard
    mask_2, rows_2, _ = train(shards=2)
    assert torch.equal(mask_1, mask_2)
    assert [r.best_energy for r in rows_1] == [r.best_energy for r in rows_2]
    assert [r.loss for r in rows_1] == [r.loss for r in rows_2]


def test_a_killed_shard_is_replaced_and_nothing_is_lost(one_shard):
    """Invariant 6: kill a shard mid-run; the run completes with the uninterrupted run's result."""
    mask_1, rows_1, _ = one_shard
    mask, rows, engine = train(shards=2, kill_shard_at=3)
    assert engine.pool.replacements >= 1
    assert torch.equal(mask, mask_1)
    assert [r.best_energy for r in rows] == [r.best_energy for r in rows_1]


@pytest.mark.parametrize("step", [pytest.param(2, id="before-the-first-checkpoint", marks=pytest.mark.extended),
                                  pytest.param(5, id="two-steps-after-one")])  # 23 s each: one in make test
def test_a_killed_learner_restarts_from_its_checkpoint_and_replays(one_shard, tmp_path, step):
    """Kill the learner actor after a given step (checkpoints every 3): Ray restarts it, the proxy loads
    the latest checkpoint's state and replays the steps since; the run ends as the uninterrupted one,
    history included. Fixed steps, so a failure reruns as it failed."""
    mask_1, rows_1, _ = one_shard
    assert step < len(rows_1)
    mask, rows, engine = train(shards=2, kill_learner_at=step, checkpoint_dir=tmp_path, checkpoint_every=3)
    assert engine.learner.recoveries >= 1
    assert torch.equal(mask, mask_1)
    assert [asdict(r) for r in rows] == [asdict(r) for r in rows_1]


def test_a_lost_learner_without_checkpoints_stops_the_run_clearly():
    with pytest.raises(ActorLostError, match="restarted only from a checkpoint: set checkpoint_every"):
        train(shards=1, kill_learner_at=2)


@pytest.mark.extended  # 17 s: make test-all (CI's 25 minutes)
def test_overlap_runs_with_energies_one_step_old(one_shard):
    mask_1, rows_1, _ = one_shard
    mask, rows, _ = train(shards=2, overlap=True)
    assert len(rows) == len(rows_1) and mask.shape == mask_1.shape
    assert all(math.isfinite(r.loss) for r in rows), "every step's loss is collected"
    # the first generation scores with the same (initial) weights either way
    assert rows[0].best_energy == rows_1[0].best_energy


def test_driver_model_holds_the_learners_weights(one_shard):
    _, _, engine = one_shard
    # finish() copied the learner actor's last weights into the driver's model; a fresh model differs
    setup = prepare(Config(**BUDGET))
    fresh = setup.new_model().state_dict()
    trained = engine.space.model.state_dict()
    assert any(not torch.equal(fresh[k], trained[k]) for k in fresh)
