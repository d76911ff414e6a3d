"""Steps per second of a data-parallel learner (`learner_workers: 2`) against one worker, at the same
global batch, side by side on a local Ray.

ResNet-20 at 32 px, a half-units state trained at its size (the default), SGD; each worker holds one
CPU (Ray gives an actor of `num_cpus: 1` one torch thread). The two shapes alternate in rounds, so
a busy machine slows both alike; the median of the rounds' steps per second is compared. The JSON
goes to --out.

    .venv/bin/python benchmarks/learner_scaling.py [--batch 128] [--steps 20] [--rounds 3]
                                                   [--out benchmarks/results/learner_scaling_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path


def start(workers: int, batch: int):
    import torch

    from edropout_ray.config import Config
    from edropout_ray.distributed.coordinator import _start_learner
    from edropout_ray.distributed.liveness import Liveness
    from edropout_ray.distributed.shard import ShardPool
    from edropout_ray.models import ModelRecipe
    from edropout_ray.pruning.space import PruningSpace

    recipe = ModelRecipe("edropout_ray.models:resnet20", num_classes=10, in_channels=3, image_size=32, seed=0)
    space = PruningSpace(recipe.build(), torch.randn(2, 3, 32, 32))
    config = Config(model="edropout_ray.models:resnet20", shards=1, learner_workers=workers, batch_size=batch, optimizer="sgd", lr=0.05)
    liveness = Liveness()
    learner = _start_learner(space, config, recipe, ShardPool(lambda: None, 1, liveness), liveness, total_steps=10**6)
    generator = torch.Generator().manual_seed(0)
    state = (torch.rand(space.num_units, generator=generator) < 0.5)
    x = torch.randn(batch, 3, 32, 32, generator=generator)
    y = torch.randint(0, 10, (batch,), generator=generator)
    return learner, state, x, y


def steps_per_second(learner, state, x, y, steps: int) -> float:
    learner.step(state, x, y)  # the first step gathers the state's tensors at size
    started = time.perf_counter()
    for _ in range(steps):
        learner.step(state, x, y)
    return steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128, help="the global batch, the same for both shapes")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/learner_scaling_cpu.json")
    args = parser.parse_args()

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rates: dict[int, list[float]] = {1: [], 2: []}
    try:
        for round_ in range(args.rounds):
            for workers in (1, 2):
                learner, state, x, y = start(workers, args.batch)
                try:
                    rates[workers].append(steps_per_second(learner, state, x, y, args.steps))
                finally:
                    learner.close()
                print(f"round {round_ + 1}: {workers} worker(s) {rates[workers][-1]:.2f} steps/s", flush=True)
    finally:
        ray.shutdown()
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    result = {"model": "resnet20", "image_size": 32, "global_batch": args.batch, "steps": args.steps,
              "rounds": args.rounds, "cores": os.cpu_count(), "steps_per_s": {"1": rates[1], "2": rates[2]},
              "median_steps_per_s": {"1": one, "2": two}, "speedup_2_over_1": two / one}
    print(f"learner_workers 1: {one:.2f} steps/s, 2: {two:.2f} steps/s (median of {args.rounds} rounds), "
          f"speed-up {two / one:.2f}x at global batch {args.batch}")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
