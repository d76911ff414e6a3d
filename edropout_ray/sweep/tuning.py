"""`edropout-ray sweep`: Ray Tune over any config key, with grid, random, ASHA and PBT.

One trial is one EDropout run (`trainer.TrainLoop`), reporting validation top-1, the fraction of
parameters kept and the objective after every epoch, with a checkpoint that holds everything a
PBT exploit needs to copy the trial (weights, optimizer, population, random generators). A trial
reserves its learner and its shards together as one placement group, so a sweep never deadlocks
on half-placed trials; Tune runs as many trials at once as the cluster fits. A trial that fails (its
node lost) is restarted by Tune from its last checkpoint, up to `max_failures` times.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from ray import tune

from ..artifacts import checkpoint
from ..artifacts.plotting import png_figure
from ..artifacts.storage import Folder, open_folder
from ..config import Config
from ..distributed.placement import driver_without_cpus, learner_bundle, learner_options, on_reserved_device
from ..distributed.usage import BusyClock
from ..errors import ConfigError, EDropoutError
from .spec import SPEC_FILE, SweepSpec

log = logging.getLogger(__name__)

DOMAINS = {
    "grid": lambda v: tune.grid_search(list(v)),
    "choice": lambda v: tune.choice(list(v)),
    "uniform": lambda v: tune.uniform(*v),
    "loguniform": lambda v: tune.loguniform(*v),
    "randint": lambda v: tune.randint(*v),
}
METRIC = "objective"
TUNE_FOLDER = "tune"  # Tune's experiment, inside the sweep's output


class SweepInterrupted(KeyboardInterrupt):
    """Tune stopped early (Ctrl-C); its state is saved for --resume."""


class SweepFailed(EDropoutError):
    """Every trial of the sweep failed: there is no result to report (exit code 1, not a refused input)."""

    exit_code = 1


def domain(spec: dict):
    """A sweep file's domain (checked by spec.check_domain) as Tune's."""
    kind, values = next(iter(spec.items()))
    return DOMAINS[kind](values)


def param_space(spec: SweepSpec) -> dict:
    return {**spec.base, **{key: domain(value) for key, value in spec.search.items()}}


# ---- one trial ---------------------------------------------------------------------------------
def trial_resources(config: Config) -> tune.PlacementGroupFactory:
    """The driver of the trial (the coordinator; the learner itself when shards = 0, holding the learner's
    CPUs and GPUs), then the learner's workers and the shards."""
    if config.shards == 0:
        return tune.PlacementGroupFactory([learner_bundle(config)])
    shard = {"CPU": config.shard_cpus, "GPU": config.shard_gpus}
    if config.score_on_learners:  # the shards live in the learner's workers: their bundles serve every phase
        bundles = [{"CPU": 0.01}] + [learner_bundle(config) for _ in range(config.learner_workers)]
    elif config.learner_workers > 1 and config.share_devices_across_phases:
        # the same bundles serve the learner's workers outside the search, one worker and the shards in it
        learner = learner_bundle(config)
        device = {name: max(learner.get(name, 0.0), shard[name]) for name in ("CPU", "GPU")}
        bundles = [{"CPU": 0.01}] + [device for _ in range(max(config.learner_workers, 1 + config.shards))]
    else:
        bundles = [{"CPU": 0.01}] + [learner_bundle(config) for _ in range(config.learner_workers)]
        bundles += [shard for _ in range(config.shards)]
    return tune.PlacementGroupFactory([{k: v for k, v in b.items() if v} or {"CPU": 0.01} for b in bundles])


