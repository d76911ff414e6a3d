"""EDropout step time on Ray against one process, overlap on and off, and the weight broadcast.

From one run, side by side (issue 3's benchmarks a, b and c):
  (a) the time of an EDropout step with shards = 1 and 2 and with the one-process engine, over a
      plain training step;
  (b) overlap on against off (shards = 2);
  (c) bytes and time of publishing the learner's weights to the shards, ResNet-18 and ResNet-50.
Steps are timed over consecutive steps (total / count), so overlapped work is credited; the plain
step and the one-process engine run in this process with torch's default threads, the actors with
one thread each (Ray's default for a 1-CPU actor).

With `--device cuda` everything runs on one GPU: the plain step and the one-process engine on it,
and on Ray the learner and every shard hold an equal fraction of it (1 / (shards + 1) each), so
the shards share the GPU with the learner, as a user with one GPU per node would run them.

    .venv/bin/python benchmarks/distributed_step.py [--steps 6] [--device cuda] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import ray
import torch
import torch.nn.functional as F

from edropout_ray.config import Config
from edropout_ray.distributed.coordinator import start_distributed_engine
from edropout_ray.training.step import EDropoutEngine
from edropout_ray.models import ModelRecipe
from edropout_ray.distributed.shard import ShardWorker
from edropout_ray.pruning.space import PruningSpace


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per runtime (after 2 warm-up)")
    parser.add_argument("--broadcast-models", default="resnet18,resnet50")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: one GPU, shared by the learner and the shards in equal fractions")
    parser.add_argument("--json", metavar="PATH")
    return parser.parse_args(argv)


def batch(args):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=generator)
    y = torch.randint(0, 10, (args.batch,), generator=generator)
    return x.to(args.device), y.to(args.device)


def gpu_share(args, shards: int) -> float:
    """Each actor's fraction of the one GPU: the learner and `shards` shards in equal parts."""
    return 1.0 / (shards + 1) if args.device == "cuda" else 0.0


def synchronize(args) -> None:
    if args.device == "cuda":
        torch.cuda.synchronize()


def per_step(step, steps: int, finish=lambda: None) -> float:
    for _ in range(2):
        step()
    finish()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    finish()
    return (time.perf_counter() - start) / steps


def step_times(args) -> dict:
    recipe = ModelRecipe(args.model, 10, 3, args.image_size, seed=0)
    x, y = batch(args)
    # the defaults: states scored and trained at their own size on a CPU, in blocks of 8 channels
    base = Config(model=args.model, population_size=args.population, optimizer="sgd", lr=0.01)
    times = {}

    model = recipe.build().to(args.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-5)

    def plain():
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    times["plain step"] = per_step(plain, args.steps, finish=lambda: synchronize(args))
    local = EDropoutEngine(PruningSpace(recipe.build().to(args.device), x, scoring=base.scoring), base)
    times["one process"] = per_step(lambda: local.step(x, y, 0), args.steps, finish=lambda: synchronize(args))
    for shards, overlap in ((1, False), (2, False), (2, True)):
        share = gpu_share(args, shards)
        config = base.replace(shards=shards, overlap=overlap, shard_gpus=share, learner_gpus=share)
        # the driver's copy stays on the CPU: the actors compute, it only coordinates
        engine = start_distributed_engine(PruningSpace(recipe.build(), x.cpu(), scoring=base.scoring), config,
                                          recipe)
        try:
            times[f"shards={shards} overlap={'on' if overlap else 'off'}"] = per_step(
                lambda: engine.step(x.cpu(), y.cpu(), 0), args.steps, finish=engine.finish)
        finally:
            engine.close()
    return times


def broadcast(model_name: str, image_size: int, device: str = "cpu") -> dict:
    """Bytes of one weight publish, and its time to 1 and 2 shards (put + every shard loaded; on
    `cuda` the shards hold half a GPU each and copy the weights onto it)."""
    recipe = ModelRecipe(model_name, 10, 3, image_size, seed=0)
    model = recipe.build()
    # as the learner publishes them: NumPy arrays, which Ray stores without pickling
    weights = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    nbytes = sum(v.nbytes for v in weights.values())
    example = torch.randn(2, 3, image_size, image_size)
    actor = ray.remote(ShardWorker).options(num_cpus=1, num_gpus=0.5 if device == "cuda" else 0)
    shards = [actor.remote(recipe, example, "loop", "margin", 10.0, device) for _ in range(2)]
    ray.get([s.num_units.remote() for s in shards])
    result = {"bytes": nbytes}
    for count in (1, 2):
        samples = []
        for _ in range(4):
            start = time.perf_counter()
            ref = ray.put(weights)
            ray.get([s.load_weights.remote([ref]) for s in shards[:count]])
            samples.append(time.perf_counter() - start)
        result[f"seconds_to_{count}"] = sorted(samples)[len(samples) // 2]
    for s in shards:
        ray.kill(s)
    return result


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here")
    # on the GPU: CPUs for the learner, two shards and the data; Ray finds the GPUs itself
    ray.init(num_cpus=3 if args.device == "cpu" else max(4, os.cpu_count() or 4), include_dashboard=False,
             log_to_driver=False)
    load = os.getloadavg()[0]
    times = step_times(args)
    casts = {name: broadcast(name, args.image_size, args.device) for name in args.broadcast_models.split(",")}
    ray.shutdown()

    plain, local = times["plain step"], times["one process"]
    print(f"\n{args.model}, batch {args.batch}, {args.image_size}x{args.image_size}, S = {args.population}, "
          f"device {args.device}, {os.cpu_count()} cores, {args.steps} steps each (load at start {load:.2f})")
    print(f"{'runtime':<26} {'s/step':>8} {'/ plain step':>13} {'/ one process':>14}")
    for name, seconds in times.items():
        print(f"{name:<26} {seconds:>8.3f} {seconds / plain:>12.2f}x {seconds / local:>13.2f}x")
    print(f"\noverlap on / off (shards=2): {times['shards=2 overlap=on'] / times['shards=2 overlap=off']:.2f}x")
    print(f"goal: shards=2 with overlap <= 1.1x one process: "
          f"{times['shards=2 overlap=on'] / local:.2f}x")
    print(f"\n{'weights broadcast':<18} {'MB':>8} {'to 1 shard':>11} {'to 2 shards':>12}")
    for name, c in casts.items():
        print(f"{name:<18} {c['bytes'] / 1e6:>8.1f} {c['seconds_to_1'] * 1e3:>9.1f}ms {c['seconds_to_2'] * 1e3:>10.1f}ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"step_seconds": times, "broadcast": casts, "args": vars(args)}, f, indent=2)


if __name__ == "__main__":
    main()
