"""A data-parallel learner (`learner_workers: 2`) on a local Ray: the same update as one worker on the
whole batch, a whole run that ends as a one-worker run, and a worker killed mid-run recovered by
starting the group again from the checkpoint and replaying."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import pytest
import ray
import torch

from edropout_ray.artifacts.checkpoint import load_checkpoint
from edropout_ray.config import Config
from edropout_ray.distributed.coordinator import _start_learner
from edropout_ray.distributed.liveness import Liveness
from edropout_ray.distributed.shard import ShardPool
from edropout_ray.models import ModelRecipe
from edropout_ray.pruning.evaluation import evaluate
from edropout_ray.pruning.space import PruningSpace
from edropout_ray.train import TrainLoop, make_engine, prepare

from helpers import after_each_step, random_states

pytestmark = pytest.mark.slow

TESTS = str(Path(__file__).resolve().parents[1])
# the search to the end, beside two learner workers that keep their devices: every step is data-parallel
RUN = dict(epochs=2, max_steps_per_epoch=5, batch_size=64, seed=2, shards=1, freeze_by=None,
           share_devices_across_phases=False, dense_baseline=False, latency_batches=[], report_extra_masks=False)


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    # the workers import the test's float64 model (helpers:double_mlp) from tests/
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": TESTS}})
    yield
    ray.shutdown()


def steps_on_workers(workers: int, train_at_size: bool, batches) -> dict[str, torch.Tensor]:
    """The learner's weights after `batches` (one step each) with `workers` data-parallel workers."""
    recipe = ModelRecipe("helpers:double_mlp", num_classes=10, in_channels=1, image_size=8, seed=0)
    example = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    space = PruningSpace(recipe.build(), example)
    config = Config(shards=1, learner_workers=workers, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-3,
                    train_at_size=train_at_size, batch_size=16, channel_multiple=1)
    liveness = Liveness()
    pool = ShardPool(lambda: None, 1, liveness)  # never started: nothing is published
    learner = _start_learner(space, config, recipe, pool, liveness, total_steps=10)
    try:
        state = random_states(space, 1, p_keep=0.6, seed=1)[0]
        for x, y in batches:
            learner.step(state, x, y)
        return learner.weights()
    finally:
        learner.close()


@pytest.mark.parametrize("train_at_size", [pytest.param(True, id="at_size"),  # 15 s each: masked in make test-all
                                           pytest.param(False, id="masked", marks=pytest.mark.extended)])
def test_two_workers_take_the_step_one_worker_takes_on_the_whole_batch(train_at_size):
    generator = torch.Generator().manual_seed(0)
    # 17 samples: the parts are 9 and 8, so their gradients must be weighted by their shares
    batches = [(torch.randn(17, 1, 8, 8, dtype=torch.float64, generator=generator),
                torch.randint(0, 10, (17,), generator=generator)) for _ in range(2)]
    initial = ModelRecipe("helpers:double_mlp", 10, 1, 8, seed=0).build().state_dict()
    one, two = steps_on_workers(1, train_at_size, batches), steps_on_workers(2, train_at_size, batches)
    assert one.keys() == two.keys() == initial.keys()
    for name in one:
        assert one[name].dtype == torch.float64
        assert torch.allclose(one[name], two[name], rtol=1e-10, atol=1e-12), name
        assert not torch.equal(one[name], initial[name]), f"the steps left {name} as it was"


def train(workers: int, kill_worker_at: int | None = None, checkpoint_dir=None, **keys):
    """A short run on digits; optionally kill learner worker 1 after that many steps.
    (mask, rows, engine, report's resources, each worker's final weights)."""
    setup = prepare(Config(**{**RUN, "learner_workers": workers, **keys}))
    engine = make_engine(PruningSpace(setup.new_model(), setup.example_inputs()), setup)
    def kill_at_its_step(engine):
        if engine.step_count == kill_worker_at:  # as a lost node does
            ray.kill(engine.learner.group.workers[1], no_restart=True)

    after_each_step(engine, kill_at_its_step)
    loop = TrainLoop(engine, setup, f"workers={workers}", checkpoint_dir=checkpoint_dir)
    try:
        loop.run(progress=False)
        engine.finish()
        each_workers_weights = ray.get([w.weights.remote() for w in engine.learner.group.workers])
        resources = engine.resources()
    finally:
        engine.close()
    return engine.best_state.clone(), loop.step_rows, engine, resources, each_workers_weights


@pytest.fixture(scope="module")
def two_workers():
    return train(workers=2)


