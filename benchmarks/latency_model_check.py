"""How well the latency model predicts the time of states a search makes, against a richer model.

The run's latency model (artifacts/latency_model.py) times the network at uniform widths and
predicts a state's time from its MACs alone. A search makes states of equal MACs with very
different widths per layer. This benchmark, per model of the quality matrix at its image size:

1. measures the latency model as a run does (uniform widths, rounded to `channel_multiple`);
2. makes K states of random per-layer widths, each brought to `--macs` of the dense MACs as the
   search brings its states to a MACs target (`fit_states_to_size`), and times each exported
   network against the dense one (interleaved, median of paired ratios);
3. says how far their measured times spread (what a per-layer model could exploit at equal MACs),
   how far the MACs curve's prediction is off, and how far a two-feature model would be off:
   time = c + a * MACs + b * activations (the output elements of the pruned layers, a memory
   traffic term), fitted by least squares on the uniform widths and the other random states
   (leave one out).

    .venv/bin/python benchmarks/latency_model_check.py [--models small_cnn,lenet5,resnet20] [--states 8]
        [--macs 0.5] [--batch 128] [--repeats 15] [--threads 1] [--json benchmarks/results/latency_model_check_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import MODELS  # noqa: E402  (the matrix's models and image sizes)

from edropout_ray.artifacts.latency import time_interleaved  # noqa: E402
from edropout_ray.artifacts.latency_model import WIDTHS, measure  # noqa: E402
from edropout_ray.models import build_model  # noqa: E402
from edropout_ray.pruning.macs import positions_per_weight  # noqa: E402
from edropout_ray.pruning.sizing import counts_for_size, fit_states_to_size, size_fraction, state_with_counts  # noqa: E402
from edropout_ray.pruning.space import PruningSpace  # noqa: E402


def activation_weights(space: PruningSpace) -> torch.Tensor:
    """Per unit (and a last entry for what no unit controls): the output elements per sample of the
    counted layers' output channels it controls."""
    positions = positions_per_weight(space.model, space.example_inputs)
    producers, parameters = space.producer_indices(), dict(space.model.named_parameters())
    weights = torch.zeros(space.num_units + 1, dtype=torch.float64)
    for name, count in positions.items():
        if name in producers:
            units = producers[name]
            weights.index_add_(0, units, torch.full((len(units),), count, dtype=torch.float64))
        else:  # a layer no group cuts: every output channel always kept
            weights[-1] += count * parameters[name].shape[0]
    return weights


def activations_fraction(weights: torch.Tensor, state: torch.Tensor) -> float:
    kept = torch.cat([state.double(), torch.ones(1, dtype=torch.float64)])
    return float(kept @ weights / weights.sum())


def timed_ratio(space: PruningSpace, state: torch.Tensor, x: torch.Tensor, repeats: int) -> float:
    pruned = space.export(state).eval()
    timed = time_interleaved({"dense": lambda: space.model(x), "pruned": lambda: pruned(x)}, repeats=repeats)
    samples = timed["samples_ms"]
    return statistics.median(p / d for p, d in zip(samples["pruned"], samples["dense"]))


def least_squares(rows: list[tuple[float, float, float]]) -> torch.Tensor:
    """[c, a, b] of time = c + a * macs + b * activations over (macs, activations, time) rows."""
    data = torch.tensor(rows, dtype=torch.float64)
    design = torch.stack([torch.ones(len(data), dtype=torch.float64), data[:, 0], data[:, 1]], dim=1)
    return torch.linalg.lstsq(design, data[:, 2:]).solution.squeeze(1)


def check(name: str, args) -> dict:
    settings = MODELS[name]
    torch.manual_seed(0)
    size, channels = settings["image_size"], 1  # Fashion-MNIST
    model = build_model(settings["model"], 10, channels, size).eval()
    space = PruningSpace(model, torch.randn(2, channels, size, size))
    x = torch.randn(args.batch, channels, size, size)
    key = {"model": name, "input": [channels, size, size], "batch": args.batch, "device": "cpu",
           "threads": torch.get_num_threads()}
    curve = measure(space, key, args.multiple, args.repeats)
    weights = activation_weights(space)
    uniform = []
    for width in WIDTHS:  # the same states the curve timed, with their activations
        state = state_with_counts(space.group_sizes, counts_for_size(space, width, args.multiple, cost="macs"))
        macs = size_fraction(space, state, "macs")
        uniform.append((macs, activations_fraction(weights, state), curve.latency_at(macs)))
    uniform.append((1.0, 1.0, 1.0))

    generator = torch.Generator().manual_seed(1)
    keep = torch.rand(args.states, len(space.group_sizes), generator=generator) * 0.8 + 0.2  # per-group keep rates
    per_unit = torch.repeat_interleave(keep, torch.tensor(space.group_sizes), dim=1)
    states = fit_states_to_size(space, torch.rand(per_unit.shape, generator=generator) < per_unit, args.macs,
                                generator, args.multiple, cost="macs")
    rows = []
    for index, state in enumerate(states):
        macs = size_fraction(space, state, "macs")
        row = {"macs": macs, "activations": activations_fraction(weights, state),
               "params": size_fraction(space, state, "params"), "measured": timed_ratio(space, state, x, args.repeats),
               "by_macs_curve": curve.latency_at(macs)}
        rows.append(row)
        print(f"[{name}] state {index}: {macs:.3f} of the MACs, {row['activations']:.3f} of the activations, "
              f"measured {row['measured']:.3f}, MACs curve {row['by_macs_curve']:.3f}", flush=True)
    for index, row in enumerate(rows):  # leave one out
        others = [(r["macs"], r["activations"], r["measured"]) for i, r in enumerate(rows) if i != index]
        c, a, b = least_squares(uniform + others).tolist()
        row["by_two_features"] = c + a * row["macs"] + b * row["activations"]
    measured = [r["measured"] for r in rows]

    def error(key: str) -> float:
        return statistics.mean(abs(r[key] / r["measured"] - 1) for r in rows)

    return {"model": name, "image_size": size, "batch": args.batch, "threads": torch.get_num_threads(),
            "curve": curve.points, "states": rows, "measured_min": min(measured), "measured_median":
            statistics.median(measured), "measured_max": max(measured), "error_macs_curve": error("by_macs_curve"),
            "error_two_features": error("by_two_features")}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="small_cnn,lenet5,resnet20")
    parser.add_argument("--states", type=int, default=8)
    parser.add_argument("--macs", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--multiple", type=int, default=8, help="channel_multiple, as the runs use")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a compare run's task has one CPU)")
    parser.add_argument("--json", default="benchmarks/results/latency_model_check_cpu.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = [check(name, args) for name in args.models.split(",")]
    print(f"\n{args.states} states of random per-layer widths at {args.macs:.0%} of the MACs, batch {args.batch}, "
          f"{torch.get_num_threads()} threads; time as a fraction of the dense network's (median of paired ratios)")
    print(f"{'model':<10} {'measured min':>12} {'median':>7} {'max':>6} {'MACs curve error':>17} {'two-feature error':>18}")
    for r in results:
        print(f"{r['model']:<10} {r['measured_min']:>12.3f} {r['measured_median']:>7.3f} {r['measured_max']:>6.3f} "
              f"{r['error_macs_curve']:>16.1%} {r['error_two_features']:>18.1%}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
