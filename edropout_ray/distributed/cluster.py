"""Joining a Ray cluster, or starting a local one sized for the run; outputs every node can reach."""

from __future__ import annotations

import logging
import math
import os

from ..artifacts.storage import Folder
from ..config import Config
from ..errors import ConfigError

log = logging.getLogger(__name__)


def connect(config: Config, address: str | None = None, cpus: int | None = None) -> None:
    """`address` 'auto' or 'ray://...' joins a cluster; inside `ray job submit` RAY_ADDRESS does it.

    Otherwise a local Ray starts with enough logical CPUs for the learner's workers, every shard and the
    machine's own cores, so a laptop with fewer cores than actors still runs (they share the cores);
    `cpus` sets the number instead (compare: one run a core, as many at once as there are cores).
    """
    import ray

    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, log_to_driver=True)
        return
    # the actors' reservations plus the machine's cores for everything else (Ray Data's decode tasks,
    # Tune's trials): with only the actors' share, streamed data would wait for a free CPU forever
    shard_cpus = 0 if config.score_on_learners else config.shards * config.shard_cpus  # in the workers: none apart
    if cpus is None:
        cpus = math.ceil(config.learner_workers * config.learner_cpus + shard_cpus) + (os.cpu_count() or 1)
    try:
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=True)
    except ValueError as error:  # Ray found a cluster started on this machine with `ray start`
        if "existing cluster" not in str(error):
            raise
        log.warning("joining the Ray cluster already running on this machine")
        ray.init(log_to_driver=True)


SHARED_MOUNT_FLAG = "--shared-mount"


def require_reachable(storage: Folder, shared_mount: bool = False) -> None:
    """Refuse, before any work, a local output on a cluster whose work runs on other nodes.

    A folder on the driver's disk cannot be read or written by trials, tasks and actors elsewhere, and is
    lost with the head: on a cluster of more than one node (or a head without CPUs, where everything runs
    on workers the autoscaler has yet to start) the output is a URI, or a mount that the user declares
    shared on every node (`--shared-mount`). Ray cannot tell a mount from a disk, so it is declared.
    """
    import ray

    if shared_mount or not storage.is_local or not ray.is_initialized():
        return
    nodes = [node for node in ray.nodes() if node["Alive"]]
    here = ray.get_runtime_context().get_node_id()
    cpus_here = sum(node["Resources"].get("CPU", 0) for node in nodes if node["NodeID"] == here)
    if len(nodes) > 1 or cpus_here == 0:
        where = f"a cluster of {len(nodes)} nodes" if len(nodes) > 1 else "a cluster whose head has no CPUs"
        raise ConfigError(f"{storage} is a folder on this node's disk, which the other nodes of {where} cannot "
                          f"reach: give a bucket URI (s3://bucket/path, gs://bucket/path) or a folder on a mount "
                          f"every node sees, declared with {SHARED_MOUNT_FLAG}")
