"""Folded scoring: the forwards of S states as one forward of S x B samples through the dense weights.

Masking the weights per state (vmap) gives every convolution a batch of weights, which GPUs run as
grouped convolutions. Here the weights stay shared and each state's pruned units are zeroed in the
activations of its own slice of the folded batch (state s owns samples s*B .. s*B + B - 1), at the
two places where the masked forward zeroes weights:

- a producer's output channels (a conv's or linear's filters and bias, a normalization's affine
  weight and bias): a zeroed filter and bias give a zero channel, so the output channel is
  multiplied by the state's mask;
- a consumer's input channels (the input slices of the layers that read a unit): zeroed input
  weights ignore the channel whatever its value (an activation with f(0) != 0 in between), so the
  input channel is multiplied by the mask.

Layers that pool over the batch see each state alone: a batch norm that uses batch statistics
computes them per state, over that state's B samples (what the masked forward of the state
computes; a subclass of its own, such as timm's BatchNormAct2d, runs its forward once per state
by vmap), and a LayerNorm/GroupNorm over channels takes its statistics over each sample's kept
channels, as in `channel_norms`. Everything else in a forward treats samples independently.

The model is run as it is, with hooks and swapped `forward`s held only for the call. A model whose
own code mixes samples or moves the batch away from dim 0 cannot be folded; `PruningSpace` checks
once per model against the masked forward and scores such a model masked.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import vmap

from .channel_norms import CHANNEL_NORMS, ChannelNorm, normalize
from .groups import CONVS, NORMS
from .heads import heads_called_as_modules


@dataclass(frozen=True)
class ActivationMask:
    """Where one layer's channels are masked: the unit of each channel (num_units: none) and their dim."""

    layer: str
    index: torch.Tensor
    dim: int  # 1 for convolutions and batch norms, -1 for linear layers, the channel dim of a channel norm


def producer_masks(model: nn.Module, producer_indices: dict[str, torch.Tensor],
                   norms: list[ChannelNorm]) -> list[ActivationMask]:
    """The layers whose output channels a state zeroes, from the parameters whose output slices it masks.

    A bare per-channel parameter (a layer scale) multiplies a channel that its producer already zeroed,
    so it needs no mask of its own; the check against the masked forward would catch one that does.
    """
    modules = dict(model.named_modules())
    norm_dims = {norm.name: norm.dim for norm in norms}
    found: dict[str, ActivationMask] = {}
    for name, index in producer_indices.items():
        layer = name.rpartition(".")[0]
        module = modules.get(layer)
        if isinstance(module, CONVS + NORMS):
            dim = 1
        elif isinstance(module, nn.Linear):
            dim = -1
        elif isinstance(module, CHANNEL_NORMS) and layer in norm_dims:
            dim = norm_dims[layer]
        else:
            continue
        found.setdefault(layer, ActivationMask(layer, index, dim))
    return list(found.values())


def consumer_masks(model: nn.Module, consumer_indices: dict[str, torch.Tensor]) -> list[ActivationMask]:
    """The layers whose input channels a state zeroes (the input slices of their weights)."""
    modules = dict(model.named_modules())
    return [ActivationMask(layer, index, -1 if isinstance(modules[layer], nn.Linear) else 1)
            for layer, index in consumer_indices.items()]


