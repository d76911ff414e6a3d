"""Pruning quality at equal size: EDropout against DropNet, L1, random and dense, from one run.

Runs `edropout-ray compare` with a committed config (default: jobs/compare_fashion.yaml, the
paper's Fashion-MNIST read from Debian's dataset-fashion-mnist), then prints per method: top-1
(mean and std over seeds), the drop against the dense network trained for the same steps, the
parameters kept, and EDropout's children accepted per epoch (what shows that selection keeps
evolving until the mask freezes).

    .venv/bin/python benchmarks/quality.py [--config jobs/compare_fashion.yaml] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from edropout_ray.compare import compare
from edropout_ray.config import load_config
from edropout_ray.artifacts.history import EPOCHS_FILE, HISTORY_FILE, read_rows


def accepted_per_epoch(folder: Path) -> list[int]:
    """Children accepted in each epoch of one EDropout run (0 once the mask is frozen)."""
    steps = read_rows(folder / HISTORY_FILE)
    epochs = len(read_rows(folder / EPOCHS_FILE))
    return [sum(r["accepted"] for r in steps if r["epoch"] == e) for e in range(epochs)]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="jobs/compare_fashion.yaml")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--output", default="runs/quality")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    config = load_config(args.config, args.overrides)
    started = time.perf_counter()
    summary = {row["method"]: row for row in compare(config, args.output, seeds)}
    minutes = (time.perf_counter() - started) / 60

    dense = summary["dense"]["top1_mean"] if "dense" in summary else float("nan")
    print(f"\n{config.model} on {config.dataset}, seeds {seeds}, {minutes:.1f} min in all\n")
    print(f"{'method':20} {'top-1 (%)':>15} {'drop vs dense':>14} {'params kept':>12}")
    for method, row in summary.items():
        top1 = f"{row['top1_mean']:.2f} ± {row['top1_std']:.2f}"
        drop = "" if method == "dense" else f"{dense - row['top1_mean']:+.2f}"
        print(f"{method:20} {top1:>15} {drop:>14} {100 * row['params_kept_fraction_mean']:>11.1f}%")

    print("\nEDropout: children accepted per epoch (0 once the mask is frozen), and the freeze")
    for seed in seeds:
        folder = Path(args.output) / "edropout" / f"seed{seed}"
        report = json.loads((folder / "report.json").read_text())
        print(f"  seed {seed}: {accepted_per_epoch(folder)}; frozen at step {report['converged_at_step']}: "
              f"{report['freeze_reason']}")


if __name__ == "__main__":
    main()
