"""What `overlap: true` costs in accuracy: the demo run (digits) with shards = 2, overlap off and on.

With overlap, children are scored with weights one step old while the learner takes its step;
this runs both from the same seed and config and prints them side by side.

    .venv/bin/python benchmarks/overlap_accuracy.py [--epochs 30] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import ray

from edropout_ray.config import load_config
from edropout_ray.train import run


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="jobs/demo.yaml")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args(argv)
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    results = {}
    for overlap in (False, True):
        for seed in [int(s) for s in args.seeds.split(",")]:
            config = load_config(args.config, [f"epochs={args.epochs}", f"seed={seed}", "shards=2",
                                               f"overlap={str(overlap).lower()}", "dense_baseline=false"])
            with tempfile.TemporaryDirectory() as folder:
                report = run(config, folder, progress=False)
            results.setdefault(overlap, []).append(report)
    ray.shutdown()
    print(f"\n{'overlap':<8} {'top-1 (mean, min-max)':>24} {'params kept':>14} {'seconds':>9}")
    for overlap, reports in results.items():
        top1 = [r["top1"] for r in reports]
        kept = statistics.mean(r["params_kept_fraction"] for r in reports)
        seconds = statistics.mean(r["edropout_seconds"] for r in reports)
        print(f"{'on' if overlap else 'off':<8} {statistics.mean(top1):>9.2f}% ({min(top1):.2f}-{max(top1):.2f}) "
              f"{kept:>13.1%} {seconds:>9.1f}")


if __name__ == "__main__":
    main()
