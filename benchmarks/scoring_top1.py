"""Top-1 of EDropout runs whose selection uses cheaper scoring, against exact scoring, on real data.

scoring_agreement.py counts the decisions a cheaper variant makes as exact scoring does; this runs
the search on each variant's own energies, end to end, and compares what it ends with: top-1 on
Fashion-MNIST's test set and the parameters kept, over several seeds, same budget for every variant
(jobs/quality_fashion.yaml, LeNet-5 at 28x28, held to half of the parameters).

    .venv/bin/python benchmarks/scoring_top1.py [--seeds 0,1,2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from edropout_ray.config import load_config
from edropout_ray.train import run

ROOT = Path(__file__).parents[1]
VARIANTS = {
    "float32, whole batch": {},
    "bfloat16": {"score_precision": "bfloat16"},
    "score_batch=32": {"score_batch": 32},
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--json", metavar="PATH")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    base = load_config(ROOT / "jobs" / "quality_fashion.yaml").replace(
        data_dir=args.data_dir, model="edropout_ray.models:lenet5", image_size=28, prune_target_params=0.5)
    results = {}
    for name, changes in VARIANTS.items():
        runs = []
        for seed in seeds:
            with tempfile.TemporaryDirectory() as folder:
                started = time.perf_counter()
                report = run(base.replace(seed=seed, **changes), folder, progress=False)
                runs.append({"seed": seed, "top1": report["top1"], "params_kept_fraction": report["params_kept_fraction"],
                             "seconds": time.perf_counter() - started})
            print(f"{name:22s} seed {seed}: top-1 {runs[-1]['top1']:.2f}%, "
                  f"{runs[-1]['params_kept_fraction']:.1%} of the parameters, {runs[-1]['seconds']:.0f} s", flush=True)
        results[name] = runs
    print(f"\n{'scoring':22s} {'top-1 mean (sd)':>16s} {'params kept':>12s} {'s/run':>7s}")
    for name, runs in results.items():
        top1 = [r["top1"] for r in runs]
        sd = statistics.stdev(top1) if len(top1) > 1 else 0.0
        print(f"{name:22s} {statistics.mean(top1):10.2f} ({sd:.2f}) "
              f"{statistics.mean(r['params_kept_fraction'] for r in runs):11.1%} "
              f"{statistics.mean(r['seconds'] for r in runs):7.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"seeds": seeds, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
