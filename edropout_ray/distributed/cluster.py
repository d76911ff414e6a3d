"""Joining a Ray cluster, or starting a local one sized for the run."""

from __future__ import annotations

import logging
import math
import os

from ..config import Config

log = logging.getLogger(__name__)


def connect(config: Config, address: str | None = None) -> None:
    """`address` 'auto' or 'ray://...' joins a cluster; inside `ray job submit` RAY_ADDRESS does it.

    Otherwise a local Ray starts with enough logical CPUs for the learner, every shard and the
    machine's own cores, so a laptop with fewer cores than actors still runs (they share the cores).
    """
    import ray

    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, log_to_driver=True)
        return
    # the actors' reservations plus the machine's cores for everything else (Ray Data's decode tasks,
    # Tune's trials): with only the actors' share, streamed data would wait for a free CPU forever
    cpus = math.ceil(config.shards * config.shard_cpus + config.learner_cpus) + (os.cpu_count() or 1)
    try:
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=True)
    except ValueError as error:  # Ray found a cluster started on this machine with `ray start`
        if "existing cluster" not in str(error):
            raise
        log.warning("joining the Ray cluster already running on this machine")
        ray.init(log_to_driver=True)
