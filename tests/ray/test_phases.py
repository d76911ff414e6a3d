"""Shards exist only while the population searches: not through the dense warm-up, not after the freeze,
not in a run resumed after the freeze; and the report says what each process held and used."""

from __future__ import annotations

import json
import time

import pytest
import ray

from edropout_ray.artifacts.checkpoint import load_checkpoint
from edropout_ray.config import Config
from edropout_ray.pruning.space import PruningSpace
from edropout_ray.train import TrainLoop, make_engine, prepare, run

pytestmark = pytest.mark.slow

# 20 steps: 3 dense (warm-up), the search from step 3, the mask frozen at step 6
PHASES = dict(epochs=4, max_steps_per_epoch=5, batch_size=64, seed=3, shards=2, shards_start_ahead=1,
              dense_warmup=0.15, freeze_by=0.3, dense_baseline=False, latency_batches=[],
              report_extra_masks=False)


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def is_dead(actor, live_for: float = 60.0) -> bool:
    """A killed actor's calls fail (ActorDiedError) once Ray has ended it. `ray.kill` is asynchronous: a
    call made just after it can still be served, so calls are repeated until one fails (the event
    waited for); an actor that answers for `live_for` seconds is alive (the bound only decides a failure)."""
    deadline = time.monotonic() + live_for
    while time.monotonic() < deadline:
        try:
            ray.get(actor.num_units.remote())
        except ray.exceptions.RayActorError:
            return True
    return False


class Crash(Exception):
    """The driver stopping between two steps, as a lost driver does (the last checkpoint is kept)."""


class Watched:
    """Runs a loop step by step, recording per step whether shards ran and what was published to them."""

    def __init__(self, engine, crash_at: int | None = None):
        self.engine, self.crash_at = engine, crash_at
        self.running_at: list[bool] = []
        self.publishes_after_freeze = 0
        self.shard_starts = 0
        self.started_shards: list = []  # handles of every shard started
        self.alive_after_freeze: list[bool] | None = None
        step, publish, start = engine.step, engine.pool.publish, engine.pool.start

        def watched_step(x, y, epoch):
            if engine.step_count == self.crash_at:  # the checkpoint after step `crash_at` was written
                raise Crash()
            record = step(x, y, epoch)
            self.running_at.append(engine.pool.running)
            if engine.frozen and self.alive_after_freeze is None:  # the run goes on: are its shards gone?
                self.alive_after_freeze = [not is_dead(shard) for shard in self.started_shards]
            return record

        def watched_publish(ref):
            self.publishes_after_freeze += engine.frozen
            publish(ref)

        def watched_start():
            self.shard_starts += not engine.pool.running
            start()
            self.started_shards += engine.pool.shards

        engine.step, engine.pool.publish, engine.pool.start = watched_step, watched_publish, watched_start


def run_loop(config: Config, folder, crash_at: int | None = None, resume: bool = False) -> Watched:
    setup = prepare(config)
    engine = make_engine(PruningSpace(setup.new_model(), setup.example_inputs()), setup)
    watched = Watched(engine, crash_at)
    loop = TrainLoop(engine, setup, "phases", checkpoint_dir=folder)
    try:
        if resume:
            loop.restore(load_checkpoint(folder))
        try:
            loop.run(progress=False)
        except Crash:
            pass
        engine.finish()
    finally:
        engine.close()
    return watched


def test_shards_run_from_just_before_the_search_to_the_freeze(tmp_path):
    watched = run_loop(Config(**PHASES), tmp_path)
    # running_at[s-1]: shards up after step s. Started before step 3 (one ahead of the search's first step,
    # 4), ended by step 6, which froze the mask
    assert watched.running_at == [False, False, True, True, True] + [False] * 15
    assert watched.shard_starts == 1
    assert watched.alive_after_freeze == [False, False], "a shard process outlived the freeze"
    assert watched.publishes_after_freeze == 0, "weights were sent to shards after the freeze"


def test_a_run_resumed_after_the_freeze_starts_no_shard(tmp_path):
    config = Config(**PHASES, checkpoint_every=1)
    first = run_loop(config, tmp_path, crash_at=10)
    assert first.shard_starts == 1
    resumed = run_loop(config, tmp_path, resume=True)
    assert resumed.shard_starts == 0 and not any(resumed.running_at)
    assert len(resumed.running_at) == 10  # steps 11 to 20


@pytest.mark.extended  # 36 s: make test-all (CI's 25 minutes)
def test_a_run_resumed_during_the_search_starts_the_shards_again(tmp_path):
    config = Config(**PHASES, checkpoint_every=1)
    run_loop(config, tmp_path, crash_at=4)
    resumed = run_loop(config, tmp_path, resume=True)
    assert resumed.shard_starts == 1
    assert resumed.running_at == [True] + [False] * 15  # step 5 searched, step 6 froze the mask


@pytest.mark.extended  # 22 s; tests/ray/test_data_parallel.py checks resources in make test: make test-all (CI's 25 minutes)
def test_the_report_says_what_each_process_held_and_used(tmp_path):
    report = run(Config(**PHASES), tmp_path / "run", progress=False)
    resources = json.loads((tmp_path / "run" / "report.json").read_text())["resources"]
    assert resources == report["resources"]
    roles = [p["role"] for p in resources["processes"]]
    assert sorted(roles) == ["learner", "shard", "shard"]
    learner = next(p for p in resources["processes"] if p["role"] == "learner")
    shards = [p for p in resources["processes"] if p["role"] == "shard"]
    for process in resources["processes"]:
        assert 0 < process["busy_s"] <= process["held_s"], process
    # the shards lived through 4 of the 20 steps, the learner through all of them
    assert all(shard["held_s"] < learner["held_s"] for shard in shards)
    assert resources["held_device_s"] == pytest.approx(sum(p["cpus"] * p["held_s"] for p in resources["processes"]))
    assert 0 < resources["busy_fraction"] < 1