def train_trial(values: dict) -> None:
    """Tune's function trainable: one EDropout run, reporting and checkpointing every epoch."""
    from ..train import make_engine
    from ..training.loop import TrainLoop
    from ..training.run_setup import prepare

    values = dict(values)
    params_weight = values.pop("_params_weight", 0.0)
    config = Config.from_dict(values)
    setup = prepare(on_reserved_device(config) if config.shards == 0 else config)
    space = setup.new_space()
    total_params = sum(p.numel() for p in space.model.parameters() if p.requires_grad)

    def report(loop: TrainLoop, row: dict) -> None:
        kept = space.kept_parameters(loop.engine.best_state) / total_params
        metrics = {"val_top1": row["val_top1"], "val_loss": row["val_loss"], "units_kept_fraction": row["kept_fraction"],
                   "params_kept_fraction": kept, "objective": row["val_top1"] - params_weight * 100 * kept,
                   "frozen": row["frozen"], "epoch": row["epoch"], **usage.so_far()}
        with tempfile.TemporaryDirectory() as folder:
            # a trial checkpoints once per epoch, through Tune (the loop has no folder for `checkpoint_every`)
            loop.save_checkpoint(folder)
            (Path(folder) / "final_mask.json").write_text(json.dumps(loop.engine.best_state.int().tolist()))
            (Path(folder) / "trial.json").write_text(json.dumps({"trial_id": own_id}))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    own_id = tune.get_context().get_trial_id()
    engine = make_engine(space, setup)
    usage = TrialUsage(engine, config)
    try:
        loop = TrainLoop(engine, setup, "trial", on_epoch_end=report)
        restored, source_id = tune.get_checkpoint(), None
        if restored is not None:  # a resumed trial, or a PBT exploit of another trial's state
            with restored.as_directory() as folder:
                loop.restore(checkpoint.load_checkpoint(folder))
                marker = Path(folder) / "trial.json"
                source_id = json.loads(marker.read_text())["trial_id"] if marker.exists() else None
        if source_id not in (None, own_id) and loop.epoch >= loop.epochs:
            # a PBT exploit of another trial's final state: nothing is left to train, and without a report of
            # its own the trial would end with the other trial's last result (its id and config)
            report(loop, loop.epoch_rows[-1])
        loop.run(progress=False)
    finally:
        engine.close()


class TrialUsage:
    """A trial's device-seconds held and busy since it started (or was restored), for trials.parquet: the
    learner's and shards' own counts on Ray; with `shards: 0` the trial is the learner, busy in its steps."""

    def __init__(self, engine, config: Config):
        self.engine, self.started = engine, time.monotonic()
        self.devices = config.learner_gpus or config.learner_cpus
        self.clock = BusyClock()
        if config.shards == 0:
            step = engine.step

            def timed_step(*args, **kwargs):
                with self.clock.busy():
                    return step(*args, **kwargs)

            engine.step = timed_step

    def so_far(self) -> dict:
        summary = self.engine.usage_so_far()
        if summary is not None:
            return {"held_device_s": summary["held_device_s"], "busy_device_s": summary["busy_device_s"]}
        return {"held_device_s": self.devices * (time.monotonic() - self.started),
                "busy_device_s": self.devices * self.clock.seconds}


# ---- the sweep ---------------------------------------------------------------------------------
def _scheduler(spec: SweepSpec):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    if spec.scheduler == "asha":
        searched = next(iter(spec.search["epochs"].values())) if "epochs" in spec.search else None
        epochs = max(searched) if searched else Config.from_dict({**spec.base}).epochs
        return ASHAScheduler(time_attr="training_iteration", max_t=epochs, grace_period=spec.grace_period)
    if spec.scheduler == "pbt":
        return PopulationBasedTraining(time_attr="training_iteration", perturbation_interval=spec.perturbation_interval,
                                       hyperparam_mutations={k: domain(v) for k, v in spec.mutations.items()})
    return FIFOScheduler()


