"""What a run's work reserves on Ray, and where it ran: on a cluster the driver only coordinates.

Every process that trains a network holds the learner's resources (`learner_cpus`, `learner_gpus`):
the learner actor, the dense baseline's task, each run of `compare`, a `shards: 0` Tune trial. A
head node with no CPUs then runs the driver and nothing else.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from ..artifacts.storage import Folder, open_folder
from ..config import Config
from ..errors import DenseBaselineError, DeviceError
from ..training.dense import train_dense
from ..training.run_setup import prepare

if TYPE_CHECKING:
    import torch


def learner_bundle(config: Config) -> dict[str, float]:
    """The learner's reservation as a Ray resource bundle (zero amounts left out, as Ray wants them)."""
    bundle = {"CPU": float(config.learner_cpus), "GPU": float(config.learner_gpus)}
    return {name: amount for name, amount in bundle.items() if amount} or {"CPU": 0.01}


def learner_options(config: Config) -> dict:
    """`.options(...)` of a Ray task that trains with the learner's resources."""
    bundle = learner_bundle(config)
    return {"num_cpus": bundle.get("CPU", 0), "num_gpus": bundle.get("GPU", 0)}


def on_reserved_device(config: Config) -> Config:
    """The config a Ray task, actor or trial computes with: holding no GPU, `device: auto` means the
    CPU, so it never computes on a GPU that another task holds (Ray may leave the node's GPUs
    visible). Outside Ray's workers, the config as it is."""
    if config.device == "auto" and in_ray_worker() and not here()["resources"].get("GPU"):
        return config.replace(device="cpu")
    return config


def in_ray_worker() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE


def actor_device(device: str, who: str) -> torch.device:
    """The device an actor computes on: 'cuda' is the GPU Ray gave it (Ray sets CUDA_VISIBLE_DEVICES,
    so it is cuda:0 there; a fractional reservation shares it with other actors). A GPU reserved that
    torch cannot see is an error, never a silent fall back to the CPU."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        ray = sys.modules.get("ray")
        ids = ray.get_gpu_ids() if ray is not None and ray.is_initialized() else []
        raise DeviceError(f"{who} holds GPU {ids} (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}) "
                          f"but torch {torch.__version__} sees no CUDA device: run a CUDA build of torch on the GPU "
                          "nodes (docker/requirements-gpu.txt), or set shard_gpus and learner_gpus to 0")
    return torch.device(device)


def here() -> dict:
    """This process, its Ray node and the Ray resources it holds (none for a driver, or without Ray)."""
    where = {"pid": os.getpid(), "node_id": None, "resources": {}}
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        context = ray.get_runtime_context()
        where["node_id"] = context.get_node_id()
        if in_ray_worker():
            where["resources"] = context.get_assigned_resources()
    return where


def computing_on(device: torch.device) -> dict:
    """An actor's `where()`: the device it computes on, its Ray GPU ids and `here()`."""
    import ray

    return {"device": str(device), "gpu_ids": [str(i) for i in ray.get_gpu_ids()], **here()}


def driver_without_cpus() -> bool:
    """This process is a Ray driver on a node that declares no CPUs (a cloud cluster's head), so any
    work it did would run on cores kept for Ray's own services."""
    import ray

    if not ray.is_initialized() or in_ray_worker():
        return False
    node = ray.get_runtime_context().get_node_id()
    return not any(n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"] and n["NodeID"] == node)


def _dense_on_worker(values: dict, progress: bool, checkpoint_dir: str | None) -> dict:
    setup = prepare(on_reserved_device(Config.from_dict(values)))
    folder = None if checkpoint_dir is None else open_folder(checkpoint_dir)
    return train_dense(setup, progress, folder) | {"placement": here()}


def train_dense_on_ray(config: Config, progress: bool, checkpoint_dir: Folder | None = None) -> dict:
    """The dense baseline as a Ray task with the learner's resources; its test metrics, per-epoch rows
    and `placement` (where it ran). With `checkpoint_dir` (and `checkpoint_every`) it checkpoints
    there, so a retry of the task (Ray retries it when its worker or node is lost) continues.
    A failure is raised as one DenseBaselineError naming its cause."""
    import ray

    from .liveness import Liveness

    task = ray.remote(_dense_on_worker).options(name="dense baseline", **learner_options(config))
    liveness = Liveness(config.liveness_timeout, config.restart_timeout)
    try:
        where = None if checkpoint_dir is None else str(checkpoint_dir)
        return liveness.get(task.remote(config.to_dict(), progress, where), "the dense baseline")
    except ray.exceptions.RayTaskError as error:  # an exception in the task: its own message
        cause = error.cause if error.cause is not None else error
        raise DenseBaselineError(f"the dense baseline (a Ray task holding learner_cpus and learner_gpus) failed: "
                                 f"{type(cause).__name__}: {cause}") from None
    except ray.exceptions.RayError as error:  # its worker or node lost more often than Ray retries
        raise DenseBaselineError(f"the dense baseline (a Ray task holding learner_cpus and learner_gpus) was lost: "
                                 f"{type(error).__name__}: {error}") from None
