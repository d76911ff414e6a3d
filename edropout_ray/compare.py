"""`edropout-ray compare`: EDropout against DropNet, random and L1 pruning, same budget and seeds.

Every (method, seed) is one Ray task running the ordinary one-process `run` and holding the
learner's resources (`learner_cpus`, `learner_gpus`), so the methods train in parallel as far as
the cluster's CPUs and GPUs allow, and nothing trains in the driver. EDropout runs first for each seed; the baselines
are then pruned to the fraction of parameters that seed's EDropout kept, so points line up. The comparison's
config, seeds and methods are saved in its output (compare.json): `--resume` continues it there, reusing
every run whose report was written and running the others.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
from pathlib import Path

import pyarrow as pa
import ray

from .artifacts.storage import Folder, open_folder
from .config import Config
from .errors import ConfigError
from .artifacts.plotting import png_figure

BASELINES = {
    # ablations: what EDropout's search adds (its first state frozen at once; its layer sizes, random units)
    "edropout_no_search": {"method": "edropout", "search": False},
    "fixed_random": {"method": "fixed_random"},
    "dropnet_min": {"method": "dropnet", "dropnet_strategy": "min"},
    "dropnet_min_layer": {"method": "dropnet", "dropnet_strategy": "min_layer"},
    "random": {"method": "random"},
    "l1": {"method": "l1"},
    "tp_group_norm": {"method": "tp_group_norm"},  # Torch-Pruning's pipelines (baselines/torch_pruning.py)
    "tp_magnitude": {"method": "tp_magnitude"},
    "tp_taylor": {"method": "tp_taylor"},
}
PHASE_CACHE = "shared_phases"  # in a local output: dense phases its runs share (training/phase_cache.py)
COMPARE_FILE = "compare.json"  # the config, seeds and methods, for --resume
REPORT_FILE = "report.json"  # a run's, written when it has finished
METRICS = ("top1", "top5", "params_kept_fraction", "macs_kept_fraction", "units_kept_fraction", "method_seconds",
           "wall_seconds")
# method_seconds: the method's own pruning and training (report.json's `edropout_seconds`, taken before
# EDropout's run trains the dense reference and before any run's report, exports and timings)
REPORT_KEYS = {"method_seconds": "edropout_seconds"}  # a metric read from a report key of another name


def _one_run(config_values: dict, folder: str, phase_cache: str | None) -> dict:
    from .distributed.placement import on_reserved_device
    from .train import run
    from .training.phase_cache import PhaseCache

    # the output was checked reachable from every node before the tasks started (compare's require_reachable)
    report = run(on_reserved_device(Config.from_dict(config_values)), folder, progress=False, shared_mount=True,
                 phase_cache=None if phase_cache is None else PhaseCache(phase_cache))
    report["units_kept_fraction"] = report["units_kept"] / report["units_total"]
    return report


def compare(config: Config, output: str | Path | Folder, seeds: list[int], address: str | None = None,
            methods: list[str] | None = None, shared_mount: bool = False, resume: bool = False,
            phase_cache: str | Path | None = None) -> list[dict]:
    """Run EDropout and every other method (or those in `methods`) for every seed; write runs.parquet,
    summary.parquet, comparison.md and .png into `output` (a folder or a pyarrow.fs URI), every run in
    its own folder inside it (`<method>/seed<N>`). With `resume` a run whose report is there is not run
    again (its report is read); the tables then hold every run. `phase_cache`: a folder on the machine where
    the runs train alike dense phases once (training/phase_cache.py; default: `shared_phases` in a local
    output, none for a URI)."""
    from .distributed.cluster import connect, require_reachable
    from .distributed.placement import learner_options

    if len(seeds) < 1:
        raise ValueError("give at least one seed")
    unknown = sorted(set(methods or []) - set(BASELINES) - {"edropout"})
    if unknown:
        raise ConfigError(f"unknown method {', '.join(unknown)} in --methods; the methods are edropout, "
                          f"{', '.join(BASELINES)}")
    baselines = {name: changes for name, changes in BASELINES.items() if methods is None or name in methods}
    output = open_folder(output)
    if phase_cache is None and output.is_local:
        phase_cache = Path(output.path) / PHASE_CACHE
    # a local Ray runs one method's task a core: no more at once than the machine has cores
    connect(config.replace(shards=0), address, cpus=max(os.cpu_count() or 1, math.ceil(config.learner_cpus)))
    require_reachable(output, shared_mount)
    if not resume:
        output.write_text(COMPARE_FILE, json.dumps({"config": config.to_dict(), "seeds": seeds, "methods": methods},
                                                   indent=2))
    task = ray.remote(_one_run).options(**learner_options(config))
    base = config.replace(shards=0, checkpoint_every=0, method="edropout").to_dict()

    def launch(name: str, seed: int, changes: dict):
        folder = output.child(f"{name}/seed{seed}")
        if resume and (report := _finished_report(folder)) is not None:
            _progress(f"{name} seed {seed} finished earlier: its report in {folder} is reused")
            return ray.put(report)  # ready at once, as a task that has ended
        values = base | {"seed": seed, "dense_baseline": base["dense_baseline"] and name == "edropout"} | changes
        return task.remote(values, str(folder), None if phase_cache is None else str(phase_cache))

    # a seed's baselines start as soon as its EDropout run ends (they need its size), so no CPU waits
    # for the other seeds' EDropout runs
    running = {launch("edropout", s, {}): s for s in seeds}
    edropout, pending = {}, {}
    while running:
        [done], _ = ray.wait(list(running))
        seed = running.pop(done)
        edropout[seed] = report = ray.get(done)
        _progress(f"EDropout done for seed {seed}; running {', '.join(baselines) or 'nothing else'} for it")
        # held to the size (not only the units) that the same seed's EDropout kept: its MACs when the
        # comparison is held to a MACs target, else its parameters
        # (a latency target: the MACs EDropout ended with once its frozen mask was timed and resized)
        by_macs = base.get("prune_target_macs") is not None or base.get("prune_target_latency") is not None
        kept = {"prune_target_macs": report["macs_kept_fraction"], "prune_target_params": None,
                "prune_target_latency": None} if by_macs else {"prune_target_params": report["params_kept_fraction"]}
        size = {"prune_target": report["units_kept_fraction"], "kept_per_group": report["kept_per_group"]} | kept
        pending |= {(name, seed): launch(name, seed, changes | size) for name, changes in baselines.items()}
    reports = {("edropout", s): edropout[s] for s in seeds}
    reports |= dict(zip(pending, ray.get(list(pending.values()))))
    rows = [{"method": name, "seed": seed, **{m: float(r[REPORT_KEYS.get(m, m)]) for m in METRICS}}
            for (name, seed), r in reports.items()]
    dense = [{"method": "dense", "seed": s, "top1": r["dense_top1"], "top5": r["dense_top5"], "params_kept_fraction": 1.0,
              "macs_kept_fraction": 1.0, "units_kept_fraction": 1.0, "method_seconds": float("nan"),
              "wall_seconds": float("nan")} for s, r in edropout.items() if "dense_top1" in r]
    rows += dense
    summary = summarize(rows)
    output.write_table("runs.parquet", pa.Table.from_pylist(rows))
    output.write_table("summary.parquet", pa.Table.from_pylist(summary))
    output.write_text("comparison.md", markdown_table(summary, config, seeds))
    with output.staged() as local:
        plot(rows, local / "comparison.png")
    return summary


def _finished_report(folder: Folder) -> dict | None:
    """The report of a run that ended (its dense baseline too), as `_one_run` returns it; None if it did not."""
    if not folder.exists(REPORT_FILE):
        return None
    report = json.loads(folder.read_text(REPORT_FILE))
    if "dense_error" in report:  # the run raised after writing it: run it again
        return None
    return report | {"units_kept_fraction": report["units_kept"] / report["units_total"]}


def load_saved_comparison(output: str | Path | Folder) -> tuple[Config, list[int], list[str] | None]:
    """The config, seeds and methods a comparison saved in its output (for --resume)."""
    output = open_folder(output)
    if not output.exists(COMPARE_FILE):
        raise ConfigError(f"no comparison to resume in {output}: {output.file(COMPARE_FILE)} is missing: --resume "
                          "continues the output of an earlier `edropout-ray compare`")
    saved = json.loads(output.read_text(COMPARE_FILE))
    return Config.from_dict(saved["config"]), saved["seeds"], saved["methods"]


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and spread (sample standard deviation; 0 for one seed) of every metric per method."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    summary = []
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        entry = {"method": method, "seeds": len(mine)}
        for metric in METRICS:
            values = [r[metric] for r in mine if not math.isnan(r[metric])]  # dense: no wall time of its own
            entry[f"{metric}_mean"] = statistics.fmean(values) if values else math.nan
            entry[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        summary.append(entry)
    return summary


def markdown_table(summary: list[dict], config: Config, seeds: list[int]) -> str:
    lines = [f"Model `{config.model}` on `{config.dataset}`, {config.epochs} epochs each, seeds {seeds} "
             "(mean ± standard deviation); pruning + training: the method's own seconds, without EDropout's dense "
             "reference and the report's exports and timings, which the wall time includes.", "",
             "| method | top-1 (%) | top-5 (%) | params kept | MACs kept | units kept | pruning + training (s) "
             "| wall time (s) |", "|---|---|---|---|---|---|---|---|"]
    for e in summary:
        cells = [f"{e['top1_mean']:.2f} ± {e['top1_std']:.2f}", f"{e['top5_mean']:.2f} ± {e['top5_std']:.2f}"]
        cells += [f"{100 * e[f'{m}_mean']:.1f}% ± {100 * e[f'{m}_std']:.1f}"
                  for m in ("params_kept_fraction", "macs_kept_fraction", "units_kept_fraction")]
        cells += ["-"] * 2 if e["method"] == "dense" else [f"{e[f'{m}_mean']:.1f}" for m in ("method_seconds",
                                                                                              "wall_seconds")]
        lines.append(f"| {e['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """Accuracy against parameters kept, every run a point, one colour per method."""
    with png_figure(path) as (_, ax):
        for method in dict.fromkeys(r["method"] for r in rows):
            mine = [r for r in rows if r["method"] == method]
            ax.scatter([100 * r["params_kept_fraction"] for r in mine], [r["top1"] for r in mine], label=method,
                       marker="*" if method == "edropout" else "o", s=90 if method == "edropout" else 40)
        ax.set(xlabel="trainable parameters kept (%)", ylabel="test top-1 (%)",
               title="Pruning methods, every seed")
        ax.grid(alpha=0.3)
        ax.legend()


def _progress(message: str) -> None:
    print(f"[compare] {message}", file=sys.stderr, flush=True)