def run_sweep(spec: SweepSpec, output: str | Path | Folder, *, resume: bool = False, address: str | None = None,
              shared_mount: bool = False) -> list[dict]:
    """Run (or continue) the sweep; write trials.parquet, pareto.png, best/ and return the trial rows.

    `output` is a local folder or a pyarrow.fs URI (s3://bucket/sweep?endpoint_override=...): Tune keeps
    its experiment there through the same filesystem, so trials on any node checkpoint into it.
    """
    from ..distributed.cluster import connect, require_reachable

    output = open_folder(output)
    probe = spec.first_trial()
    if probe.prune_target_latency is not None:
        raise ConfigError("prune_target_latency is not supported in sweeps yet (every trial would time the model at "
                          "several widths on its own device): sweep with prune_target_macs, or run train/compare")
    if "onnx" in probe.export_formats:
        from ..artifacts.onnx_model import require_onnx

        require_onnx()  # the best trial's export needs it: fail before the trials run, not after
    connect(Config(), address)
    require_reachable(output, shared_mount)
    trainable = tune.with_resources(train_trial, trial_resources(probe))
    # Tune is given the filesystem itself: a URI's query options (endpoint_override, ...) reach every trial
    filesystem = None if output.is_local else output.filesystem
    if resume:
        if not output.has_folder(TUNE_FOLDER):
            raise ConfigError(f"no sweep to resume in {output}: {output.file(TUNE_FOLDER)} is missing")
        tuner = tune.Tuner.restore(output.file(TUNE_FOLDER), trainable, resume_unfinished=True, restart_errored=True,
                                   storage_filesystem=filesystem)
    else:
        if output.has_folder(TUNE_FOLDER):
            raise ConfigError(f"{output.file(TUNE_FOLDER)} exists: pass --resume to continue that sweep, or choose "
                              "a new --output")
        output.write_text(SPEC_FILE, json.dumps(spec.__dict__, indent=2, default=str))
        tuner = tune.Tuner(
            trainable,
            param_space={**param_space(spec), "_params_weight": spec.params_weight},
            tune_config=tune.TuneConfig(metric=METRIC, mode="max", scheduler=_scheduler(spec),
                                        num_samples=spec.num_samples, max_concurrent_trials=spec.max_concurrent or None),
            # PBT exploits copy another trial's checkpoint, which must still exist then: keep them all
            run_config=tune.RunConfig(name=TUNE_FOLDER, storage_path=output.path, storage_filesystem=filesystem,
                                      verbose=1, failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                                      checkpoint_config=tune.CheckpointConfig(
                                          num_to_keep=None if spec.scheduler == "pbt" else 2)),
        )
    if _fit_was_interrupted(tuner):
        raise SweepInterrupted(f"the sweep was interrupted and its state saved; continue it with: "
                               f"edropout-ray sweep --resume {output}")
    results = tuner.get_results()
    _require_a_finished_trial(results)
    rows = collect(results, list(spec.search) + list(spec.mutations))
    best = results.get_best_result(metric=METRIC, mode="max")
    with output.staged() as local:
        pq.write_table(pa.Table.from_pylist(rows), local / "trials.parquet")
        plot_pareto(rows, local / "pareto.png")
    values = {k: v for k, v in best.config.items() if k != "_params_weight"}
    if driver_without_cpus():  # a cloud cluster's head: the test-set pass and the export run on a worker
        import ray

        from ..distributed.liveness import Liveness

        config = Config.from_dict(values)
        task = ray.remote(_export_best_into).options(name="export the best trial", **learner_options(config))
        Liveness(config.liveness_timeout, config.restart_timeout).get(  # a lost cluster stops the wait
            task.remote(values, best.checkpoint, str(output)), "the best trial's export on a worker")
    else:
        _export_best_into(values, best.checkpoint, output)
    return rows


def _require_a_finished_trial(results) -> None:
    """A sweep whose trials all failed has no result: stop with the first trial's error (a warning when some
    failed), rather than a table of nothing and exit code 0."""
    failed = [result for result in results if result.error is not None]
    if not failed:
        return
    last_line = str(failed[0].error).strip().splitlines()[-1] if str(failed[0].error).strip() else ""
    where = f"each trial's error.txt is in its folder under {Path(failed[0].path).parent}"
    if len(failed) == len(results):
        raise SweepFailed(f"all {len(results)} trials of the sweep failed; the first: {last_line} ({where})")
    log.warning("%d of %d trials failed; the first: %s (%s)", len(failed), len(results), last_line, where)


