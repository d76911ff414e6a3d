"""The local Ray a run starts for itself has a CPU for each of its actors (learner workers, shards)."""

from __future__ import annotations

import json

import pytest
import ray

from edropout_ray.config import Config
from edropout_ray.distributed.cluster import connect


@pytest.mark.parametrize("score_on_learners", [False, True])
def test_a_local_ray_reserves_a_cpu_for_every_learner_worker_and_shard(score_on_learners):
    """Six learner workers and one shard on a 2-core machine: all seven actors (six, when the workers hold
    the shard) must fit, or the run would wait for a CPU that never comes."""
    config = Config(shards=1, learner_workers=6, score_on_learners=score_on_learners)
    actors = 6 if score_on_learners else 7
    ray.shutdown()  # a fresh local Ray, sized by connect
    connect(config)
    try:
        assert ray.cluster_resources()["CPU"] >= actors
    finally:
        ray.shutdown()


def test_compare_runs_one_method_a_core_and_shares_dense_phases_in_its_output(tmp_path):
    """A local Ray for `compare` has as many CPUs as the machine has cores: each run takes one, so no more run
    at once than there are cores (one more would share a core and slow every run's timing); and the runs
    of a seed share their dense phases through `shared_phases` in the output."""
    import os

    from edropout_ray.compare import PHASE_CACHE, compare

    config = Config(epochs=2, max_steps_per_epoch=2, batch_size=32, latency_batches=[], report_extra_masks=False,
                    dense_baseline=True)
    ray.shutdown()
    try:
        compare(config, tmp_path / "compare", [0], methods=["random", "l1"])
        assert ray.cluster_resources()["CPU"] == os.cpu_count()
    finally:
        ray.shutdown()
    phases = tmp_path / "compare" / PHASE_CACHE
    assert len(list(phases.glob("dense_reference-*.pt"))) == 1
    assert len(list(phases.glob("dense-*.pt"))) == 1, "random's and l1's dense half: one entry"
    reports = [json.loads((tmp_path / "compare" / m / "seed0" / "report.json").read_text()) for m in ("random", "l1")]
    assert all(r["phases_from_cache"] in (0, 1) for r in reports)
