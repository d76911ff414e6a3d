"""Reading Torch-Pruning's coupled groups into units and the tensor slices each unit controls.

The pruning space asks one question of every dependency group: which channels of which tensors
(weights, biases, normalization parameters and statistics) go with each unit, and can they be
masked exactly? Anything that cannot (a slice fixed in the model's code, a split of channels,
a stack of channel tensors, ...) comes back with the reason, and those units stay unpruned.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from .channel_norms import CHANNEL_NORMS, ChannelNorm, channel_dim


@dataclass(frozen=True)
class UnitGroup:
    """Coupled units: channel k of every layer in `layers` is one unit (state bit start + k)."""

    root: str
    start: int
    size: int
    layers: tuple[str, ...]
    unit_of_channel: tuple[int, ...] = ()  # the unit of each root channel (empty: channel k is unit k)

    def pruned_channels(self, state: torch.Tensor) -> list[int]:
        """The root's channels that `state` (the whole state) removes."""
        bits = state[self.start:self.start + self.size].bool().tolist()
        unit_of = self.unit_of_channel or range(self.size)
        return [channel for channel, unit in enumerate(unit_of) if not bits[unit]]

    def units_of_channels(self) -> list[int]:
        """The state bit of each of the root's output channels, in Torch-Pruning's root index order."""
        return [self.start + unit for unit in (self.unit_of_channel or range(self.size))]


CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = (nn.modules.batchnorm._BatchNorm,)


def _is_depthwise(conv: nn.Module) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def shared_tensor_names(model: nn.Module) -> set[str]:
    """Names of the parameters and buffers that one tensor holds under two names or more (tied weights)."""
    named = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    holders: dict[int, list[str]] = {}
    for name, tensor in named:
        holders.setdefault(id(tensor), []).append(name)
    return {name for names in holders.values() if len(names) > 1 for name in names}


