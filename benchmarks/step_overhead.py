"""What one EDropout step costs against one plain training step, on one process, masked and at size.

docs/algorithm.md bounds a masked step from below: one training step plus S no-grad dense forwards, so
t_edropout / t_step >= 1 + S * t_forward / t_step. The reference code is 17x-29x slower than plain
training. Run at the states' own size (scoring on gathered compact weights, the learner training
the compact network), a step costs what the states keep instead. This script prints, side by side
from one run: the plain dense step; the EDropout step masked and at size; the step after the mask
froze, masked and at size; scoring S states by loop, vmap, at size and folded (and the energies'
largest difference from the masked ones); the exported model's latency against the dense model's at batch
1 and the benchmark's batch; and the memory of one scoring call. Times are measured round-robin
(one repetition of every figure per round), so background load hits every figure alike; the
reported time is the median.

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
from edropout_ray.training.step import EDropoutEngine
from edropout_ray.artifacts.pruned_model import count_macs
from edropout_ray.artifacts.latency import compare_latency, describe_speedup
from edropout_ray.pruning.scoring_options import ScoringOptions
from edropout_ray.pruning.space import PruningSpace

REFERENCE_SLOWDOWN = "17x-29x (authors' code, one GPU, S = 8, docs/algorithm.md)"
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
    parser.add_argument("--channel-multiple", type=int, default=Config().channel_multiple,
                        help="states keep a multiple of this many units per layer (config channel_multiple)")
    parser.add_argument("--train-while-searching", default=Config().train_while_searching, choices=("dense", "best"),
                        help="what a search step trains: dense (the default schedule) or the best state at its "
                             "size (the paper's schedule)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures here")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--score-precision", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="autocast for every scoring forward (config score_precision)")
    parser.add_argument("--score-channels-last", action="store_true",
                        help="score images in channels-last (config score_channels_last)")
    parser.add_argument("--score-batch", type=int, default=None,
                        help="samples per state scored (config score_batch; default: the whole batch)")
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
    config = Config(model=args.model, population_size=args.population, optimizer="sgd", lr=0.01,
                    selection=args.selection, channel_multiple=args.channel_multiple,
                    score_precision=args.score_precision, score_channels_last=args.score_channels_last,
                    score_batch=args.score_batch, train_while_searching=args.train_while_searching)
    space = PruningSpace(model, x, scoring="loop", options=ScoringOptions.of(config))
    return model, x, y, space, config


# the dense cost with zeros in it (scored as the auto rule scored before at-size: loop on a CPU, vmap on a GPU)
MASKED = {"scoring": "vmap" if torch.cuda.is_available() else "loop", "train_at_size": False}
AT_SIZE = {"scoring": "at_size", "train_at_size": True}
DEFAULTS = {"scoring": "auto", "train_at_size": True}  # on a GPU: the measured mode, the learner at size
FOLDED = {"scoring": "folded", "train_at_size": True}


def engine_for(model, x, y, config: Config, how: dict, frozen_on: torch.Tensor | None = None) -> EDropoutEngine:
    """An engine on its own copy of the model (steps move weights); frozen on a state when given."""
    space = PruningSpace(copy.deepcopy(model), x, scoring=how["scoring"], options=ScoringOptions.of(config))
    engine = EDropoutEngine(space, config.replace(train_at_size=how["train_at_size"]))
    if frozen_on is not None:
        engine.final_mask = frozen_on.clone()
    return engine


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
    """Peak memory of space.logits for 1 and for all states, loop, vmap, at size and folded."""
    memory = {}
    for mode in SCORING:
        space.scoring = mode
        for n in (1, len(states)):
            try:
                memory[f"{mode}_{n}"] = peak_memory_mib(lambda: space.logits(states[:n], x))
            except Exception as error:
                memory[f"{mode}_{n}"] = f"failed: {type(error).__name__}: {error}".splitlines()[0][:120]
    space.scoring = "loop"
    return memory


SCORING = ("loop", "vmap", "at_size", "folded")


# ---- timings -----------------------------------------------------------------------------------

def measure(args) -> tuple[dict, dict]:
    """Median times (and spreads) of every figure, the exported model's latency, the scoring memory."""
    load_start = os.getloadavg()[0]
    model, x, y, space, config = setup(args)
    S = args.population
    plain_model = copy.deepcopy(model)  # plain SGD steps must not move the engines' weights
    plain_optimizer = torch.optim.SGD(plain_model.parameters(), lr=config.lr, momentum=config.momentum,
                                      weight_decay=config.weight_decay)  # same optimizer as the learner
    engines = {"masked": engine_for(model, x, y, config, MASKED), "at_size": engine_for(model, x, y, config, AT_SIZE),
               "defaults": engine_for(model, x, y, config, DEFAULTS), "folded": engine_for(model, x, y, config, FOLDED)}
    states = engines["masked"].population.states.clone()  # both engines start from this population
    model.train()  # the engines score in the model's mode, which after a learner step is train
    energies = {mode: _energies(space, mode, states, x, y) for mode in ("loop", "at_size", "folded")}
    # a converged run: frozen on the population's best state (p_init keeps about half of every layer)
    frozen_state = states[int(energies["loop"].argmin())]
    frozen = {how: engine_for(model, x, y, config, spec, frozen_on=frozen_state)
              for how, spec in (("masked", MASKED), ("at_size", AT_SIZE))}

    def plain_step():
        plain_model.train()
        plain_optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(plain_model(x), y).backward()
        plain_optimizer.step()

    cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    cl_optimizer = torch.optim.SGD(cl_model.parameters(), lr=config.lr, momentum=config.momentum,
                                   weight_decay=config.weight_decay)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def plain_step_channels_last():  # at-size execution uses this layout on a CPU: the dense step gets it too
        cl_model.train()
        cl_optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(cl_model(x_cl), y).backward()
        cl_optimizer.step()

    def plain_forward():
        with torch.no_grad():
            plain_model(x)

    def scoring(mode: str, num_states: int):
        def run():
            space.scoring = mode
            try:
                space.logits(states[:num_states], x)
            finally:
                space.scoring = "loop"
        return run

    figures = {
        "t_step": plain_step,
        "t_step_channels_last": plain_step_channels_last,
        "t_forward_plain": plain_forward,
        "t_forward": scoring("loop", 1),  # what scoring one state costs masked: a no-grad dense forward
        "t_edropout": lambda: engines["masked"].step(x, y, epoch=0),
        "t_edropout_at_size": lambda: engines["at_size"].step(x, y, epoch=0),
        **({"t_edropout_defaults": lambda: engines["defaults"].step(x, y, epoch=0),
            "t_edropout_folded": lambda: engines["folded"].step(x, y, epoch=0)} if x.is_cuda else {}),
        "t_converged": lambda: frozen["masked"].step(x, y, epoch=0),
        "t_converged_at_size": lambda: frozen["at_size"].step(x, y, epoch=0),
        "t_score_loop": scoring("loop", S),
        "t_score_vmap": scoring("vmap", S),
        "t_score_at_size": scoring("at_size", S),
        "t_score_folded": scoring("folded", S),
    }
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
    memory = {} if args.no_memory else scoring_memory(space, states, x)
    result["spread"] = {name: [min(t), max(t)] for name, t in samples.items() if t}
    result["num_units"] = space.num_units
    result["load_start"] = load_start
    result["at_size_supported"] = space.at_size_supported
    result["energy_max_abs_diff"] = float((energies["at_size"] - energies["loop"]).abs().max())
    result["energy_scale"] = float(energies["loop"].abs().max())
    result["energy_folded_max_abs_diff"] = float((energies["folded"] - energies["loop"]).abs().max())
    result["folded_supported"] = space.folded_supported
    result["auto_on_this_device"] = space.scoring_mode_for(x, S) if x.is_cuda else "at_size"
    result["population_kept_fraction"] = float(states.float().mean())
    result["converged_kept_fraction"] = float(frozen_state.float().mean())
    exported = space.export(frozen_state)
    result["converged_macs_fraction"] = count_macs(exported, x) / count_macs(model, x)
    result["latency"] = compare_latency(plain_model, exported, x, sorted({1, args.batch}),
                                        repeats=max(30, 2 * args.repeats))  # short forwards: many repeats
    return result, memory