def _export_best_into(values: dict, saved, output: str | Folder) -> None:
    with open_folder(output).staged() as local:
        export_best(values, saved, local / "best")


def _fit_was_interrupted(tuner) -> bool:
    """Run the sweep; True if Ctrl-C (SIGINT) stopped it.

    Tune catches the first SIGINT itself: it saves the experiment and returns normally, marking the
    unfinished trials terminated. Its handler puts back the handler that was installed before it,
    so a sentinel installed here tells whether Tune's handler ran.
    """
    def sentinel(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, sentinel)
    try:
        tuner.fit()
        return signal.getsignal(signal.SIGINT) is sentinel
    finally:
        signal.signal(signal.SIGINT, previous)


def collect(results, swept: list[str]) -> list[dict]:
    """One row per trial: its swept config values, last metrics, and whether it is on the Pareto front."""
    rows = []
    for result in results:
        if result.metrics is None or "val_top1" not in (result.metrics or {}):
            continue
        metrics = result.metrics
        row = {"trial_id": metrics.get("trial_id", ""), "epochs_done": metrics.get("epoch", -1) + 1,
               "restored": metrics.get("iterations_since_restore", 0) < metrics.get("training_iteration", 0)}
        row |= {key: _plain(result.config.get(key)) for key in dict.fromkeys(swept)}
        row |= {k: metrics[k] for k in ("val_top1", "val_loss", "params_kept_fraction", "units_kept_fraction",
                                        "objective")}
        row |= {k: metrics.get(k) for k in ("held_device_s", "busy_device_s")}  # since the trial's last start
        row["error"] = str(result.error) if result.error else None
        rows.append(row)
    front = pareto_front([(r["val_top1"], r["params_kept_fraction"]) for r in rows])
    for row, on_front in zip(rows, front):
        row["pareto"] = on_front
    return rows


def _plain(value):
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """(accuracy, parameters kept): a point is on the front if no other is at least as accurate and as
    small, and strictly better in one."""
    def dominated(a, b):
        return b[0] >= a[0] and b[1] <= a[1] and (b[0] > a[0] or b[1] < a[1])

    return [not any(dominated(p, q) for q in points) for p in points]


def plot_pareto(rows: list[dict], path: Path) -> None:
    with png_figure(path) as (_, ax):
        ax.scatter([100 * r["params_kept_fraction"] for r in rows], [r["val_top1"] for r in rows],
                   color="tab:gray", label="trial")
        front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["params_kept_fraction"])
        ax.plot([100 * r["params_kept_fraction"] for r in front], [r["val_top1"] for r in front], "o-",
                color="tab:red", label="Pareto front")
        ax.set(xlabel="trainable parameters kept (%)", ylabel="validation top-1 (%)",
               title="Sweep: accuracy vs size")
        ax.grid(alpha=0.3)
        ax.legend()


def export_best(values: dict, saved_checkpoint, folder: Path) -> dict:
    """Rebuild the best trial (its config `values`) from its last Tune checkpoint; write its report
    and exported model to `folder`."""
    import torch

    from ..artifacts.report import build_report, write_report
    from ..training.run_setup import prepare

    config = Config.from_dict(values)
    setup = prepare(on_reserved_device(config))  # a task holding no GPU evaluates on the CPU
    space = setup.new_space()
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    with saved_checkpoint.as_directory() as saved:
        payload = checkpoint.load_checkpoint(saved)
        mask = torch.tensor(json.loads((Path(saved) / "final_mask.json").read_text()), dtype=torch.bool)
    space.model.load_state_dict(payload["engine"]["learner"]["model"])
    report = build_report(space, mask, config, setup.test_loader, setup.device, folder, dense=None,
                          converged_at_step=None, edropout_seconds=math.nan)
    report["config"] = values
    write_report(report, folder)
    (folder / "config.json").write_text(json.dumps(values, indent=2))
    return report
