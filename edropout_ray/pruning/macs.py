"""Multiply-accumulates per weight entry: how a budget in MACs is counted without exporting a state.

A kept entry of a convolution's or a linear layer's weight costs one multiply-accumulate per output
position it is applied at (the pixels of a convolution's output, the tokens a linear layer maps),
per sample. Those positions do not depend on which channels are kept, so they are measured once,
with one forward of the example input, and the MACs a state keeps are then a weighted version of
the parameters it keeps (`PruningSpace.kept_cost_of`). Counted are the weights of convolutions, linear layers and
attention's projections (nn.MultiheadAttention applies its `in_proj_weight` and `out_proj` without
calling a linear module); normalizations, biases, activations, pooling and attention's products of
activations are not. Torch-Pruning's counter also counts normalizations and biases (a few per cent
more on a network with many narrow layers, docs/quality.md).
"""

from __future__ import annotations

import torch
from torch import nn

from .modes import eval_mode

COUNTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def positions_per_weight(model: nn.Module, example_inputs: torch.Tensor) -> dict[str, float]:
    """Name of each counted layer's weight -> the output positions (per sample) it is applied at."""
    positions: dict[str, float] = {}
    names = {module: name for name, module in model.named_modules()}

    samples = example_inputs.shape[0]

    def add(name: str, count: float) -> None:  # a layer called more than once (shared) counts every call
        positions[name] = positions.get(name, 0.0) + count

    def record(module, _inputs, output):
        channels = module.out_channels if isinstance(module, nn.modules.conv._ConvNd) else module.out_features
        add(_weight(names[module], "weight"), output.numel() / (samples * channels))

    def record_attention(module, _inputs, output):
        tokens = output[0].numel() / (samples * module.embed_dim)  # the queries; keys and values alike here
        for weight in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight", "out_proj.weight"):
            add(_weight(names[module], weight), tokens)

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, COUNTED)]
    hooks += [m.register_forward_hook(record_attention) for m in model.modules()
              if isinstance(m, nn.MultiheadAttention)]
    try:
        device = next(model.parameters()).device
        with eval_mode(model), torch.no_grad():
            model(example_inputs.to(device))
    finally:
        for hook in hooks:
            hook.remove()
    return positions


def _weight(module_name: str, weight: str) -> str:
    return f"{module_name}.{weight}" if module_name else weight
