"""The local Ray a run starts for itself has a CPU for each of its actors (learner workers, shards)."""

from __future__ import annotations

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
