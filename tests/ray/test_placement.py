"""Where a run's work goes on Ray: whatever trains holds the learner's resources, and nothing trains
in the driver (on a cluster the driver sits on a head node with no CPUs for work).

The local Ray declares one GPU, which Ray allows on a machine without one: a task holding it sees
CUDA_VISIBLE_DEVICES but torch finds no device, so `device: auto` trains on the CPU. What each task
or trial reserved is read inside it, from Ray's runtime context (report.json's `placement`).
"""

from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
import pytest
import ray
from ray import tune

from edropout_ray import train as train_module
from edropout_ray.compare import compare
from edropout_ray.config import Config
from edropout_ray.distributed.placement import here, train_dense_on_ray
from edropout_ray.errors import DenseBaselineError
from edropout_ray.sweep import trial_resources

pytestmark = pytest.mark.slow

SHORT = dict(epochs=1, max_steps_per_epoch=2, batch_size=64, latency_batches=[])


@pytest.fixture(scope="module", autouse=True)
def local_ray_with_a_gpu():
    ray.init(num_cpus=3, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_the_dense_baseline_of_a_run_on_ray_is_a_task_with_the_learners_resources(tmp_path):
    report = train_module.run(Config(shards=1, learner_cpus=2, dense_baseline=True, **SHORT), tmp_path, progress=False)
    assert 0 <= report["dense_top1"] <= 100 and "top1_drop" in report
    assert report["placement"]["pid"] == os.getpid() and report["placement"]["resources"] == {}, "the driver"
    dense = report["dense_placement"]
    assert dense["pid"] != os.getpid() and dense["resources"] == {"CPU": 2.0}
    assert json.loads((tmp_path / "report.json").read_text())["dense_placement"] == dense

    on_gpu = train_dense_on_ray(Config(learner_gpus=1, **SHORT), progress=False)
    assert on_gpu["placement"]["resources"] == {"CPU": 1.0, "GPU": 1.0} and on_gpu["placement"]["pid"] != os.getpid()
    assert len(on_gpu["epochs"]) == 1


def test_a_failed_dense_baseline_is_named_and_the_pruned_runs_artifacts_are_kept(tmp_path, monkeypatch):
    with pytest.raises(DenseBaselineError, match=r"dense baseline .* failed: DatasetNotFoundError: fashion_mnist not found"):
        train_dense_on_ray(Config(dataset="fashion_mnist", data_dir=str(tmp_path / "nothing"), **SHORT), False)

    def fail(config, progress, checkpoint_dir=None):
        raise DenseBaselineError("the dense baseline (a Ray task) failed: OutOfMemoryError: CUDA out of memory")

    monkeypatch.setattr("edropout_ray.distributed.placement.train_dense_on_ray", fail)
    with pytest.raises(DenseBaselineError, match=f"out of memory. The pruned run finished .* {tmp_path}; set "
                                                 "dense_baseline: false"):
        train_module.run(Config(shards=1, dense_baseline=True, **SHORT), tmp_path, progress=False)
    report = json.loads((tmp_path / "report.json").read_text())
    assert "dense_top1" not in report and "out of memory" in report["dense_error"]
    assert (tmp_path / "final_mask.npy").exists()


@pytest.mark.extended  # 17 s: make test-all (CI's 25 minutes)
def test_every_run_of_compare_is_a_task_holding_the_learners_cpus_and_gpus(tmp_path):
    compare(Config(learner_gpus=1, dense_baseline=True, **SHORT), tmp_path, seeds=[0], methods=["random"])
    for method in ("edropout", "random"):
        report = json.loads((tmp_path / method / "seed0" / "report.json").read_text())
        placement = report["placement"]
        assert placement["pid"] != os.getpid() and placement["resources"] == {"CPU": 1.0, "GPU": 1.0}, method
    edropout = json.loads((tmp_path / "edropout" / "seed0" / "report.json").read_text())
    assert edropout["dense_placement"]["pid"] == edropout["placement"]["pid"], "in the run's own task"
    assert "dense" in {row["method"] for row in pq.read_table(tmp_path / "runs.parquet").to_pylist()}


def test_a_one_process_trial_reserves_the_gpu_it_trains_on(tmp_path):
    config = Config(learner_gpus=1, learner_cpus=2)
    assert trial_resources(config).bundles == [{"CPU": 2.0, "GPU": 1.0}]

    def trial(_):
        tune.report({"pid": os.getpid(), **{k: v for k, v in here()["resources"].items()}})

    results = tune.Tuner(tune.with_resources(trial, trial_resources(config)),
                         run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0)).fit()
    metrics = results[0].metrics
    assert metrics["pid"] != os.getpid() and metrics["GPU"] == 1.0 and metrics["CPU"] == 2.0