def test_a_two_worker_run_trains_one_model_on_both_workers(two_workers):
    """The digits CNN has BatchNorm: each worker normalizes its half of the batch (as DDP does), so the run
    is not the one-worker run to the bit; what must hold is that the workers never drift apart (gradients
    averaged, rank 0's statistics given to all) and that both worked."""
    mask, rows, engine, resources, weights = two_workers
    assert len(rows) == RUN["epochs"] * RUN["max_steps_per_epoch"] and all(math.isfinite(r.loss) for r in rows)
    assert engine.learner.group.size == 2 and engine.pool.running is False
    assert rows[-1].loss < rows[0].loss
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), f"the workers' {name} differ"
    final = engine.space.model.state_dict()
    assert all(torch.equal(final[name], weights[0][name]) for name in final), "the driver holds rank 0's weights"
    learners = [p for p in resources["processes"] if p["role"] == "learner"]
    assert [p["index"] for p in learners] == [0, 1] and all(p["busy_s"] > 0 for p in learners)
    assert int(mask.sum()) > 0


def test_a_killed_worker_restarts_the_group_from_the_checkpoint_and_the_run_completes(two_workers, tmp_path):
    """Kill worker 1 after step 5 (checkpoints every 3): the group is started again, loads the step-3 state
    and replays steps 4 and 5; the run ends exactly as the uninterrupted two-worker run."""
    mask_2, rows_2, _, _, _ = two_workers
    mask, rows, engine, _, _ = train(workers=2, kill_worker_at=5, checkpoint_dir=tmp_path, checkpoint_every=3)
    assert engine.learner.recoveries == 1 and engine.learner.group.restarts_used == 1
    assert torch.equal(mask, mask_2)
    assert [asdict(r) for r in rows] == [asdict(r) for r in rows_2]


def test_learner_workers_need_the_ray_runtime_and_a_batch_to_split():
    from edropout_ray.errors import ConfigError

    with pytest.raises(ConfigError, match="needs the Ray runtime: set shards >= 1"):
        Config(learner_workers=2, shards=0)
    with pytest.raises(ConfigError, match=r"batch_size \(2\) must be at least learner_workers \(4\)"):
        Config(learner_workers=4, shards=1, batch_size=2)


def test_the_learner_gives_its_devices_to_the_shards_while_the_population_searches():
    """learner_workers 2, one shard: two workers through the dense warm-up, one while the shard runs,
    two again after the freeze; the report counts every worker that lived."""
    # 20 steps: 3 dense (the shard started one step ahead, at the third), the search from step 3, frozen at 6
    setup = prepare(Config(learner_workers=2, **{**RUN, "epochs": 4, "freeze_by": 0.3, "dense_warmup": 0.15,
                                                  "shards_start_ahead": 1, "share_devices_across_phases": True}))
    engine = make_engine(PruningSpace(setup.new_model(), setup.example_inputs()), setup)
    seen: list[tuple[int, bool]] = []  # (learner workers, shards running) after each step
    so_far: list[dict] = []  # a sweep trial's per-epoch count, taken while the shard runs

    def watch(engine):
        seen.append((engine.learner.group.size, engine.pool.running))
        if engine.pool.running and not so_far:
            so_far.append(engine.usage_so_far())
            assert engine.pool.running, "counting ended nothing"

    after_each_step(engine, watch)
    loop = TrainLoop(engine, setup, "elastic")
    try:
        loop.run(progress=False)
        engine.finish()
        resources = engine.resources()
    finally:
        engine.close()
    assert seen[:2] == [(2, False), (2, False)], seen
    assert all(workers == 1 for workers, running in seen if running), seen
    assert seen[-1] == (2, False), seen
    assert any(running for _, running in seen), seen
    learners = [p for p in resources["processes"] if p["role"] == "learner"]
    assert len(learners) == 5, learners  # 2, then 1, then 2
    assert [p["role"] for p in so_far[0]["processes"]] == ["learner"] * 3 + ["shard"]  # 2 ended, 1 and the shard
    assert 0 < so_far[0]["busy_device_s"] < so_far[0]["held_device_s"] < resources["held_device_s"]


