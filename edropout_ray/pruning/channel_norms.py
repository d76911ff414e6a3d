"""LayerNorm and GroupNorm over channels under a state: statistics over the kept channels only.

For these layers zeroing a pruned channel is not removing it: the zeros would still enter the mean
and the variance. During masked forwards each such layer computes them over its kept channels,
which is what the physically pruned layer computes. The model's code is not edited: the layer's
`forward` is swapped for the duration of the forward only.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

CHANNEL_NORMS = (nn.LayerNorm, nn.GroupNorm)


@dataclass(frozen=True)
class ChannelNorm:
    """One normalization layer in a unit group: the unit of each of its channels (num_units: none)."""

    name: str
    dim: int  # the channel dimension of its input
    index: torch.Tensor


def normalize(module: nn.Module, x: torch.Tensor, keep: torch.Tensor, dim: int) -> torch.Tensor:
    """`module`'s normalization of `x` with statistics over the channels where `keep` is 1.

    `keep`: [C] for every sample, or [N, C], one row per sample (folded scoring: a state per slice)."""
    x = x.movedim(dim, -1)
    channels = x.shape[-1]
    groups = module.num_groups if isinstance(module, nn.GroupNorm) else 1
    per_sample = keep.dim() == 2
    if isinstance(module, nn.GroupNorm):  # one group: its channels and every position of a sample
        grouped = x.reshape(x.shape[0], -1, groups, channels // groups).movedim(1, -1)  # [N, G, C/G, positions]
        k = keep.to(x.dtype).reshape(*keep.shape[:-1], groups, channels // groups, 1)
        reduce = (-2, -1)
    else:  # LayerNorm over channels: each position on its own
        k = keep.to(x.dtype)
        grouped, k, reduce = x, k.view(k.shape[0], *[1] * (x.dim() - 2), channels) if per_sample else k, (-1,)
    count = (k * torch.ones_like(grouped)).sum(dim=reduce, keepdim=True)
    mean = (grouped * k).sum(dim=reduce, keepdim=True) / count
    var = ((grouped - mean) * k).square().sum(dim=reduce, keepdim=True) / count
    y = (grouped - mean) / torch.sqrt(var + module.eps)
    if isinstance(module, nn.GroupNorm):
        y = y.movedim(-1, 1).reshape(x.shape)
    if module.weight is not None:
        y = y * module.weight
    if module.bias is not None:
        y = y + module.bias
    return y.movedim(-1, dim)


def channel_dim(module: nn.Module, x: torch.Tensor) -> int | None:
    """Which dimension of `x` the layer normalizes as channels (1 or the last), found by trying both.

    Subclasses (timm's LayerNorm2d permutes NCHW itself) are handled without knowing their code;
    None when neither matches (an activation fused into the layer, RMS-style norms, ...).
    """
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) != 1:
        return None
    size = module.num_channels if isinstance(module, nn.GroupNorm) else module.normalized_shape[0]
    with torch.no_grad():
        expected = module(x)
        for dim in (1, x.dim() - 1):
            if x.dim() > dim and x.shape[dim] == size:
                got = normalize(module, x, torch.ones(size, dtype=torch.bool, device=x.device), dim)
                if got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
                    return dim
    return None


def record_inputs(model: nn.Module) -> tuple[dict[nn.Module, torch.Tensor], list]:
    """Hooks that keep the first input of every LayerNorm/GroupNorm (for `channel_dim`)."""
    seen: dict[nn.Module, torch.Tensor] = {}
    hooks = []
    for module in model.modules():
        if isinstance(module, CHANNEL_NORMS):
            def keep_first(mod, inputs):
                seen.setdefault(mod, inputs[0].detach().clone())
            hooks.append(module.register_forward_pre_hook(keep_first))
    return seen, hooks


@contextlib.contextmanager
def kept_channel_statistics(model: nn.Module, norms: list[ChannelNorm], state: torch.Tensor):
    """While active, each norm of `norms` uses statistics over the channels `state` keeps.

    `state` is one state (it may be a vmap-batched tensor); its bits are read inside the forward.
    """
    if not norms:
        yield
        return
    modules = dict(model.named_modules())
    extended = torch.cat([state, torch.ones_like(state[:1])])
    swapped = []
    try:
        for norm in norms:
            module = modules[norm.name]
            keep = extended[norm.index.to(state.device)]
            swapped.append((module, module.__dict__.get("forward")))
            module.forward = lambda x, module=module, keep=keep, dim=norm.dim: normalize(module, x, keep, dim)
        yield
    finally:
        for module, previous in reversed(swapped):
            if previous is None:
                del module.forward
            else:
                module.forward = previous
