"""What one EDropout step costs against one plain training step, on one process.

ALGORITHM.md bounds the cost from below: a step is one training step plus S no-grad forwards, so
t_edropout / t_step >= 1 + S * t_forward / t_step. The reference code is 17x-29x slower than plain
training; this script shows how far this package is from the bound, whether batching the S
forwards with vmap pays on this device, what it costs in memory, and whether a converged run is
back at plain cost. All times come from one run, measured round-robin (one repetition of every
figure per round), so background load hits every figure alike; the reported time is the median.

    .venv/bin/python benchmarks/step_overhead.py [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
import torchvision
from torch.profiler import ProfilerActivity, profile

from edropout_ray.config import Config
from edropout_ray.engine import EDropoutEngine
from edropout_ray.space import PruningSpace

REFERENCE_SLOWDOWN = "17x-29x (authors' code, one GPU, S = 8, ALGORITHM.md)"
GOAL = 1.15  # ratio / bound


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--model", default="resnet18", help="torchvision model name")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--selection", default=Config().selection, choices=("paired", "rescore", "reference"),
                        help="what engine.step scores: 'paired' 2S states on half the batch, 'reference' S on all of it")
    parser.add_argument("--json", metavar="PATH", help="also write the figures here")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    return parser.parse_args(argv)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def setup(args):
    """Model with random weights, one batch, its pruning space and the run config."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(args.model, weights=None, num_classes=args.num_classes).to(device())
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device())
    y = torch.randint(0, args.num_classes, (args.batch,), device=device())
    space = PruningSpace(model, x, scoring="loop")
    config = Config(model=args.model, population_size=args.population, optimizer="sgd", lr=0.01,
                    selection=args.selection)
    return model, x, y, space, config


def timed(fn) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


# ---- peak memory -----------------------------------------------------------------------------
# On CPU: torch.profiler's memory events. Each allocation and free of torch's CPU allocator is
# recorded with the running total, so the peak of that total is the most tensor memory the call
# held at once. Not ru_maxrss: it is a process-lifetime high-water mark and malloc keeps freed
# pages resident, so a second call in the same process reads ~0 (tried: scoring 1 state showed 0
# MiB) and the figure depends on what ran before; the profiler counts exactly the call's tensors,
# in the same process and on the same model as the timings. On CUDA the allocator keeps the peak.

