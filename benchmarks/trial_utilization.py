"""Devices held and used by a run on Ray: shards for the whole run (the old shape) against shards only
while the population searches (the default), a two-worker learner that gives one worker's device
to a shard while searching, and two learner workers that score the population themselves
(`score_on_learners`), side by side, from each run's report.json `resources`.

All are the same default-schedule EDropout run (dense warm-up, search, frozen mask trained alone) on a
local Ray, one after the other in this process: the first two with `shards` shard actors and one
learner, the third with `learner_workers: 2` and `shards - 1` shards on the same number of devices, the
fourth with `learner_workers: shards`, each worker holding one shard.
For each shape it prints, per role, the device-seconds held, the device-seconds busy and their ratio,
and the run's wall time and top-1; the JSON goes to --out.

    .venv/bin/python benchmarks/trial_utilization.py [--config jobs/demo.yaml] [--epochs 20] [--shards 2]
                                                      [--set KEY=VALUE ...] [--shapes NAME,NAME]
                                                      [--out benchmarks/results/trial_utilization_cpu.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from pathlib import Path

# shape -> (shards follow the phases, learner workers (None: one per shard), shards taken from the learner's
# devices, the learner's workers score)
SHAPES = {"shards for the whole run": (False, 1, 0, False), "shards while searching": (True, 1, 0, False),
          "learner resized for a shard": (True, 2, 1, False), "learner workers score": (True, None, 0, True)}


def run_shape(config, follow_phases: bool) -> dict:
    """One run with the shards living for the whole run (False) or only while searching (True)."""
    import ray

    from edropout_ray import train
    from edropout_ray.distributed import coordinator

    original = coordinator.start_distributed_engine
    coordinator.start_distributed_engine = functools.partial(original, shards_follow_phases=follow_phases)
    try:
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            report = train.run(config, Path(folder) / "run", progress=False)
            wall = time.perf_counter() - started
    finally:
        coordinator.start_distributed_engine = original
        ray.shutdown()  # each shape starts from a fresh local Ray
    return {"wall_s": wall, "top1": report["top1"], "resources": report["resources"]}


def table(results: dict) -> str:
    lines = [f"{'shape':28s} {'role':8s} {'procs':>5s} {'held dev-s':>11s} {'busy dev-s':>11s} {'busy/held':>9s}"]
    for shape, result in results.items():
        resources = result["resources"]
        for role, row in sorted(resources["roles"].items()):
            lines.append(f"{shape:28s} {role:8s} {row['processes']:5d} {row['held_device_s']:11.1f} "
                         f"{row['busy_device_s']:11.1f} {row['busy_fraction']:9.2f}")
        lines.append(f"{shape:28s} {'all':8s} {'':5s} {resources['held_device_s']:11.1f} "
                     f"{resources['busy_device_s']:11.1f} {resources['busy_fraction']:9.2f}   "
                     f"wall {result['wall_s']:.0f} s, top-1 {result['top1']:.2f}%")
    return "\n".join(lines)


def main() -> None:
    from edropout_ray.config import load_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="jobs/demo.yaml")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config keys, as train's --set")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated, of: " + ", ".join(SHAPES))
    parser.add_argument("--out", default="benchmarks/results/trial_utilization_cpu.json")
    args = parser.parse_args()
    config = load_config(args.config, args.overrides).replace(
        epochs=args.epochs, shards=args.shards, dense_baseline=False, latency_batches=[],
        report_extra_masks=False, checkpoint_every=0)
    shapes = args.shapes.split(",")
    unknown = [shape for shape in shapes if shape not in SHAPES]
    if unknown:
        parser.error(f"unknown shape(s) {unknown}: choose from {', '.join(SHAPES)}")
    results = {}
    for shape in shapes:
        follow, workers, fewer, score = SHAPES[shape]
        results[shape] = run_shape(config.replace(learner_workers=workers or args.shards, shards=args.shards - fewer,
                                                  score_on_learners=score), follow)
    print(table(results))
    Path(args.out).write_text(json.dumps({"config": config.to_dict(), "results": results}, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