def _energies(space: PruningSpace, mode: str, states: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
    space.scoring = mode
    try:
        return space.score(states, x, y)
    finally:
        space.scoring = "loop"


def derive(r: dict, S: int) -> dict:
    out = {}
    if {"t_step", "t_forward", "t_edropout"} <= r.keys():
        out["ratio"] = r["t_edropout"] / r["t_step"]
        out["bound"] = 1 + S * r["t_forward"] / r["t_step"]
        out["ratio_over_bound"] = out["ratio"] / out["bound"]
        out["bound_plain_forward"] = 1 + S * r["t_forward_plain"] / r["t_step"]
    for name in ("t_edropout_at_size", "t_edropout_defaults", "t_edropout_folded", "t_converged",
                 "t_converged_at_size"):
        if name in r:
            out[f"{name[2:]}_over_step"] = r[name] / r["t_step"]
    best_dense = min(r[name] for name in ("t_step", "t_step_channels_last") if name in r)
    for name in ("t_edropout_at_size", "t_converged_at_size"):
        if name in r:
            out[f"{name[2:]}_over_best_step"] = r[name] / best_dense
    for mode in SCORING:
        if f"t_score_{mode}" in r:
            out[f"{mode}_per_state"] = r[f"t_score_{mode}"] / S
            out[f"{mode}_per_state_over_forward"] = out[f"{mode}_per_state"] / r["t_forward"]
    return out


def report(args, r: dict, d: dict, memory: dict) -> None:
    S = args.population
    nan = float("nan")
    ms = lambda name: f"{r[name] * 1e3:9.1f} ms" if name in r else "   failed"
    spread = lambda name: (f"[{r['spread'][name][0] * 1e3:.0f}-{r['spread'][name][1] * 1e3:.0f}]"
                           if name in r["spread"] else "")
    print(f"\n{args.model}, batch {args.batch}, {args.image_size}x{args.image_size}, S = {S}, "
          f"{r['num_units']} units, selection {args.selection}, channel multiple {args.channel_multiple}, "
          f"device {device()}, {torch.get_num_threads()} "
          f"threads, {args.repeats} rounds after {args.warmup} warm-up (median, [min-max])")
    print(f"population keeps {r['population_kept_fraction']:.0%} of the units; the frozen state "
          f"{r['converged_kept_fraction']:.0%} of the units, {r['converged_macs_fraction']:.0%} of the MACs")
    per_state = lambda mode: f"{d.get(f'{mode}_per_state_over_forward', nan):.2f}x t_forward per state"
    rows = [
        ("t_step", "plain dense training step (fwd+bwd+SGD)", "1.00x step"),
        ("t_step_channels_last", "the same in channels-last",
         f"{r.get('t_step_channels_last', 0) / r['t_step']:.2f}x step"),
        ("t_forward_plain", "plain no-grad forward", f"{r.get('t_forward_plain', 0) / r['t_step']:.2f}x step"),
        ("t_forward", "masked no-grad forward, 1 state", f"{r.get('t_forward', 0) / r['t_step']:.2f}x step"),
        ("t_edropout", "engine.step, masked", f"{d.get('ratio', nan):.2f}x step"),
        ("t_edropout_at_size", "engine.step, at size", f"{d.get('edropout_at_size_over_step', nan):.2f}x step"),
        ("t_edropout_defaults", f"engine.step, defaults: {r['auto_on_this_device']}, learner at size",
         f"{d.get('edropout_defaults_over_step', nan):.2f}x step"),
        ("t_edropout_folded", "engine.step, folded, learner at size",
         f"{d.get('edropout_folded_over_step', nan):.2f}x step"),
        ("t_converged", "engine.step after freezing, masked", f"{d.get('converged_over_step', nan):.2f}x step"),
        ("t_converged_at_size", "engine.step after freezing, at size",
         f"{d.get('converged_at_size_over_step', nan):.2f}x step"),
        ("t_score_loop", f"space.logits, S = {S}, loop (masked)", per_state("loop")),
        ("t_score_vmap", f"space.logits, S = {S}, vmap (masked)", per_state("vmap")),
        ("t_score_at_size", f"space.logits, S = {S}, at size", per_state("at_size")),
        ("t_score_folded", f"space.logits, S = {S}, folded (masked)", per_state("folded")),
    ]
    print(f"{'figure':20s} {'what':42s} {'time':>12s}  {'ratio':28s} spread")
    for name, what, ratio in rows:
        if name not in r and name not in r["failed"]:
            continue  # a figure this device does not measure
        print(f"{name:20s} {what:42s} {ms(name)}  {ratio if name in r else '':28s} {spread(name)}")
    for name, why in r["failed"].items():
        print(f"  {name} failed: {why}")
    print(f"energies at size vs masked: max |difference| {r['energy_max_abs_diff']:.2e} "
          f"(energies up to {r['energy_scale']:.2f})" + ("" if r["at_size_supported"] else
                                                          "  <- this model runs masked: at size unsupported"))
    print(f"energies folded vs masked: max |difference| {r['energy_folded_max_abs_diff']:.2e}" +
          ("" if r["folded_supported"] else "  <- this model runs masked: folded unsupported"))
    if "ratio" in d:
        verdict = "meets" if d["ratio_over_bound"] <= GOAL else "misses"
        print(f"\nratio t_edropout / t_step      {d['ratio']:6.2f}x   masked (reference code: {REFERENCE_SLOWDOWN})")
        print(f"bound 1 + S t_forward / t_step {d['bound']:6.2f}x   "
              f"(with a plain forward: {d['bound_plain_forward']:.2f}x)")
        print(f"ratio / bound                  {d['ratio_over_bound']:6.2f}    goal <= {GOAL}: {verdict}")
    if "edropout_at_size_over_step" in d:
        print(f"at size: t_edropout / t_step   {d['edropout_at_size_over_step']:6.2f}x   goal <= 2.0 "
              f"(population at {r['population_kept_fraction']:.0%} of the units; over the faster dense "
              f"layout: {d['edropout_at_size_over_best_step']:.2f}x)")
    if "converged_at_size_over_step" in d:
        print(f"at size: frozen step / t_step  {d['converged_at_size_over_step']:6.2f}x   goal <= 0.5 "
              f"(frozen state at {r['converged_macs_fraction']:.0%} of the MACs; masked: "
              f"{d.get('converged_over_step', nan):.2f}x; over the faster dense layout: "
              f"{d['converged_at_size_over_best_step']:.2f}x)")
    latency = r["latency"]
    reduction = 1 / r["converged_macs_fraction"]
    print(f"\nexported model (frozen state) vs dense, eval forward on {latency['device']}, "
          f"MACs {reduction:.2f}x fewer:")
    for key in sorted((k for k in latency if k.startswith("batch_")), key=lambda k: int(k[6:])):
        t = latency[key]
        print(f"  batch {key[6:]:>4s}: dense {t['dense_ms']:8.2f} ms ({t['dense_layout']})   exported "
              f"{t['pruned_ms']:8.2f} ms ({t['pruned_layout']})   {describe_speedup(t)} = "
              f"{t['speedup'] / reduction:.2f} of the MACs reduction")
    if memory:
        how = "CUDA max_memory_allocated" if torch.cuda.is_available() else "torch.profiler memory events"
        print(f"\npeak memory of one scoring call ({how})")
        for mode in SCORING:
            one, many = memory[f"{mode}_1"], memory[f"{mode}_{S}"]
            if isinstance(one, str) or isinstance(many, str):
                print(f"  {mode:7s} failed: {one if isinstance(one, str) else many}")
                continue
            print(f"  {mode:7s} 1 state {one:8.1f} MiB   {S} states {many:8.1f} MiB   "
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
                   "latency": r["latency"], "energy_max_abs_diff": r["energy_max_abs_diff"],
                   "energy_folded_max_abs_diff": r["energy_folded_max_abs_diff"],
                   "auto_on_this_device": r["auto_on_this_device"],
                   "population_kept_fraction": r["population_kept_fraction"],
                   "converged_macs_fraction": r["converged_macs_fraction"],
                   "loadavg_1min": [r["load_start"], os.getloadavg()[0]]}
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