def peak_memory_mib(fn) -> float:
    """Peak growth of live tensor memory while `fn` runs, in MiB."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = [e["args"] for e in json.load(f)["traceEvents"] if e.get("name") == "[memory]"]
    if not events:
        return 0.0
    start = events[0]["Total Allocated"] - events[0]["Bytes"]
    return (max(e["Total Allocated"] for e in events) - start) / 2**20


def scoring_memory(space: PruningSpace, states: torch.Tensor, x: torch.Tensor) -> dict:
    """Peak memory of space.logits for 1 and for all states, loop and vmap."""
    memory = {}
    for mode in ("loop", "vmap"):
        space.scoring = mode
        for n in (1, len(states)):
            try:
                memory[f"{mode}_{n}"] = peak_memory_mib(lambda: space.logits(states[:n], x))
            except Exception as error:
                memory[f"{mode}_{n}"] = f"failed: {type(error).__name__}: {error}".splitlines()[0][:120]
    space.scoring = "loop"
    return memory


# ---- timings -----------------------------------------------------------------------------------

def measure(args) -> tuple[dict, dict]:
    """Median times (and spreads) of every figure, plus the scoring memory."""
    load_start = os.getloadavg()[0]
    model, x, y, space, config = setup(args)
    S = args.population
    plain_model = copy.deepcopy(model)  # plain SGD steps must not move the engine's weights
    plain_optimizer = torch.optim.SGD(plain_model.parameters(), lr=config.lr, momentum=config.momentum,
                                      weight_decay=config.weight_decay)  # same optimizer as the learner
    engine = EDropoutEngine(space, config)

    # A converged run: its own copy of the model, frozen on its population's best state.
    converged_space = PruningSpace(copy.deepcopy(model), x, scoring="loop")
    converged = EDropoutEngine(converged_space, config)
    converged.step(x, y, epoch=0)  # scores the population once
    converged.final_mask = converged.population.best_state.clone()

    def plain_step():
        plain_model.train()
        plain_optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(plain_model(x), y).backward()
        plain_optimizer.step()

    def plain_forward():
        with torch.no_grad():
            plain_model(x)

    def scoring(mode: str, num_states: int):
        def run():
            space.scoring = mode
            try:
                space.logits(engine.population.states[:num_states], x)
            finally:
                space.scoring = "loop"
        return run

    figures = {
        "t_step": plain_step,
        "t_forward_plain": plain_forward,
        "t_forward": scoring("loop", 1),  # what scoring one state costs: a masked no-grad forward
        "t_edropout": lambda: engine.step(x, y, epoch=0),
        "t_converged": lambda: converged.step(x, y, epoch=0),
        "t_score_loop": scoring("loop", S),
        "t_score_vmap": scoring("vmap", S),
    }
    model.train()  # the engine scores in the model's mode, which after a learner step is train
    samples = {name: [] for name in figures}
    failed = {}
    for round_ in range(args.warmup + args.repeats):
        for name, fn in figures.items():
            if name in failed:
                continue
            try:
                elapsed = timed(fn)
            except Exception as error:  # e.g. vmap over a model it cannot batch: report, go on
                failed[name] = f"{type(error).__name__}: {error}".splitlines()[0][:120]
                continue
            if round_ >= args.warmup:
                samples[name].append(elapsed)
    result = {name: statistics.median(times) for name, times in samples.items() if times}
    result["failed"] = failed
    memory = {} if args.no_memory else scoring_memory(space, engine.population.states, x)
    result["spread"] = {name: [min(t), max(t)] for name, t in samples.items() if t}
    result["num_units"] = space.num_units
    result["load_start"] = load_start
    result["converged_kept_fraction"] = float(converged.final_mask.float().mean())
    return result, memory


def derive(r: dict, S: int) -> dict:
    out = {}
    if {"t_step", "t_forward", "t_edropout"} <= r.keys():
        out["ratio"] = r["t_edropout"] / r["t_step"]
        out["bound"] = 1 + S * r["t_forward"] / r["t_step"]
        out["ratio_over_bound"] = out["ratio"] / out["bound"]
        out["bound_plain_forward"] = 1 + S * r["t_forward_plain"] / r["t_step"]
    if "t_converged" in r:
        out["converged_over_step"] = r["t_converged"] / r["t_step"]
    for mode in ("loop", "vmap"):
        if f"t_score_{mode}" in r:
            out[f"{mode}_per_state"] = r[f"t_score_{mode}"] / S
            out[f"{mode}_per_state_over_forward"] = out[f"{mode}_per_state"] / r["t_forward"]
    return out


def report(args, r: dict, d: dict, memory: dict) -> None:
    S = args.population
    ms = lambda name: f"{r[name] * 1e3:9.1f} ms" if name in r else "   failed"
    spread = lambda name: (f"[{r['spread'][name][0] * 1e3:.0f}-{r['spread'][name][1] * 1e3:.0f}]"
                           if name in r["spread"] else "")
    print(f"\n{args.model}, batch {args.batch}, {args.image_size}x{args.image_size}, S = {S}, "
          f"{r['num_units']} units, device {device()}, {torch.get_num_threads()} threads, "
          f"{args.repeats} rounds after {args.warmup} warm-up (median, [min-max])")
    rows = [
        ("t_step", "plain training step (fwd+bwd+SGD)", "1.00x step"),
        ("t_forward_plain", "plain no-grad forward", f"{r.get('t_forward_plain', 0) / r['t_step']:.2f}x step"),
        ("t_forward", "masked no-grad forward, 1 state", f"{r.get('t_forward', 0) / r['t_step']:.2f}x step"),
        ("t_edropout", f"engine.step (S = {S} scored + learner)", f"{d.get('ratio', float('nan')):.2f}x step"),
        ("t_converged", "engine.step after freezing", f"{d.get('converged_over_step', float('nan')):.2f}x step"),
        ("t_score_loop", f"space.logits, S = {S}, loop",
         f"{d.get('loop_per_state_over_forward', float('nan')):.2f}x t_forward per state"),
        ("t_score_vmap", f"space.logits, S = {S}, vmap",
         f"{d.get('vmap_per_state_over_forward', float('nan')):.2f}x t_forward per state"),
    ]
    print(f"{'figure':16s} {'what':40s} {'time':>12s}  {'ratio':28s} spread")
    for name, what, ratio in rows:
        print(f"{name:16s} {what:40s} {ms(name)}  {ratio if name in r else '':28s} {spread(name)}")
    for name, why in r["failed"].items():
        print(f"  {name} failed: {why}")
    if "ratio" in d:
        verdict = "meets" if d["ratio_over_bound"] <= GOAL else "misses"
        print(f"\nratio t_edropout / t_step      {d['ratio']:6.2f}x   (reference code: {REFERENCE_SLOWDOWN})")
        print(f"bound 1 + S t_forward / t_step {d['bound']:6.2f}x   "
              f"(with a plain forward: {d['bound_plain_forward']:.2f}x)")
        print(f"ratio / bound                  {d['ratio_over_bound']:6.2f}    goal <= {GOAL}: {verdict}")
    if "converged_over_step" in d:
        print(f"converged step / t_step        {d['converged_over_step']:6.2f}x   "
              f"(claim: plain cost after convergence; kept {r['converged_kept_fraction']:.0%} of units)")
    if memory:
        how = "CUDA max_memory_allocated" if torch.cuda.is_available() else "torch.profiler memory events"
        print(f"\npeak memory of one scoring call ({how})")
        for mode in ("loop", "vmap"):
            one, many = memory[f"{mode}_1"], memory[f"{mode}_{S}"]
            if isinstance(one, str) or isinstance(many, str):
                print(f"  {mode:5s} failed: {one if isinstance(one, str) else many}")
                continue
            print(f"  {mode:5s} 1 state {one:8.1f} MiB   {S} states {many:8.1f} MiB   "
                  f"({many / max(one, 1e-9):.1f}x)")
    load = os.getloadavg()[0]
    print(f"\nload average (1 min): {r['load_start']:.2f} at the start, {load:.2f} at the end, "
          f"{os.cpu_count()} cores" + ("  <- other processes competed for the CPU" if
                                       max(load, r["load_start"]) > os.cpu_count() + 0.5 else ""))


def main(argv=None) -> None:
    args = parse_args(argv)
    r, memory = measure(args)
    d = derive(r, args.population)
    report(args, r, d, memory)
    if args.json:
        figures = {"setup": {k: v for k, v in vars(args).items() if k != "json"},
                   "device": str(device()), "threads": torch.get_num_threads(),
                   "times_s": {k: v for k, v in r.items() if k.startswith("t_")},
                   "spread_s": r["spread"], "failed": r["failed"], "derived": d,
                   "peak_memory_mib": memory, "reference_slowdown": REFERENCE_SLOWDOWN,
                   "loadavg_1min": [r["load_start"], os.getloadavg()[0]]}
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
