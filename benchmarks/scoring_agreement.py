"""How often cheaper scoring makes the same selection decisions as exact scoring, and what it saves.

An EDropout run (LeNet-5 on Fashion-MNIST by default, the default schedule: dense warm-up, then the
search) is run with exact scoring (float32, the whole batch the selection scores on). At every
search step the same states on the same batch are also scored by each cheaper variant: bfloat16
and float16 autocast, and `score_batch` sub-batches. A decision is one paired comparison (child
against its parent, accepted when its energy is lower, as with temperature 0); the script prints
the fraction of decisions each variant makes as exact scoring does, how often it picks the same
lowest-energy state of the 2S scored, and its scoring time against exact scoring's. The run
itself follows the exact energies, so every variant is judged on the same states.

    .venv/bin/python benchmarks/scoring_agreement.py [--model lenet5] [--steps 240] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from edropout_ray.config import Config
from edropout_ray.data import load_dataset, make_loader
from edropout_ray.models import build_model
from edropout_ray.pruning.scoring_options import ScoringOptions
from edropout_ray.pruning.space import PruningSpace
from edropout_ray.training.step import EDropoutEngine

VARIANTS = {
    "bfloat16": ScoringOptions("bfloat16"),
    "float16": ScoringOptions("float16"),
    "score_batch=16": ScoringOptions(batch=16),
    "score_batch=32": ScoringOptions(batch=32),
    "score_batch=64": ScoringOptions(batch=64),
    "channels_last": ScoringOptions(channels_last=True),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet5", help="built-in model name (edropout_ray.models)")
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--steps", type=int, default=240, help="planned steps; the search runs from the end of "
                        "the dense warm-up to the freeze (the default schedule: from 25%% to 50%% of them)")
    parser.add_argument("--batch", type=int, default=Config().batch_size)
    parser.add_argument("--selection", default=Config().selection, choices=("paired", "rescore"))
    parser.add_argument("--scoring", default="auto", help="scoring mode (the variants change only the options)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", metavar="PATH", help="also write the figures here")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = Config(model=f"edropout_ray.models:{args.model}", dataset="fashion_mnist", batch_size=args.batch,
                    selection=args.selection, scoring=args.scoring)
    data = load_dataset("fashion_mnist", args.data_dir, augment=False)
    loader = make_loader(data.train, args.batch, shuffle=True, seed=0, drop_last=True)
    model = build_model(config.model, data.num_classes, data.in_channels, data.image_size)
    x0, _ = next(iter(loader))
    exact = PruningSpace(model, x0, scoring=args.scoring)
    spaces = {name: PruningSpace(model, x0, scoring=args.scoring, options=options)
              for name, options in VARIANTS.items()}  # the same model: every variant sees the learner's weights
    agree = {name: [] for name in VARIANTS}
    same_best = {name: [] for name in VARIANTS}
    seconds = {name: 0.0 for name in ["exact", *VARIANTS]}
    failed: dict[str, str] = {}

    def timed_score(name: str, space: PruningSpace, states, x, y) -> torch.Tensor:
        start = time.perf_counter()
        energies = space.score(states, x, y, energy=config.energy, kappa=config.kappa).cpu().float()
        seconds[name] += time.perf_counter() - start
        return energies

    def scorer(states: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        reference = timed_score("exact", exact, states, x, y)
        parents, children = reference.split(len(states) // 2)
        for name, space in spaces.items():
            if name in failed:
                continue
            try:
                energies = timed_score(name, space, states, x, y)
            except Exception as error:  # float16 autocast where the device has no kernels for it
                failed[name] = f"{type(error).__name__}: {error}".splitlines()[0][:160]
                continue
            p, c = energies.split(len(states) // 2)
            agree[name] += ((c < p) == (children < parents)).tolist()
            same_best[name].append(bool(energies.argmin() == reference.argmin()))
        return reference

    engine = EDropoutEngine(exact, config, scorer=scorer, total_steps=args.steps)
    engine.plan(args.steps)
    step = 0
    while step < args.steps and not engine.frozen:
        for x, y in loader:
            engine.step(x, y, epoch=0)
            step += 1
            if step >= args.steps or engine.frozen:
                break
    searched = len(same_best["bfloat16"]) or max(len(v) for v in same_best.values())
    print(f"{args.model} on Fashion-MNIST, batch {args.batch}, selection {args.selection} (the scorer gets "
          f"{args.batch // 2 if args.selection == 'paired' else args.batch} samples), S = {config.population_size}, "
          f"{searched} search steps after {engine.warmup_steps} dense ones, scoring {exact.scoring_mode_for(x0)} "
          f"on {x0.device}, {torch.get_num_threads()} threads")
    print(f"{'variant':16s} {'decisions agree':>16s} {'same best':>10s} {'scoring time':>13s}")
    figures = {}
    for name in VARIANTS:
        if name in failed:
            print(f"{name:16s} failed: {failed[name]}")
            continue
        figures[name] = {"decisions": len(agree[name]), "agreement": sum(agree[name]) / max(1, len(agree[name])),
                         "same_best": sum(same_best[name]) / max(1, len(same_best[name])),
                         "time_over_exact": seconds[name] / seconds["exact"]}
        f = figures[name]
        print(f"{name:16s} {f['agreement']:9.1%} of {f['decisions']:<5d} {f['same_best']:9.0%} "
              f"{f['time_over_exact']:11.2f}x")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"setup": vars(args), "variants": figures, "failed": failed,
                       "exact_scoring_s": seconds["exact"]}, handle, indent=2)
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
