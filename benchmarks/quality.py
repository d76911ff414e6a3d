"""Pruning quality at equal size and equal steps: every method on several models, sizes and seeds.

For each model and size, `edropout-ray compare` runs EDropout held to a share of the parameters
(`--budget params`: `prune_target_params`), of the MACs (`--budget macs`: `prune_target_macs`) or of the dense
model's latency on this machine at batch `latency_target_batch` (`--budget latency`: `prune_target_latency`), its two
ablations (no search: the energy-best initial state frozen at once; fixed_random: EDropout's layer
widths with random units) and the baselines (random, L1, Torch-Pruning's group-norm sparse training,
iterative magnitude and Taylor pruning), each held to the parameters (MACs) EDropout kept and given the
same steps; the dense network trains for the same steps once per model and seed. Fashion-MNIST as Debian
ships it (`apt-get install dataset-fashion-mnist`).

    .venv/bin/python benchmarks/quality.py [--budget params|macs|latency] [--models small_cnn,lenet5,resnet20,small_vit]
        [--sizes 0.5,0.25] [--seeds 0,1,2] [--methods ...] [--output runs/quality] [--skip-done] [--merge]
        [--set key=value ...]

Prints one table (top-1 mean ± std over seeds, the drop against dense, parameters and MACs kept) and
writes it with every run's numbers to benchmarks/results/quality_matrix.{md,json}
(quality_matrix_macs / quality_matrix_latency for the other budgets; --results to change).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pyarrow.parquet as pq

from edropout_ray.compare import BASELINES, PHASE_CACHE, compare
from edropout_ray.config import load_config

CELL_MINUTES = "minutes.txt"  # a cell's wall time, so a matrix finished in several runs still adds up
MODELS = {  # image sizes that keep the matrix within an hour on 2 cores
    "small_cnn": {"model": "edropout_ray.models:small_cnn", "image_size": 14},
    "lenet5": {"model": "edropout_ray.models:lenet5", "image_size": 28},
    "resnet20": {"model": "edropout_ray.models:resnet20", "image_size": 14},
    # a four-block ViT (patches of 7); transformers train poorly with the CNNs' SGD in 360 steps: Adam
    "small_vit": {"model": "edropout_ray.models:small_vit", "image_size": 28, "optimizer": "adam", "lr": 0.002,
                  "weight_decay": 1e-4},
}
DEFAULT_MODELS = ["small_cnn", "lenet5", "resnet20"]  # the matrix; small_vit is asked for by name
DEFAULT_METHODS = ["edropout_no_search", "fixed_random", "random", "l1", "tp_group_norm", "tp_magnitude",
                   "tp_taylor"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="jobs/quality_fashion.yaml")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"of {', '.join(MODELS)}")
    parser.add_argument("--budget", choices=("params", "macs", "latency"), default="params",
                        help="what the sizes count")
    parser.add_argument("--sizes", default="0.5,0.25", help="fractions of the parameters (MACs) kept")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"besides edropout: {', '.join(BASELINES)}")
    parser.add_argument("--output", default="runs/quality")
    parser.add_argument("--results", default=None, help="default: benchmarks/results/quality_matrix[_macs]")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--tables-only", action="store_true",
                        help="run nothing: build the table from the summaries already under --output")
    parser.add_argument("--skip-done", action="store_true",
                        help="reuse the cells (model, size) already finished under --output; run the others")
    parser.add_argument("--merge", action="store_true",
                        help="keep the results file's rows of other cells (a matrix run in parts, on different machines)")
    args = parser.parse_args(argv)
    models = args.models.split(",")
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model {', '.join(unknown)}; the matrix has {', '.join(MODELS)}")
    sizes = [float(s) for s in args.sizes.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    base = load_config(args.config, args.overrides)

    results = Path(args.results or "benchmarks/results/quality_matrix" + ("" if args.budget == "params"
                                                                           else f"_{args.budget}"))
    earlier = earlier_cells(results.with_suffix(".json"), models, sizes) if args.merge else {"rows": [], "minutes": 0.0}
    rows, minutes = [], 0.0
    for index, size in enumerate(sizes):  # a size for every model first: a column of the table at a time
        for model in models:
            config = base.replace(**MODELS[model], **{f"prune_target_{args.budget}": size}, dense_baseline=index == 0)
            cells = Path(args.output) if args.budget == "params" else Path(args.output) / args.budget
            folder = cells / model / f"{size:g}"
            done = (folder / "summary.parquet").exists() and (folder / CELL_MINUTES).exists()
            if args.tables_only or (args.skip_done and done):
                if not done:
                    continue
                summary = pq.read_table(folder / "summary.parquet").to_pylist()
            else:
                started = time.perf_counter()
                summary = compare(config, folder, seeds, methods=methods, phase_cache=Path(args.output) / PHASE_CACHE)
                (folder / CELL_MINUTES).write_text(f"{(time.perf_counter() - started) / 60:.2f}\n")
            minutes += float((folder / CELL_MINUTES).read_text())
            rows += [{"model": model, "size": size} | row for row in summary]
            print(f"[quality] {model} at {size:.0%} done; {minutes:.1f} min of runs so far", flush=True)
    dense_now = {r["model"] for r in rows if r["method"] == "dense"}
    rows = sorted(rows + [r for r in earlier["rows"] if not (r["method"] == "dense" and r["model"] in dense_now)],
                  key=lambda r: (list(MODELS).index(r["model"]), -r["size"]))  # stable: methods keep their order
    minutes += earlier["minutes"]
    table = markdown(rows, base, seeds, minutes, args.budget)
    print("\n" + table)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.with_suffix(".md").write_text(table)
    results.with_suffix(".json").write_text(json.dumps({"config": base.to_dict(), "seeds": seeds, "minutes": minutes,
                                                        "rows": rows}, indent=1, default=str))


def earlier_cells(path: Path, models: list[str], sizes: list[float]) -> dict:
    """The rows and minutes of a results file, refused when it holds a cell this run would run again
    (its minutes could not be told apart from the others')."""
    if not path.exists():
        return {"rows": [], "minutes": 0.0}
    earlier = json.loads(path.read_text())
    again = sorted({(r["model"], r["size"]) for r in earlier["rows"]
                    if r["model"] in models and r["size"] in sizes and r["method"] != "dense"})
    if again:
        raise SystemExit(f"quality.py: error: {path} already holds {', '.join(f'{m} at {s:.0%}' for m, s in again)}; "
                         "--merge adds other cells only: leave those out of --models/--sizes, or drop --merge "
                         "to write the file anew")
    return earlier


BUDGET_WORDS = {"params": "parameters", "macs": "MACs",
                "latency": "dense model's latency at batch {batch} on this machine (EDropout's runs, their masks "
                           "timed and resized when they froze; the other methods held to the MACs the same seed's "
                           "EDropout run ended with)"}


def markdown(rows: list[dict], config, seeds: list[int], minutes: float | None, budget: str = "params") -> str:
    dense = {r["model"]: r["top1_mean"] for r in rows if r["method"] == "dense"}
    took = f"{minutes:.0f} min of runs in all"
    lines = [f"Fashion-MNIST, {config.epochs} epochs x {config.max_steps_per_epoch} steps of batch {config.batch_size} "
             f"for every method, seeds {seeds}, {took} (top-1 mean ± std over seeds); sizes are shares of the "
             f"{BUDGET_WORDS[budget].format(batch=config.latency_target_batch)}.", "",
             "| model | size | method | top-1 (%) | vs dense | params kept | MACs kept |", "|---|---|---|---|---|---|---|"]
    own = {model: {k: v for k, v in MODELS[model].items() if k not in ("model", "image_size")} for model in dense}
    own = {model: ", ".join(f"{k} {v}" for k, v in settings.items()) for model, settings in own.items() if settings}
    if own:  # a model's own training settings (small_vit's optimizer), said above its rows
        lines[0] += " Per model: " + "; ".join(f"{model}: {settings}" for model, settings in own.items()) + "."
    for r in rows:
        if r["method"] == "dense":
            continue
        drop = r["top1_mean"] - dense.get(r["model"], float("nan"))
        lines.append(f"| {r['model']} | {r['size']:.0%} | {r['method']} | {r['top1_mean']:.2f} ± {r['top1_std']:.2f} | "
                     f"{drop:+.2f} | {100 * r['params_kept_fraction_mean']:.1f}% | "
                     f"{100 * r['macs_kept_fraction_mean']:.1f}% |")
    for model, top1 in dense.items():
        std = next(r["top1_std"] for r in rows if r["model"] == model and r["method"] == "dense")
        lines.append(f"| {model} | 100% | dense | {top1:.2f} ± {std:.2f} | | 100.0% | 100.0% |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
