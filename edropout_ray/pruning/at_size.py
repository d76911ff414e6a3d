"""A state's network at its own size: the dense tensors' kept slices, run by the model's own modules.

The exported network of a state holds, in every layer, the slices of the dense tensors that the
state keeps (output channels of a filter bank, input channels of its consumers, the matching
normalization statistics). Gathering those slices with `index_select` and running the model's
modules on them through `functional_call` computes what the exported network computes, at its
cost, without copying the model: convolutions, linear layers and batch norms take their sizes from
their tensors. A depthwise conv's `groups`, an attention's head count and a LayerNorm's
`normalized_shape` are set to the kept channels for the call. Layers that hold another channel
count of their own (a GroupNorm's groups, a reshape by a fixed width) cannot run this way;
`PruningSpace` finds that out once per model by comparing with the masked network, and falls back
to masking.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable

import torch
from torch import nn
from torch.func import functional_call

from .heads import heads_for, is_headed, qkv_weight_name

# per tensor: kept indices along its out dim and along dim 1 (None: that dim is not cut); where both dims
# are cut, the rows of the kept (out, in) blocks in the tensor with its first two dims flattened; the out
# dim (0, or the last of a token tensor cut along it alone)
KeptIndices = dict[str, tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, int]]


class CompactLayout:
    """Which state bit each slice of each tensor follows, and the gathers and scatters it implies.

    `slices`: (name, out_index, in_index, out_dim) for every cut tensor; an index maps each slice along
    its dim (out_dim, usually 0, or 1) to a state bit, `num_units` meaning a slice no unit controls
    (always kept).
    """

    def __init__(self, slices: Iterable[tuple[str, torch.Tensor | None, torch.Tensor | None, int]]):
        slices = list(slices)
        self.indices = {name: (out_index, in_index) for name, out_index, in_index, _ in slices}
        self.out_dims = {name: out_dim for name, _, _, out_dim in slices}
        # a layer's weight, bias and statistics share one index: each distinct index is read once per state
        distinct: dict[tuple, int] = {}
        self._which = {name: tuple(None if index is None else distinct.setdefault(tuple(index.tolist()), len(distinct))
                                   for index in pair) for name, pair in self.indices.items()}
        self._distinct = [torch.tensor(key, dtype=torch.long) for key in distinct]

    def kept(self, state: torch.Tensor, device: torch.device | str | None = None) -> KeptIndices:
        """Per cut tensor, the positions `state` keeps along each cut dim (sorted, on `device`, by default
        the state's). Found on the CPU and moved in one copy: on a GPU each `nonzero` waits for the device,
        and the dozens of them cost more than the state's whole forward (measured on an H100)."""
        device = state.device if device is None else torch.device(device)
        extended = torch.cat([state.detach().cpu().bool(), torch.ones(1, dtype=torch.bool)])
        kept = [extended[index].nonzero().squeeze(1) for index in self._distinct]
        blocks = {pair: _block_index(kept[pair[0]], kept[pair[1]], len(self._distinct[pair[1]]))
                  for pair in self._which.values() if None not in pair}
        found = kept + list(blocks.values())
        if device.type != "cpu" and found:
            found = list(torch.cat(found).to(device).split([len(k) for k in found]))
        kept, blocks = found[:len(kept)], dict(zip(blocks, found[len(kept):]))
        return {name: (*(None if k is None else kept[k] for k in pair), blocks.get(pair), self.out_dims[name])
                for name, pair in self._which.items()}

    @staticmethod
    def gather(tensor: torch.Tensor, kept: tuple[torch.Tensor | None, ...]) -> torch.Tensor:
        """The kept slices of `tensor` (differentiable: gradients flow back to the dense tensor)."""
        out_kept, in_kept, flat, out_dim = kept
        if flat is not None:  # one pass over the kept (out, in) blocks
            return tensor.flatten(0, 1).index_select(0, flat).view(len(out_kept), len(in_kept), *tensor.shape[2:])
        if out_kept is not None:
            return tensor.index_select(out_dim, out_kept)
        if in_kept is not None:
            return tensor.index_select(1, in_kept)
        return tensor

    @staticmethod
    @torch.no_grad()
    def scatter_(dense: torch.Tensor, compact: torch.Tensor,
                 kept: tuple[torch.Tensor | None, ...]) -> None:
        """Write `compact` into the kept slices of `dense`, in place; the other entries stay as they are."""
        out_kept, in_kept, flat, out_dim = kept
        if flat is not None and dense.is_contiguous():
            dense.view(-1, *dense.shape[2:]).index_copy_(0, flat, compact.reshape(-1, *dense.shape[2:]))
        elif out_kept is not None and in_kept is not None:
            rows = dense.index_select(0, out_kept)
            rows.index_copy_(1, in_kept, compact)
            dense.index_copy_(0, out_kept, rows)
        elif out_kept is not None:
            dense.index_copy_(out_dim, out_kept, compact)
        elif in_kept is not None:
            dense.index_copy_(1, in_kept, compact)
        else:
            dense.copy_(compact)

    def compact_tensors(self, tensors: dict[str, torch.Tensor], kept: KeptIndices) -> dict[str, torch.Tensor]:
        """The cut tensors among `tensors`, at the state's size (the others are not returned)."""
        return {name: self.gather(tensors[name], kept[name]) for name in self.indices if name in tensors}


def _block_index(out_kept: torch.Tensor, in_kept: torch.Tensor, width: int) -> torch.Tensor:
    """Row numbers of the kept (out, in) pairs in a tensor whose first two dims are flattened."""
    return (out_kept.unsqueeze(1) * width + in_kept.unsqueeze(0)).flatten()


def sized_layers(model: nn.Module, layout: CompactLayout) -> dict[str, tuple[nn.Module, Callable]]:
    """Weight name -> (layer, how to size it), for the layers that keep a size of their own that follows
    that tensor: depthwise convs (one group per channel), attention modules (their head count, heads.py)
    and LayerNorms over one cut dim (their `normalized_shape`). How to size it: a context manager taking
    the layer and the tensor's kept length along dim 0."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1 \
                and module.groups == module.in_channels == module.out_channels \
                and f"{name}.weight" in layout.indices:
            found[f"{name}.weight"] = (module, _groups)
        elif is_headed(module) and qkv_weight_name(name, module) in layout.indices:
            found[qkv_weight_name(name, module)] = (module, heads_for)
        elif sized_layer_norm(module) and f"{name}.weight" in layout.indices:
            found[f"{name}.weight"] = (module, _normalized)
    return found


def sized_layer_norm(module: nn.Module) -> bool:
    """A LayerNorm that runs at a state's size once its `normalized_shape` follows its compact weight."""
    return isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1 and module.weight is not None


def run_at_size(model: nn.Module, tensors: dict[str, torch.Tensor], x: torch.Tensor,
                sized: dict[str, tuple[nn.Module, Callable]]) -> torch.Tensor:
    """`model` on `x` with its cut tensors replaced by compact ones (`tensors`).

    Images go in channels-last on the CPU: measured on ResNet-18, convolutions with the odd channel
    counts of a pruned state run 15-30% faster in that layout (docs/performance.md).
    """
    x = preferred_layout(x)
    with contextlib.ExitStack() as stack:
        for weight_name, (layer, sized_for) in sized.items():
            stack.enter_context(sized_for(layer, tensors[weight_name].shape[0]))
        return functional_call(model, tensors, (x,))


def preferred_layout(x: torch.Tensor) -> torch.Tensor:
    """Images in channels-last on the CPU (a no-op when they already are)."""
    if x.dim() == 4 and x.device.type == "cpu":
        return x.contiguous(memory_format=torch.channels_last)
    return x


@contextlib.contextmanager
def _groups(conv: nn.Module, groups: int):
    original = conv.groups
    conv.groups = groups
    try:
        yield
    finally:
        conv.groups = original


@contextlib.contextmanager
def _normalized(norm: nn.LayerNorm, channels: int):
    original = norm.normalized_shape
    norm.normalized_shape = (channels,)
    try:
        yield
    finally:
        norm.normalized_shape = original


def probe_state(group_sizes: list[int], device: torch.device | None = None) -> torch.Tensor:
    """A state that keeps the first half (rounded up) of every group: every group is cut where it can be."""
    bits = []
    for size in group_sizes:
        kept = (size + 1) // 2
        bits += [1.0] * kept + [0.0] * (size - kept)
    return torch.tensor(bits, device=device)