def test_a_driver_on_a_node_without_cpus_runs_the_whole_run_as_a_task(tmp_path, monkeypatch):
    """A cloud cluster's head declares no CPUs: `train` there sends the run to a worker (here the
    driver's node is said to have none; the local Ray's node runs the task)."""
    from edropout_ray.distributed import placement
    from edropout_ray.data.common import DatasetNotFoundError

    assert not placement.driver_without_cpus(), "this test's local Ray gives the driver's node CPUs"
    monkeypatch.setattr(placement, "driver_without_cpus", lambda: True)
    config = Config(shards=0, learner_gpus=1, checkpoint_every=1, **SHORT)
    report = train_module.run(config, tmp_path / "run", progress=False)
    assert report["placement"]["pid"] != os.getpid() and report["placement"]["resources"] == {"CPU": 1.0, "GPU": 1.0}
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["device"] == "auto", "the config as given is saved, so --resume agrees with it"
    resumed = train_module.run(None, tmp_path / "run", progress=False, resume=True)
    assert resumed["placement"]["pid"] != os.getpid() and resumed["units_kept"] == report["units_kept"]
    # the run's own error comes back as itself, not wrapped in Ray's
    with pytest.raises(DatasetNotFoundError, match="fashion_mnist not found"):
        train_module.run(Config(dataset="fashion_mnist", data_dir=str(tmp_path / "nothing"), **SHORT),
                         tmp_path / "bad", progress=False)


@pytest.mark.extended  # 35 s: make test-all (the dense baseline's placement test below stays in make test)
def test_shards_and_the_learner_compute_on_the_gpus_they_hold():
    """Several shards and the learner on one GPU (fractions), and the learner on a whole GPU: each
    actor computes on the GPU Ray gave it. This machine has no CUDA, so each says so by name, with
    the GPU it holds, instead of computing on the CPU unseen; without GPUs they run on the CPU."""
    from edropout_ray.distributed.coordinator import start_distributed_engine
    from edropout_ray.errors import DeviceError
    from edropout_ray.training.run_setup import prepare

    setup = prepare(Config(**SHORT))
    with pytest.raises(DeviceError, match=r"the learner holds GPU \[0\] .* torch .* sees no CUDA device"):
        start_distributed_engine(setup.new_space(), Config(**SHORT, shards=1, learner_gpus=1), setup.recipe)
    # shards start when the population is first scored (here the first step: no warm-up planned)
    engine = start_distributed_engine(setup.new_space(), Config(**SHORT, shards=2, shard_gpus=0.25), setup.recipe)
    x, y = next(iter(setup.train_loader))
    try:
        with pytest.raises(DeviceError, match=r"a population shard holds GPU \[0\] .* torch .* sees no CUDA device"):
            engine.step(x, y, 0)
    finally:
        engine.close()
    # what failed to start let go of the GPU: a task needing all of it runs (Ray frees it as the actors go)
    assert ray.get(ray.remote(lambda: ray.get_gpu_ids()).options(num_gpus=1).remote()) == [0]

    engine = start_distributed_engine(setup.new_space(), Config(**SHORT, shards=1), setup.recipe)
    try:
        engine.pool.start()
        shard, learner = ray.get([engine.pool.shards[0].where.remote(), engine.learner.actor.where.remote()])
    finally:
        engine.close()
    assert shard["device"] == learner["device"] == "cpu" and shard["gpu_ids"] == learner["gpu_ids"] == []
    assert shard["resources"] == {"CPU": 1.0} and shard["pid"] != learner["pid"] != os.getpid()