def _per_state(x: torch.Tensor, masks: torch.Tensor, dim: int) -> torch.Tensor:
    """`x` (S*B samples) times each state's channel mask `masks` [S, C] along `dim` of a sample."""
    states = masks.shape[0]
    folded = x.view(states, x.shape[0] // states, *x.shape[1:])
    shape = [states] + [1] * (x.dim() - 1) + [1]
    shape[dim + 1 if dim >= 0 else dim] = masks.shape[1]
    return (folded * masks.to(x.dtype).view(shape)).reshape(x.shape)


def per_state_batch_norm(module: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, states: int) -> torch.Tensor:
    """Batch norm with batch statistics per state: each state's B samples on their own.

    Statistics in float32 at least (an autocast forward brings half-precision activations)."""
    folded = x.view(states, x.shape[0] // states, *x.shape[1:])
    wide = folded if folded.dtype in (torch.float32, torch.float64) else folded.float()
    dims = (1, *range(3, folded.dim()))
    var, mean = torch.var_mean(wide, dim=dims, correction=0, keepdim=True)
    shape = [1, 1, -1] + [1] * (folded.dim() - 3)
    scale = torch.rsqrt(var + module.eps)
    if module.weight is not None:
        scale = scale * module.weight.view(shape)
    shift = -mean * scale
    if module.bias is not None:
        shift = shift + module.bias.view(shape)
    return (wide * scale + shift).to(x.dtype).reshape(x.shape)


def per_state_forward(forward, x: torch.Tensor, states: int) -> torch.Tensor:
    """A batch norm subclass's own forward (timm's BatchNormAct2d adds an activation) once per state, by vmap
    over the states: under vmap, batch norm takes its statistics per vmapped slice."""
    return vmap(forward, randomness="same")(x.view(states, x.shape[0] // states, *x.shape[1:])).reshape(x.shape)


def _uses_batch_statistics(module: nn.modules.batchnorm._BatchNorm) -> bool:
    return module.training or module.running_mean is None


PLAIN_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)  # their forward is batch_norm alone


@contextlib.contextmanager
def folded_states(model: nn.Module, states: torch.Tensor, producers: list[ActivationMask],
                  consumers: list[ActivationMask], norms: list[ChannelNorm]):
    """While active, a forward of `model` on S*B samples (state-major) is each of `states` [S, U] on its B."""
    count = states.shape[0]
    extended = torch.cat([states, torch.ones_like(states[:, :1])], dim=1)
    modules = dict(model.named_modules())
    handles, swapped = [], []

    def masks_of(entry: ActivationMask) -> torch.Tensor:
        return extended[:, entry.index.to(states.device)]

    try:
        for entry in consumers:
            masks = masks_of(entry)
            handles.append(modules[entry.layer].register_forward_pre_hook(
                lambda _, inputs, masks=masks, dim=entry.dim: (_per_state(inputs[0], masks, dim), *inputs[1:])))
        for entry in producers:
            masks = masks_of(entry)
            handles.append(modules[entry.layer].register_forward_hook(
                lambda _, __, output, masks=masks, dim=entry.dim: _per_state(output, masks, dim)))
        for norm in norms:
            module, keep = modules[norm.name], masks_of(norm)
            swapped.append((module, module.__dict__.get("forward")))
            module.forward = lambda x, module=module, keep=keep, dim=norm.dim: normalize(
                module, x, keep.repeat_interleave(x.shape[0] // count, dim=0), dim)
        for module in model.modules():
            if isinstance(module, NORMS) and _uses_batch_statistics(module):
                swapped.append((module, module.__dict__.get("forward")))
                if type(module) in PLAIN_BATCH_NORMS:
                    module.forward = lambda x, module=module: per_state_batch_norm(module, x, count)
                else:
                    module.forward = lambda x, forward=module.forward: per_state_forward(forward, x, count)
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module, previous in reversed(swapped):
            if previous is None:
                del module.forward
            else:
                module.forward = previous


def folded_logits(model: nn.Module, states: torch.Tensor, x: torch.Tensor, producers: list[ActivationMask],
                  consumers: list[ActivationMask], norms: list[ChannelNorm]) -> torch.Tensor:
    """Logits [S, B, K] of every state of `states` [S, U] on `x` [B, ...], in one forward of S*B samples."""
    count, batch = states.shape[0], x.shape[0]
    folded = torch.cat([x] * count)  # keeps x's memory format (channels-last stays channels-last)
    with folded_states(model, states.to(device=x.device, dtype=x.dtype if x.is_floating_point() else torch.float32),
                       producers, consumers, norms), heads_called_as_modules(model):
        out = model(folded)
    return out.view(count, batch, *out.shape[1:])
