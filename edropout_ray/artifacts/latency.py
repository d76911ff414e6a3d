"""How long a model's forward takes, measured so that a busy machine cannot fake a speed-up.

Fewer MACs do not always mean less time (small or odd channel counts, memory layout, framework
overhead), so the report times the exported model against the dense one instead of assuming it.
On a shared machine a load spike during one model's timings once made a report say "97x faster";
so every figure comes from `time_interleaved`: the models take turns within each repeat (a spike
hits both), the median over repeats is reported with its spread, and a speed-up is a gain only
when nearly all paired repeats agree (`paired_speedup`).
"""

from __future__ import annotations

import copy
import gc
import statistics
import time
from typing import Any, Callable

import torch
from torch import nn

MIN_REPEATS = 5  # fewer give no meaningful percentiles
SPEEDUP_PERCENTILES = (10, 90)  # the speed-up's interval over the paired per-repeat ratios
MEASURED_AS = ("warm-up, then the models called in turn within each repeat (order rotating), torch threads fixed, "
               "inference mode; *_ms: median over repeats, *_ms_iqr: interquartile range; speedup: median of "
               "the paired per-repeat dense/pruned ratios, speedup_interval: their 10th-90th percentile; "
               "significant: the interval excludes 1.0")


def time_interleaved(forwards: dict[str, Callable[[], Any]], device: torch.device | str = "cpu", *,
                     repeats: int = 20, warmup: int = 3, threads: int | None = None,
                     budget_s: float = 20.0) -> dict:
    """Wall times in ms of each zero-argument `forwards` callable, called in turn within each repeat.

    `warmup` untimed rounds first. Repeat i calls the callables in their order rotated by i, so
    none always goes first. Timing stops after `repeats` repeats, or earlier once `budget_s` is
    spent but never before `MIN_REPEATS`. torch runs on `threads` threads (default: its current
    number), restored afterwards; garbage collection is paused while timing.
    Returns {"samples_ms": {name: [ms per repeat]}, "repeats": done, "threads": used}.
    """
    if repeats < MIN_REPEATS:
        raise ValueError(f"repeats must be >= {MIN_REPEATS} to give a median and a spread, got {repeats}")
    device = torch.device(device)
    names = list(forwards)
    previous_threads = torch.get_num_threads()
    used_threads = threads or previous_threads
    gc_was_enabled = gc.isenabled()
    samples: dict[str, list[float]] = {name: [] for name in names}
    try:
        torch.set_num_threads(used_threads)
        with torch.inference_mode():
            for _ in range(warmup):
                for name in names:
                    forwards[name]()
            _sync(device)
            gc.disable()
            started = time.perf_counter()
            for repeat in range(repeats):
                if repeat >= MIN_REPEATS and time.perf_counter() - started > budget_s:
                    break
                shift = repeat % len(names)
                for name in names[shift:] + names[:shift]:
                    begin = time.perf_counter()
                    forwards[name]()
                    _sync(device)
                    samples[name].append((time.perf_counter() - begin) * 1000)
    finally:
        if gc_was_enabled:
            gc.enable()
        torch.set_num_threads(previous_threads)
    return {"samples_ms": samples, "repeats": len(samples[names[0]]), "threads": used_threads}


def median_and_iqr(samples_ms: list[float]) -> tuple[float, list[float]]:
    """The median and the interquartile range [25th, 75th percentile] of one callable's times."""
    quartiles = statistics.quantiles(samples_ms, n=4, method="inclusive")
    return statistics.median(samples_ms), [quartiles[0], quartiles[2]]


def paired_speedup(dense_ms: list[float], pruned_ms: list[float]) -> dict:
    """dense/pruned per repeat (the two were timed back to back, under the same load): the median ratio
    and its 10th-90th percentile interval. `significant` only if the interval excludes 1.0, i.e. at
    least nine in ten repeats agree on which model is faster."""
    ratios = [dense / pruned for dense, pruned in zip(dense_ms, pruned_ms, strict=True)]
    percentiles = statistics.quantiles(ratios, n=100, method="inclusive")
    low, high = (percentiles[p - 1] for p in SPEEDUP_PERCENTILES)
    return {"speedup": statistics.median(ratios), "speedup_interval": [low, high],
            "significant": not low <= 1.0 <= high}


def compare_latency(dense: nn.Module, pruned: nn.Module, example: torch.Tensor, batches: list[int],
                    repeats: int = 20, threads: int | None = None, budget_s: float = 20.0) -> dict:
    """Dense and pruned forward times (eval mode, random inputs of `example`'s shape) per batch size.

    Images are timed in both memory layouts and each model is given its faster one (pruned layers'
    odd channel counts often run faster channels-last; the dense model gets the same chance); all
    layouts of both models take turns in one `time_interleaved`, so the chosen pair is paired per repeat.
    """
    device = next(dense.parameters()).device
    modes = (dense.training, pruned.training)
    layouts = {"contiguous": torch.contiguous_format}
    if example.dim() == 4:
        layouts["channels_last"] = torch.channels_last
    models = {(name, layout): model.eval() if layout == "contiguous" else
              copy.deepcopy(model).eval().to(memory_format=layouts[layout])
              for name, model in (("dense", dense), ("pruned", pruned)) for layout in layouts}
    found: dict = {"device": str(device), "repeats": repeats, "measured_as": MEASURED_AS}
    try:
        for batch in batches:
            x = torch.randn(batch, *example.shape[1:], device=device, dtype=example.dtype)
            inputs = {layout: x.contiguous(memory_format=form) for layout, form in layouts.items()}
            timed = time_interleaved(
                {key: (lambda model=model, x=inputs[key[1]]: model(x)) for key, model in models.items()},
                device, repeats=repeats, threads=threads, budget_s=budget_s)
            samples = timed["samples_ms"]
            row: dict = {"batch": batch, "repeats": timed["repeats"], "threads": timed["threads"]}
            for name in ("dense", "pruned"):
                layout = min(layouts, key=lambda each: statistics.median(samples[(name, each)]))
                row[f"{name}_ms"], row[f"{name}_ms_iqr"] = median_and_iqr(samples[(name, layout)])
                row[f"{name}_layout"] = layout
            row |= paired_speedup(samples[("dense", row["dense_layout"])], samples[("pruned", row["pruned_layout"])])
            found[f"batch_{batch}"] = row
            found["threads"] = timed["threads"]
    finally:
        dense.train(modes[0])
        pruned.train(modes[1])
    return found


def describe_speedup(row: dict) -> str:
    """The console's words for one batch's speed-up: a gain only when the interval excludes 1.0."""
    low, high = row["speedup_interval"]
    interval = f"{low:.2f}x-{high:.2f}x over paired repeats"
    if not row["significant"]:
        return f"no measurable speed-up: {row['speedup']:.2f}x, {interval} covers 1"
    if low > 1.0:
        return f"{row['speedup']:.2f}x faster, {interval}"
    return f"measurably slower: {row['speedup']:.2f}x, {interval}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
