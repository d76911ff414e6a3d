"""How long a model's forward takes: median of repeated timings, warm-up excluded, on its device.

Fewer MACs do not always mean less time (small or odd channel counts, memory layout, framework
overhead), so the report times the exported model against the dense one instead of assuming it.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import nn


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def latency_ms(forward, x: torch.Tensor, repeats: int = 5, warmup: int = 1, budget_s: float = 10.0) -> float:
    """Median wall time of `forward(x)` in milliseconds: `warmup` untimed calls, then up to `repeats`
    timed ones (at least 3, fewer than `repeats` once `budget_s` is spent)."""
    with torch.inference_mode():
        for _ in range(warmup):
            forward(x)
        times: list[float] = []
        started = time.perf_counter()
        while len(times) < repeats and (len(times) < 3 or time.perf_counter() - started < budget_s):
            _sync(x.device)
            start = time.perf_counter()
            forward(x)
            _sync(x.device)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def compare_latency(dense: nn.Module, pruned: nn.Module, example: torch.Tensor, batches: list[int],
                    repeats: int = 10) -> dict:
    """Dense and pruned forward times (eval mode, random inputs of `example`'s shape) per batch size.

    Images are timed in both memory layouts and each model is given its faster one (pruned layers'
    odd channel counts often run faster channels-last; the dense model gets the same chance). The
    two models are timed alternately, so background load hits both alike.
    """
    device = next(dense.parameters()).device
    was_training = dense.training
    layouts = [torch.contiguous_format] + ([torch.channels_last] if example.dim() == 4 else [])
    models = {"dense": {}, "pruned": {}}
    for name, model in (("dense", dense), ("pruned", pruned)):
        for layout in layouts:
            models[name][layout] = model.eval() if layout is torch.contiguous_format else \
                copy.deepcopy(model).eval().to(memory_format=layout)
    found = {"device": str(device), "repeats": repeats}
    try:
        for batch in batches:
            x = torch.randn(batch, *example.shape[1:], device=device, dtype=example.dtype)
            times = {name: {layout: [] for layout in layouts} for name in models}
            for _ in range(2):  # two alternating halves of the repeats: neither model always goes first
                for layout in layouts:
                    inputs = x.contiguous(memory_format=layout)
                    for name in models:
                        times[name][layout].append(latency_ms(models[name][layout], inputs, max(1, repeats // 2)))
            row = {}
            for name in models:
                layout = min(layouts, key=lambda each: statistics.mean(times[name][each]))
                row[f"{name}_ms"] = statistics.mean(times[name][layout])
                row[f"{name}_layout"] = "channels_last" if layout is torch.channels_last else "contiguous"
            found[f"batch_{batch}"] = row | {"speedup": row["dense_ms"] / row["pruned_ms"]}
    finally:
        dense.train(was_training)
    return found
