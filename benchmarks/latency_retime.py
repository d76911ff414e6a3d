"""The exported networks of latency-target runs timed again, one at a time, on a quiet machine.

`compare` runs two seeds at once on two cores, so each run's own check of its latency target
(report.json `latency_target`) is timed next to another run's training: its interval is wide. This
rebuilds each run's pruned network (its final mask on the same architecture), times it against the
dense network with the report's own code (`compare_latency`: interleaved, each model in its faster
memory layout, median of paired ratios) at the target's batch and the run's thread count, and
prints the measured fraction of the dense time beside the target and, for EDropout, the latency
model's prediction and the run's own measurement. `--methods all` also times the baselines (held to
the MACs of the same seed's EDropout run), to show what time they took at equal MACs.

    .venv/bin/python benchmarks/latency_retime.py [--runs runs/quality/latency] [--repeats 30]
        [--methods edropout|all] [--json benchmarks/results/latency_retime_cpu.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from edropout_ray.artifacts.latency import compare_latency
from edropout_ray.models import build_model
from edropout_ray.pruning.space import PruningSpace


def retime(run: Path, repeats: int) -> dict:
    report = json.loads((run / "report.json").read_text())
    edropout = run.parent.parent / "edropout" / run.name  # the same seed's EDropout run: its target and device
    key = json.loads((edropout / "latency_model.json").read_text())["key"]
    goal = json.loads((edropout / "report.json").read_text())["latency_target"]
    own = run == edropout
    torch.manual_seed(0)
    model = build_model(report["model"], 10, key["input"][0], key["input"][1])
    space = PruningSpace(model, torch.randn(2, *key["input"]))
    pruned = space.export(torch.from_numpy(np.load(run / "final_mask.npy")).bool())
    row = compare_latency(space.model, pruned, space.example_inputs, [goal["batch"]], repeats,
                          threads=key["threads"], budget_s=60.0)[f"batch_{goal['batch']}"]
    low, high = row["speedup_interval"]
    return {"run": str(run), "model": report["model"].rsplit(":", 1)[-1], "method": run.parent.name,
            "target": goal["target"], "predicted": goal["predicted_fraction"] if own else None,
            "in_run": goal["measured_fraction"] if own else None,
            "alone": 1 / row["speedup"], "alone_interval": [1 / high, 1 / low], "threads": key["threads"],
            "dense_ms": row["dense_ms"], "pruned_ms": row["pruned_ms"], "macs_kept_fraction": report["macs_kept_fraction"]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/quality/latency")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--methods", choices=("edropout", "all"), default="edropout")
    parser.add_argument("--json", default="benchmarks/results/latency_retime_cpu.json")
    args = parser.parse_args(argv)
    pattern = "*/*/edropout/seed*/report.json" if args.methods == "edropout" else "*/*/*/seed*/report.json"
    runs = sorted(p.parent for p in Path(args.runs).glob(pattern))
    if not runs:
        raise SystemExit(f"latency_retime.py: error: no EDropout run with a report under {args.runs}; run "
                         "benchmarks/quality.py --budget latency first")
    rows = []
    print(f"{'model':<10} {'method':<18} {'run':<6} {'target':>6} {'predicted':>9} {'in run':>7} {'alone':>6} "
          f"{'alone 10-90%':>13} {'dense ms':>9} {'MACs kept':>9}")
    for run in runs:
        r = retime(run, args.repeats)
        rows.append(r)
        print(f"{r['model']:<10} {r['method']:<18} {run.name:<6} {r['target']:>6.2f} {_or_dash(r['predicted']):>9} "
              f"{_or_dash(r['in_run']):>7} "
              f"{r['alone']:>6.3f} {r['alone_interval'][0]:>6.3f}-{r['alone_interval'][1]:<6.3f} {r['dense_ms']:>9.2f} "
              f"{r['macs_kept_fraction']:>9.3f}", flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"repeats": args.repeats, "runs": rows}, indent=1))


def _or_dash(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
