"""Joining a Ray cluster, or starting a local one sized for the run."""

from __future__ import annotations

import logging
import math
import os

from .config import Config

log = logging.getLogger(__name__)


def connect(config: Config, address: str | None = None) -> None:
    """`address` 'auto' or 'ray://...' joins a cluster; inside `ray job submit` RAY_ADDRESS does it.

    Otherwise a local Ray starts with enough logical CPUs for the learner and every shard, so a
    laptop with fewer cores than actors still runs (the actors then share the cores).
    """
    import ray

    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, log_to_driver=True)
        return
    needed = math.ceil(config.shards * config.shard_cpus + config.learner_cpus)
    ray.init(num_cpus=max(needed, os.cpu_count() or 1), include_dashboard=False, log_to_driver=True)
    log.info("started a local Ray with %s CPUs", max(needed, os.cpu_count() or 1))
