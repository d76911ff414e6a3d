"""What a whole EDropout run costs against training the dense network for as many steps, phase by phase.

Under the default schedule a run has three phases: the dense warm-up (`dense_warmup` of the steps, a
dense step), the search (until `freeze_by`: a dense step plus scoring the population), and the frozen
network trained at its own size for the rest. This script times one step of each phase against a
plain dense step (fwd + bwd + SGD on the dense model), round-robin in one process so that background
load hits every figure alike, for the quality matrix's models and sizes (benchmarks/quality.py), and
ResNet-18 at 32x32. The whole run's cost is the phases' weighted sum; the no-search ablation trains
dense instead of searching, so what the search itself adds is its phase's share times (search step -
warm-up step). Data loading and evaluation are left out: they cost every method alike.

    .venv/bin/python benchmarks/run_cost.py [--models lenet5 resnet18] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

from edropout_ray.config import Config
from edropout_ray.models import build_model
from edropout_ray.pruning.scoring_options import ScoringOptions
from edropout_ray.pruning.space import PruningSpace
from edropout_ray.training.step import EDropoutEngine

# name -> (model spec, input channels, image size): the quality matrix's models on Fashion-MNIST, and ResNet-18
MODELS = {
    "small_cnn": ("edropout_ray.models:small_cnn", 1, 14),
    "lenet5": ("edropout_ray.models:lenet5", 1, 28),
    "resnet20": ("edropout_ray.models:resnet20", 1, 14),
    "resnet18": ("resnet18", 3, 32),
}
PHASES = ("warmup", "search", "frozen")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--sizes", nargs="+", type=float, default=[0.5, 0.25],
                        help="prune_target_params of each row (the matrix's sizes); 0 for none (p_init's units)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--json", metavar="PATH", help="also write the figures here")
    return parser.parse_args(argv)


def engines(model: torch.nn.Module, x: torch.Tensor, config: Config) -> dict[str, EDropoutEngine]:
    """One engine per phase, each on its own copy of the model (steps move weights)."""
    def engine() -> EDropoutEngine:
        space = PruningSpace(copy.deepcopy(model), x, options=ScoringOptions.of(config))
        space.model.train()
        return EDropoutEngine(space, config)

    found = {phase: engine() for phase in PHASES}
    found["warmup"].warmup_steps = 10 ** 9  # always warming up
    frozen = found["frozen"]
    frozen.final_mask = frozen.population.states[0].clone()  # a state of the population's size
    return found


def measure(name: str, size: float, args) -> dict:
    spec, channels, image_size = MODELS[name]
    torch.manual_seed(0)
    model = build_model(spec, 10, channels, image_size)
    x = torch.randn(args.batch, channels, image_size, image_size)
    y = torch.randint(0, 10, (args.batch,))
    config = Config(model=spec, prune_target_params=size or None)
    runs = engines(model, x, config)
    plain_model = copy.deepcopy(model).train()
    optimizer = torch.optim.SGD(plain_model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)

    def plain_step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(plain_model(x), y).backward()
        optimizer.step()

    figures = {"dense": plain_step} | {phase: (lambda e=runs[phase]: e.step(x, y, epoch=0)) for phase in PHASES}
    samples = {figure: [] for figure in figures}
    for round_ in range(args.warmup + args.repeats):
        for figure, fn in figures.items():
            start = time.perf_counter()
            fn()
            if round_ >= args.warmup:
                samples[figure].append(time.perf_counter() - start)
    ms = {figure: statistics.median(times) * 1e3 for figure, times in samples.items()}
    ratio = {phase: ms[phase] / ms["dense"] for phase in PHASES}
    shares = {"warmup": config.dense_warmup, "search": config.freeze_by - config.dense_warmup,
              "frozen": 1 - config.freeze_by}
    frozen_state = runs["frozen"].final_mask
    return {"model": name, "size": size or None, "units_kept": float(frozen_state.float().mean()),
            "ms": ms, "ratio": ratio, "shares": shares,
            "run": sum(shares[p] * ratio[p] for p in PHASES),
            "search_adds": shares["search"] * (ratio["search"] - ratio["warmup"])}


def report(rows: list[dict], args) -> None:
    print(f"\nbatch {args.batch}, defaults otherwise; {args.repeats} rounds after {args.warmup} (median), "
          f"{torch.get_num_threads()} threads; ratios to a plain dense step")
    print(f"{'model':10} {'size':>5} {'units':>5} {'dense':>9} {'warm-up':>8} {'search':>8} {'frozen':>8}"
          f" {'run':>6} {'search adds':>11}")
    for r in rows:
        size = "-" if r["size"] is None else f"{r['size']:.0%}"
        print(f"{r['model']:10} {size:>5} {r['units_kept']:5.0%} {r['ms']['dense']:7.1f}ms "
              + " ".join(f"{r['ratio'][p]:7.2f}x" for p in PHASES)
              + f" {r['run']:5.2f}x {r['search_adds']:10.2f}x")
    shares = rows[0]["shares"]
    print(f"run = {shares['warmup']:.2f} warm-up + {shares['search']:.2f} search + {shares['frozen']:.2f} frozen "
          "(the default schedule); 'search adds' = what the run costs over its no-search ablation")


def main(argv=None) -> None:
    args = parse_args(argv)
    load_start = os.getloadavg()[0]
    rows = []
    for name in args.models:
        for size in args.sizes:
            rows.append(measure(name, size, args))
            print(f"[run_cost] {name} at {size or 'p_init'}: run {rows[-1]['run']:.2f}x dense", flush=True)
    report(rows, args)
    print(f"load average (1 min): {load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end, "
          f"{os.cpu_count()} cores")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "load_start": load_start, "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
