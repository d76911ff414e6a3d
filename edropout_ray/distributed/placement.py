"""What a run's work reserves on Ray, and where it ran: on a cluster the driver only coordinates.

Every process that trains a network holds the learner's resources (`learner_cpus`, `learner_gpus`):
the learner actor, the dense baseline's task, each run of `compare`, a `shards: 0` Tune trial. A
head node with no CPUs then runs the driver and nothing else.
"""

from __future__ import annotations

import os
import sys

from ..config import Config
from ..errors import DenseBaselineError
from ..training.dense import train_dense
from ..training.run_setup import prepare


def learner_bundle(config: Config) -> dict[str, float]:
    """The learner's reservation as a Ray resource bundle (zero amounts left out, as Ray wants them)."""
    bundle = {"CPU": float(config.learner_cpus), "GPU": float(config.learner_gpus)}
    return {name: amount for name, amount in bundle.items() if amount} or {"CPU": 0.01}


def learner_options(config: Config) -> dict:
    """`.options(...)` of a Ray task that trains with the learner's resources."""
    bundle = learner_bundle(config)
    return {"num_cpus": bundle.get("CPU", 0), "num_gpus": bundle.get("GPU", 0)}


def on_reserved_device(config: Config) -> Config:
    """The config a task holding the learner's resources runs: without a GPU reserved, `device: auto`
    means the CPU, so a task never computes on a GPU that another task holds."""
    if config.learner_gpus == 0 and config.device == "auto":
        return config.replace(device="cpu")
    return config


def here() -> dict:
    """This process, its Ray node and the Ray resources it holds (none for a driver, or without Ray)."""
    where = {"pid": os.getpid(), "node_id": None, "resources": {}}
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        context = ray.get_runtime_context()
        where["node_id"] = context.get_node_id()
        if context.worker.mode == ray.WORKER_MODE:
            where["resources"] = context.get_assigned_resources()
    return where


def _dense_on_worker(values: dict, progress: bool) -> dict:
    setup = prepare(on_reserved_device(Config.from_dict(values)))
    return train_dense(setup, progress) | {"placement": here()}


def train_dense_on_ray(config: Config, progress: bool) -> dict:
    """The dense baseline as a Ray task with the learner's resources; its test metrics, per-epoch rows
    and `placement` (where it ran). A failure is raised as one DenseBaselineError naming its cause."""
    import ray

    from .liveness import Liveness

    task = ray.remote(_dense_on_worker).options(name="dense baseline", **learner_options(config))
    liveness = Liveness(config.liveness_timeout, config.restart_timeout)
    try:
        return liveness.get(task.remote(config.to_dict(), progress), "the dense baseline")
    except ray.exceptions.RayTaskError as error:  # an exception in the task: its own message
        cause = error.cause if error.cause is not None else error
        raise DenseBaselineError(f"the dense baseline (a Ray task holding learner_cpus and learner_gpus) failed: "
                                 f"{type(cause).__name__}: {cause}") from None
    except ray.exceptions.RayError as error:  # its worker or node lost more often than Ray retries
        raise DenseBaselineError(f"the dense baseline (a Ray task holding learner_cpus and learner_gpus) was lost: "
                                 f"{type(error).__name__}: {error}") from None