class GroupReader:
    """Turns Torch-Pruning groups into slice indices, refusing anything it cannot mask exactly."""

    def __init__(self, model: nn.Module, graph: tp.DependencyGraph, norm_inputs: dict[nn.Module, torch.Tensor]):
        self.model = model
        self.graph = graph
        self.names = {module: name for name, module in model.named_modules()}
        self.tensors = dict(model.named_parameters()) | dict(model.named_buffers())
        self.shared = shared_tensor_names(model)
        self.norm_inputs = norm_inputs

    def feeds_output(self, group) -> bool:
        """True if removing these channels would remove model outputs (found by the graph, not by type)."""
        for item in group.items:
            node = item.dep.target
            if not self.graph.is_out_channel_pruning_fn(item.dep.handler):
                continue
            if isinstance(node.module, tp.ops._OutputOp) or not node.outputs:
                return True
        return False

    def units_of_channels(self, group) -> tuple[list[int], str | None]:
        """The unit (0, 1, ...) of each of the root's channels, or a reason the group cannot be pruned.

        A unit is one channel, except where a grouped convolution or a GroupNorm splits the channels
        into G blocks: then channel j of every block is one unit, so each block keeps the same
        channels and the pruned layer keeps its G groups. Root channels that reach the same channel
        of some layer (a concatenation of a tensor with a depthwise conv of itself) are one unit too.
        """
        size = len(group.items[0].idxs)
        parent = list(range(size))

        def find(r: int) -> int:
            while parent[r] != r:
                parent[r] = parent[parent[r]]
                r = parent[r]
            return r

        # Torch-Pruning keeps one item per layer even when a layer is reached twice (GhostNet concatenates
        # x with a depthwise conv of x), so an edge's two ends may carry different root channels for the
        # same channel: they are one unit. Merging root channels is always safe (a coarser unit).
        by_node = {item.dep.target: item for item in group.items}
        for item in group.items:
            source = by_node.get(item.dep.source)
            if source is not None and list(source.idxs) == list(item.idxs):
                for a, b in zip(source.root_idxs, item.root_idxs):
                    parent[find(a)] = find(b)
        reached: dict[tuple, int] = {}  # a layer's channel reached from two root channels makes them one unit
        for item in group.items:
            module = item.dep.target.module
            side = self.channel_side(module, item)
            for idx, root_idx in zip(item.idxs, item.root_idxs):
                parent[find(root_idx)] = find(reached.setdefault((id(module), side, idx), root_idx))
            blocks, channels = _channel_blocks(module, item, self.graph)
            if blocks <= 1:
                continue
            if channels % blocks:
                return [], f"{self.names.get(module)!r} has {channels} channels in {blocks} groups"
            width = channels // blocks
            together: dict[int, list[int]] = {}
            for idx, root_idx in zip(item.idxs, item.root_idxs):
                together.setdefault(idx % width, []).append(root_idx)
            if any(len(members) != blocks for members in together.values()):
                return [], f"only part of the groups of {self.names.get(module)!r} is coupled to these channels"
            for first, *rest in together.values():
                for other in rest:
                    parent[find(other)] = find(first)
        roots = [find(r) for r in range(size)]
        numbering = {root: k for k, root in enumerate(dict.fromkeys(roots))}
        return [numbering[root] for root in roots], None

    def channel_side(self, module, item) -> str:
        """'in' or 'out': which of the layer's channels `item` removes (one space for norms, depthwise convs)."""
        if isinstance(module, CONVS) and not _is_depthwise(module) or isinstance(module, nn.Linear):
            pruner = self.graph.get_pruner_of_module(module)
            return "in" if item.dep.handler == getattr(pruner, "prune_in_channels", None) else "out"
        return "out"

    def slices(self, group, start: int, unit_of: list[int]):
        """Return ([(tensor name, dim, idxs, units, is_buffer)], [ChannelNorm], reason it cannot be masked or None).

        `unit_of[r]` is the unit of root channel r; units are numbered from `start`.
        """
        found, norms = [], []
        for item in group.items:
            module = item.dep.target.module
            if isinstance(module, tp.ops._SliceOp) and not _is_identity_slice(module):
                return [], [], (f"a channel slice x[{module.start}:{module.end}] whose bounds are fixed in the "
                                "model's code, so the pruned model would slice the wrong channels")
            if isinstance(module, tp.ops._ElementWiseOp) and "stack" in str(getattr(module, "_grad_fn", "")).lower():
                return [], [], "a torch.stack of channel tensors, which Torch-Pruning takes for an elementwise op"
            if isinstance(module, (tp.ops._SplitOp, tp.ops._UnbindOp)):
                return [], [], ("a channel split (torch.split, chunk) whose sizes the model's code computed before "
                                "pruning, so the pruned model would split at the wrong channels")
            if isinstance(module, CHANNEL_NORMS):
                name = self.names.get(module)
                dim = channel_dim(module, self.norm_inputs[module]) if module in self.norm_inputs else None
                if dim is None:
                    return [], [], f"normalization {name!r} ({type(module).__name__}) does not normalize over channels"
                units = [start + unit_of[r] for r in item.root_idxs]
                index = torch.full((_norm_channels(module),), -1, dtype=torch.long)
                index[torch.tensor(item.idxs)] = torch.tensor(units)
                norms.append((name, dim, index))
                for tensor_name, _ in module.named_parameters(recurse=False):
                    found.append((f"{name}.{tensor_name}", 0, item.idxs, units, False))
                continue
            if isinstance(module, nn.Parameter):
                # a per-channel scale outside any layer (ConvNeXt's layer scale: channels first), or a token
                # tensor added to or joined with a [batch, tokens, width] stream (a ViT's position embedding
                # and class token: channels last)
                node = self.graph.module2node.get(module)
                param_name = self.graph._param_to_name.get(module)
                dim = getattr(node, "pruning_dim", None)
                if node is None or param_name not in self.tensors or dim not in (0, module.dim() - 1):
                    return [], [], f"it touches a bare nn.Parameter {param_name!r} not indexed by channel first or last"
                found.append((param_name, dim, item.idxs, [start + unit_of[r] for r in item.root_idxs], False))
                continue
            if not isinstance(module, nn.Module) or not has_own_tensors(module):
                continue  # parameter-free ops: activations, pooling, add, cat, reshape
            name = self.names.get(module)
            units = [start + unit_of[r] for r in item.root_idxs]
            pruner = self.graph.get_pruner_of_module(module)
            is_out = item.dep.handler != getattr(pruner, "prune_in_channels", None) or isinstance(module, NORMS)
            if isinstance(module, CONVS):
                if is_out or _is_depthwise(module):  # a depthwise conv's input channel is its output channel
                    found.append((f"{name}.weight", 0, item.idxs, units, False))
                    if module.bias is not None:
                        found.append((f"{name}.bias", 0, item.idxs, units, False))
                else:  # a grouped conv's weight holds one block of inputs: position j stands for j of every block
                    width = module.in_channels // module.groups
                    found.append((f"{name}.weight", 1, [i % width for i in item.idxs], units, False))
            elif isinstance(module, nn.Linear):
                if is_out:
                    found.append((f"{name}.weight", 0, item.idxs, units, False))
                    if module.bias is not None:
                        found.append((f"{name}.bias", 0, item.idxs, units, False))
                else:
                    found.append((f"{name}.weight", 1, item.idxs, units, False))
            elif isinstance(module, NORMS):
                for tensor_name, _ in module.named_parameters(recurse=False):
                    found.append((f"{name}.{tensor_name}", 0, item.idxs, units, False))
                for tensor_name in ("running_mean", "running_var"):
                    if getattr(module, tensor_name, None) is not None:
                        found.append((f"{name}.{tensor_name}", 0, item.idxs, units, True))
            else:
                return [], [], f"layer {name!r} of type {type(module).__name__}"
        for tensor_name, dim, idxs, _, _ in found:
            if tensor_name in self.shared:  # cutting it for one layer would cut it for the other
                return [], [], f"{tensor_name!r} is a tensor another layer shares (tied weights)"
            if idxs and max(idxs) >= self.tensors[tensor_name].shape[dim]:
                return [], [], (f"Torch-Pruning maps channels of {tensor_name!r} out of its range (a channel split "
                                "or concatenation it does not follow)")
        for name, _, index in norms:
            if idxs_missing := int((index < 0).sum()):
                return [], [], f"{idxs_missing} channels of {name!r} belong to no unit of the group"
        return found, [ChannelNorm(name, dim, index) for name, dim, index in norms], None


def _channel_blocks(module, item, graph) -> tuple[int, int]:
    """(G, channels) where `module` splits the channels of `item` into G groups that must stay equal."""
    if isinstance(module, CONVS) and module.groups > 1 and not _is_depthwise(module):
        pruner = graph.get_pruner_of_module(module)
        is_in = item.dep.handler == getattr(pruner, "prune_in_channels", None)
        return module.groups, module.in_channels if is_in else module.out_channels
    if isinstance(module, nn.GroupNorm):
        return module.num_groups, module.num_channels
    return 1, 0


def _norm_channels(module: nn.Module) -> int:
    return module.num_channels if isinstance(module, nn.GroupNorm) else module.normalized_shape[0]


def _is_identity_slice(op) -> bool:
    """A slice that keeps every channel (dim 1 or the last) stays right after pruning; others have stale bounds."""
    sizes = op.grad_fn._saved_self_sym_sizes
    dim = op.dim % len(sizes)
    if dim not in (1, len(sizes) - 1):
        return True
    return op.start in (0, None) and op.step in (1, None) and (op.end is None or op.end >= sizes[dim])


def has_own_tensors(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False)) or any(
        b is not None for _, b in module.named_buffers(recurse=False))
