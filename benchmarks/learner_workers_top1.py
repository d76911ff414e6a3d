"""Whole runs with one learner worker against two at the same global batch: final top-1 over seeds, and
the runs' own time (pruning + training), side by side.

Both shapes score the population on the learner's workers (`score_on_learners`: one worker holding
one shard, or two workers holding one each), on a local Ray, one run after the other (nothing else
should run meanwhile). Prints per shape the mean and spread of top-1 and of the seconds, and their
ratio; the JSON goes to --out.

    .venv/bin/python benchmarks/learner_workers_top1.py [--config jobs/quality_fashion.yaml] [--seeds 0,1,2]
        [--set KEY=VALUE ...] [--out benchmarks/results/learner_workers_top1_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

SHAPES = {"1 learner worker": 1, "2 learner workers": 2}


def one_run(config) -> dict:
    import ray

    from edropout_ray import train

    try:
        with tempfile.TemporaryDirectory() as folder:
            report = train.run(config, Path(folder) / "run", progress=False)
    finally:
        ray.shutdown()  # each run starts from a fresh local Ray
    return {"top1": report["top1"], "seconds": report["edropout_seconds"],
            "busy_fraction": report["resources"]["busy_fraction"]}


def spread(values: list[float]) -> str:
    deviation = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):7.2f} ± {deviation:5.2f}"


def main() -> None:
    from edropout_ray.config import load_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="jobs/quality_fashion.yaml")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--set", dest="overrides", nargs="+", default=["model=edropout_ray.models:resnet20"],
                        metavar="KEY=VALUE", help="override config keys, as train's --set (default: ResNet-20)")
    parser.add_argument("--out", default="benchmarks/results/learner_workers_top1_cpu.json")
    args = parser.parse_args()
    base = load_config(args.config, args.overrides).replace(dense_baseline=False, latency_batches=[],
                                                            report_extra_masks=False, checkpoint_every=0)
    seeds = [int(seed) for seed in args.seeds.split(",")]
    runs: dict[str, list[dict]] = {shape: [] for shape in SHAPES}
    for seed in seeds:  # the shapes alternate, so a slower stretch of the machine touches both
        for shape, workers in SHAPES.items():
            config = base.replace(seed=seed, learner_workers=workers, shards=workers, score_on_learners=True)
            runs[shape].append(one_run(config) | {"seed": seed})
            print(f"{shape}, seed {seed}: {runs[shape][-1]}", flush=True)
    print(f"{'shape':20s} {'top-1 (%)':>15s} {'seconds':>15s} {'busy/held':>9s}")
    for shape, rows in runs.items():
        print(f"{shape:20s} {spread([r['top1'] for r in rows])} {spread([r['seconds'] for r in rows])} "
              f"{statistics.mean(r['busy_fraction'] for r in rows):9.2f}")
    one, two = ([r["seconds"] for r in runs[shape]] for shape in SHAPES)
    print(f"2 workers' speed over 1: {statistics.mean(one) / statistics.mean(two):.2f}x (per seed: "
          f"{', '.join(f'{a / b:.2f}' for a, b in zip(one, two))})")
    Path(args.out).write_text(json.dumps({"config": base.to_dict(), "seeds": seeds, "runs": runs}, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
