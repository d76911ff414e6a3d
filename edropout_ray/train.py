"""A whole run: data, model, training (EDropout in one process or on Ray, or a baseline), checkpoints, report.

`run(config, output_dir)` is the plain function a Tune trainable or a Ray job wraps.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path

import numpy as np

from .artifacts import checkpoint, history
from .baselines.registry import run_baseline
from .config import Config
from .training.step import EDropoutEngine
from .evolution.population import kept_per_group
from .distributed.placement import here, on_reserved_device
from .errors import CheckpointError, ConfigError, DenseBaselineError, RunLostError
from .training.dense import FOLDER as DENSE_FOLDER, train_dense
from .training.loop import TrainLoop
from .training.phase_cache import PhaseCache
from .artifacts.onnx_model import require_onnx
from .artifacts.latency_fit import describe_fit, fit_to_latency
from .artifacts.latency_model import LatencyGoal, latency_model_for, macs_target_for_latency
from .artifacts.report import build_report, write_report
from .training.run_setup import PrunedRun, RunSetup, prepare, steps_per_epoch
from .pruning.space import PruningSpace
from .artifacts.storage import Folder, open_folder

log = logging.getLogger(__name__)


def make_engine(space: PruningSpace, setup: RunSetup, address: str | None = None) -> EDropoutEngine:
    """One process for `shards: 0`; shard actors and a learner actor on Ray otherwise."""
    config = setup.config
    total_steps = config.epochs * steps_per_epoch(setup)
    if config.shards == 0:
        return EDropoutEngine(space, config, total_steps=total_steps)
    from .distributed.cluster import connect
    from .distributed.coordinator import start_distributed_engine

    connect(config, address)
    return start_distributed_engine(space, config, setup.recipe, total_steps)


def resume_config(output: Folder, given: Config | None) -> Config:
    """The config saved with the run; a config given with --resume must agree with it."""
    saved = checkpoint.load_saved_config(output)
    if given is not None:
        differing = [k for k, v in given.to_dict().items() if saved.to_dict()[k] != v]
        if differing:
            raise CheckpointError(f"--resume continues the run in {output} with its saved config; these keys differ "
                                  f"from it: {', '.join(differing)}. Drop --config/--set, or start a new run")
    return saved


def run(config: Config | None, output_dir: str | Path | Folder, progress: bool = True, *, resume: bool = False,
        address: str | None = None, shared_mount: bool = False, phase_cache: PhaseCache | None = None) -> dict:
    """Prune with the configured method, export the pruned model, write every artifact, return the report.

    `output_dir` is a local folder or a pyarrow.fs URI (s3://...): config and checkpoints are written
    there as the run goes; with a URI the other artifacts are made in a local folder, then uploaded.
    On a cluster a local folder must be on a mount every node sees (`shared_mount`), or the run is
    refused before any work. `phase_cache`: dense phases that other runs trained alike are read from it
    (a baseline's dense pre-training, the dense reference; the result is the same bit for bit).
    """
    storage = open_folder(output_dir)
    if resume:
        config = resume_config(storage, config)
    elif config is None:
        raise ValueError("a config is needed unless resuming")
    if _uses_ray(config, address):
        from .distributed.cluster import connect, require_reachable
        from .distributed.placement import driver_without_cpus

        connect(config, address)
        require_reachable(storage, shared_mount)
        if driver_without_cpus():  # a cloud cluster's head: the whole run goes to a worker
            return _run_as_task(config, output_dir, progress, resume)
    # read before anything is written: a bad checkpoint is left alone
    payload = checkpoint.load_checkpoint(storage) if resume else None
    new_folder = storage.is_local and not Path(storage.path).exists()
    try:
        with storage.staged() as output:
            report = _run(config, storage, output, payload, progress, address, phase_cache)
    except BaseException:
        if new_folder:
            _remove_if_empty(Path(storage.path))
        raise
    if "dense_error" in report:
        raise DenseBaselineError(f"{report['dense_error']}. The pruned run finished and its artifacts are in "
                                 f"{output_dir}; set dense_baseline: false to run without the dense baseline")
    return report


def _remove_if_empty(folder: Path) -> None:
    """A run refused while it was set up (a model that cannot be built, no data) leaves no empty --output behind."""
    try:
        folder.rmdir()  # only an empty folder: anything the run wrote is kept
    except OSError:
        pass


def _on_worker(config_values: dict | None, output_dir: str, progress: bool, resume: bool) -> dict:
    # the output was checked reachable from every node before the task started
    config = None if config_values is None else Config.from_dict(config_values)
    return run(config, output_dir, progress, resume=resume, shared_mount=True)


def _run_as_task(config: Config, output_dir: str | Path | Folder, progress: bool, resume: bool) -> dict:
    """The run as one Ray task on a worker: with the learner's CPUs and GPUs when it trains there
    (`shards: 0`, a baseline method), with the learner's CPUs only when it coordinates actors that
    hold the GPUs (the loop, validation and the report run there)."""
    import ray

    from .distributed.liveness import Liveness
    from .distributed.placement import learner_options

    trains_itself = config.shards == 0 or config.method != "edropout"
    options = learner_options(config) if trains_itself else {"num_cpus": config.learner_cpus, "num_gpus": 0}
    task = ray.remote(_on_worker).options(name="edropout-ray train", max_retries=0, **options)
    log.info("this node has no CPUs for work: the run goes to a worker as a Ray task (%s)", options)
    values = None if resume else config.to_dict()  # a resumed run reads its saved config there
    liveness = Liveness(config.liveness_timeout, config.restart_timeout)  # a lost cluster stops the wait
    try:
        return liveness.get(task.remote(values, str(output_dir), progress, resume), "the run's task on a worker")
    except ray.exceptions.RayTaskError as error:  # the run's own error (a bad config, no data...): as it was raised
        cause = error.cause
        if isinstance(cause, Exception):
            raise cause from None
        raise
    except ray.exceptions.RayError as error:  # its worker or node lost: Ray does not retry a run
        raise RunLostError(f"the run's Ray task was lost ({type(error).__name__}); "
                           f"{checkpoint.resume_hint(output_dir)}") from None
    except RunLostError as error:  # the cluster stopped answering while the driver waited
        raise type(error)(f"{error}; {checkpoint.resume_hint(output_dir)}") from None


def _uses_ray(config: Config, address: str | None) -> bool:
    """Shards and streamed data run on Ray; so does any run given a cluster (or inside a Ray job or task)."""
    ray = sys.modules.get("ray")  # not imported: not initialized either (and a one-process run skips the import)
    return bool(config.shards or config.dataset == "parquet" or address or os.environ.get("RAY_ADDRESS")
                or (ray is not None and ray.is_initialized()))


def _run(config: Config, storage: Folder, output: Path, payload: dict | None, progress: bool,
         address: str | None, phase_cache: PhaseCache | None) -> dict:
    started = time.perf_counter()
    hits_before = phase_cache.hits if phase_cache is not None else 0  # a cache may serve several runs
    if "onnx" in config.export_formats:
        require_onnx()  # the config loads without onnx; the run stops before any work when it is missing
    setup = replace(prepare(on_reserved_device(config)), phase_cache=phase_cache)  # a Ray task with no GPU: CPU
    space = setup.new_space()
    log.info("pruning space: %s", space.describe())
    checkpoint.save_config(storage, config)  # as given: a resume resolves a latency target again (from the cache)
    latency_goal = None
    if config.prune_target_latency is not None:
        config, latency_goal = resolve_latency_target(config, space, storage)
        setup = replace(setup, config=config)
    if config.method == "edropout":
        pruned = _train_edropout(space, setup, storage, payload, progress, address, latency_goal)
    else:
        if payload is not None or config.shards:
            raise ConfigError(f"method {config.method!r} runs in one process without checkpoints: drop --resume "
                              "and shards")
        pruned = run_baseline(space, config, setup)
    final_mask, step_rows, epoch_rows, freeze_reason = pruned.state, pruned.step_rows, pruned.epoch_rows, \
        pruned.freeze_reason
    edropout_seconds = time.perf_counter() - started

    dense, dense_error = None, None
    if config.dense_baseline:
        try:
            dense = _dense_baseline(setup, progress, storage.child(DENSE_FOLDER))
        except DenseBaselineError as error:  # the pruned run's artifacts are still written; run() raises it then
            dense_error = str(error)

    np.save(output / "final_mask.npy", final_mask.cpu().numpy())
    if step_rows:
        history.write_rows(step_rows, output / history.HISTORY_FILE)
    history.write_rows(epoch_rows, output / history.EPOCHS_FILE)
    history.plot_history([asdict(r) for r in step_rows], epoch_rows, output / history.PLOT_FILE,
                         dense["epochs"] if dense else None)
    report = build_report(space, final_mask, config, setup.test_loader, setup.device, output, dense=dense,
                          converged_at_step=_converged_at(step_rows), edropout_seconds=edropout_seconds,
                          latency_goal=latency_goal)
    report["wall_seconds"] = time.perf_counter() - started
    report["shards"] = config.shards
    report["freeze_reason"] = freeze_reason
    report["kept_per_group"] = kept_per_group(final_mask.cpu(), space.group_sizes).tolist()
    report["placement"] = here()
    if pruned.resources is not None:
        report["resources"] = pruned.resources
    if dense is not None:
        report["dense_placement"] = dense["placement"]
    if dense_error is not None:
        report["dense_error"] = dense_error
    if phase_cache is not None:  # phases read back took no time here: say so beside the run's seconds
        report["phases_from_cache"] = phase_cache.hits - hits_before
    write_report(report, output)
    return report


def resolve_latency_target(config: Config, space: PruningSpace, folder: Folder) -> tuple[Config, LatencyGoal]:
    """A latency target as the MACs target that the latency model measured on this device predicts for it
    (measured once, cached in `folder`): the config every state and baseline is held with, and the goal
    the report checks the exported model against."""
    target = config.prune_target_latency
    model = latency_model_for(space, config.model, config.latency_target_batch, space.example_inputs.device,
                              config.channel_multiple, config.latency_repeats, folder)
    macs = macs_target_for_latency(model, target)
    log.warning("prune_target_latency %.2f at batch %d on %s: the latency model gives %.3f of the MACs", target,
                config.latency_target_batch, model.key["device"], macs)
    return config.replace(prune_target_latency=None, prune_target_macs=macs), LatencyGoal(target, model)


def _train_edropout(space: PruningSpace, setup: RunSetup, output: Folder, payload: dict | None, progress: bool,
                    address: str | None, latency_goal: LatencyGoal | None = None) -> PrunedRun:
    """The EDropout loop on the configured runtime; with a latency target the mask is timed when it
    freezes and resized until its time meets the target (artifacts/latency_fit.py)."""
    engine = make_engine(space, setup, address)
    if latency_goal is not None:
        engine.on_freeze = partial(_fit_frozen_mask, space, latency_goal, setup.config.latency_repeats)
    try:
        loop = TrainLoop(engine, setup, "edropout", checkpoint_dir=output)
        if payload is not None:
            loop.restore(payload)
        loop.run(progress)
        engine.finish()  # again: a resumed run that had already finished runs no epoch
        resources = engine.resources()
    except RunLostError as error:
        raise type(error)(f"{error}; {checkpoint.resume_hint(output)}") from None
    finally:
        engine.close()
    return PrunedRun(engine.best_state.clone(), loop.epoch_rows, loop.step_rows, engine.freeze_reason, resources)


def _fit_frozen_mask(space: PruningSpace, goal: LatencyGoal, repeats: int, mask, resize) -> tuple:
    fitted, rounds = fit_to_latency(space, mask, goal, resize, repeats)
    words = describe_fit(rounds, goal.target)
    log.warning("the frozen mask %s", words)
    return fitted, words


def _dense_baseline(setup: RunSetup, progress: bool, checkpoints: Folder) -> dict:
    """Where the learner trains: in this process for `shards: 0` (a one-process run, a `compare` task,
    a trial), else a Ray task with the learner's resources, so a run's driver only coordinates.
    With `checkpoint_every` it checkpoints into `checkpoints` and continues from there."""
    if setup.config.shards == 0:
        if setup.phase_cache is None:
            return train_dense(setup, progress, checkpoints) | {"placement": here()}
        # the same for every size, budget and method of a model and seed
        dense = setup.phase_cache.phase("dense_reference", setup.config, setup.config.epochs,
                                        lambda: train_dense(setup, progress, checkpoints),
                                        loader=setup.train_loader, seeds_itself=True)
        return dense | {"placement": here()}
    from .distributed.placement import train_dense_on_ray

    return train_dense_on_ray(setup.config, progress, checkpoints)


def _converged_at(step_rows) -> int | None:
    for row in step_rows:
        if row.frozen:
            return row.step
    return None