# ---- score_on_learners: the population scored by the learner's workers, no shard processes ---------
def test_learner_workers_score_and_validate_as_the_driver_does_with_the_same_weights():
    """Two workers, each scoring a slice: the driver's energies on the same weights (float64), before a
    step and after one (the scores are queued behind it, so they see its update); validation shared out
    over the workers gives the driver's metrics."""
    recipe = ModelRecipe("helpers:double_mlp", num_classes=10, in_channels=1, image_size=8, seed=0)
    space = PruningSpace(recipe.build(), torch.randn(2, 1, 8, 8, dtype=torch.float64))
    config = Config(shards=2, learner_workers=2, score_on_learners=True, optimizer="sgd", lr=0.5,
                    batch_size=16, channel_multiple=1, energy="margin", kappa=10.0)
    liveness = Liveness()
    learner = _start_learner(space, config, recipe, ShardPool(lambda: None, 2, liveness), liveness, total_steps=10)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(16, 1, 8, 8, dtype=torch.float64, generator=generator)
    y = torch.randint(0, 10, (16,), generator=generator)
    states = random_states(space, 5, p_keep=0.6, seed=4)  # 5 states: slices of 3 and 2
    try:
        before = learner.score(states, x, y)
        learner.step_async(states[0], x, y)
        after = learner.score(states, x, y)
        batches = [(torch.randn(n, 1, 8, 8, dtype=torch.float64, generator=generator),
                    torch.randint(0, 10, (n,), generator=generator)) for n in (7, 5, 6)]  # 2 on rank 0, 1 on rank 1
        validated = learner.evaluate(states[1], batches)
        space.model.load_state_dict(learner.weights())
    finally:
        learner.close()
    expected = space.score(states, x, y, energy="margin", kappa=10.0)
    assert after.shape == (5,) and torch.allclose(after, expected, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(before, after), "the scores did not see the step queued before them"
    on_driver = evaluate(space, states[1], batches, torch.device("cpu"))
    assert validated.keys() == on_driver.keys()
    assert all(math.isclose(validated[k], on_driver[k], rel_tol=1e-12) for k in on_driver), (validated, on_driver)


@pytest.fixture(scope="module")
def scoring_workers():
    return train(workers=2, shards=2, score_on_learners=True)


def test_learners_that_score_hold_every_device_for_the_whole_run_and_start_no_shard(scoring_workers):
    mask, rows, engine, resources, weights = scoring_workers
    searched = [r for r in rows if math.isfinite(r.best_energy)]
    assert searched and sum(r.accepted for r in rows) > 0, "the population was never scored"
    assert engine.pool.replacements == 0 and engine.pool.usage == [], "a shard process was started"
    assert [p["role"] for p in resources["processes"]] == ["learner+shard"] * 2, resources["processes"]
    assert all(p["busy_s"] > 0 for p in resources["processes"])
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), f"the workers' {name} differ"


def test_a_worker_killed_while_scoring_is_recovered_and_the_run_ends_as_without_the_kill(scoring_workers, tmp_path):
    """Worker 1 killed after step 5, in the search: the next scoring finds it gone; the group starts again
    from the step-3 checkpoint, replays, scores again, and every row is the uninterrupted run's."""
    mask_2, rows_2, _, _, _ = scoring_workers
    mask, rows, engine, _, _ = train(workers=2, shards=2, score_on_learners=True, kill_worker_at=5,
                                     checkpoint_dir=tmp_path, checkpoint_every=3)
    assert math.isfinite(rows_2[5].best_energy), "the kill must come while the population is scored"
    assert engine.learner.recoveries == 1
    assert torch.equal(mask, mask_2)
    assert [asdict(r) for r in rows] == [asdict(r) for r in rows_2]


class Crash(Exception):
    """The driver stopping between two steps (the last checkpoint is kept)."""


def test_a_run_whose_workers_score_resumed_in_the_search_ends_as_without_the_stop(scoring_workers, tmp_path):
    """Stopped after step 4 of the search (checkpoints every step, the last one after step 3), then resumed
    from the checkpoint with new workers: every row and the final mask are the uninterrupted run's."""
    mask_2, rows_2, _, _, _ = scoring_workers
    config = Config(**{**RUN, "learner_workers": 2, "shards": 2, "score_on_learners": True, "checkpoint_every": 1})

    def run_once(resume: bool):
        setup = prepare(config)
        engine = make_engine(PruningSpace(setup.new_model(), setup.example_inputs()), setup)

        def stop_after_step_4(engine):
            if engine.step_count == 4 and not resume:
                raise Crash()

        after_each_step(engine, stop_after_step_4)
        loop = TrainLoop(engine, setup, "resumed", checkpoint_dir=tmp_path)
        try:
            if resume:
                loop.restore(load_checkpoint(tmp_path))
            loop.run(progress=False)
        finally:
            engine.close()
        return engine.best_state.clone(), loop.step_rows

    with pytest.raises(Crash):
        run_once(resume=False)
    mask, rows = run_once(resume=True)
    assert math.isfinite(rows_2[3].best_energy), "the stop must come while the population is scored"
    assert torch.equal(mask, mask_2)
    assert [asdict(r) for r in rows] == [asdict(r) for r in rows_2]


def test_score_on_learners_needs_a_shard_per_worker_at_most():
    from edropout_ray.errors import ConfigError

    with pytest.raises(ConfigError, match="set 1 <= shards <= learner_workers"):
        Config(learner_workers=2, shards=3, score_on_learners=True)
