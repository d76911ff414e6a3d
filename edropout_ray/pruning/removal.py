"""Physical removal of pruned units: a smaller copy of a model, cut where a state says.

Removal is Torch-Pruning's: a fresh dependency graph on a copy of the model, and for each group
the pruned channels removed from every coupled layer. It knows groups only by their root layer
and their bits in the state, so the pruning space can use it without anything above it.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch_pruning as tp
from torch import nn

from .heads import heads_called_as_modules, is_headed, remove_heads


def prune_physically(model: nn.Module, groups: Sequence, example_inputs: torch.Tensor,
                     state: torch.Tensor) -> nn.Module:
    """`groups`: the pruning space's, each with `root` (a module name) and `pruned_channels(state)`."""
    model = copy.deepcopy(model)
    was_training = model.training
    model.eval()  # tracing must not update normalization statistics
    with torch.enable_grad(), heads_called_as_modules(model):  # traced through autograd, projections as modules
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=_like_model(example_inputs, model),
                                                      verbose=False)
    modules = dict(model.named_modules())
    state = state.bool().cpu()
    headed = []
    for group in groups:
        pruned = group.pruned_channels(state)
        if not pruned:
            continue
        root = modules[group.root]
        if is_headed(root):  # heads are not a Torch-Pruning group (heads.py); cut after the graph's groups
            headed.append((root, pruned))
            continue
        pruner = graph.get_pruner_of_module(root)
        graph.get_pruning_group(root, pruner.prune_out_channels, pruned).prune()
    for attention, pruned in headed:
        remove_heads(attention, pruned)
    model.train(was_training)
    return model


def _like_model(inputs: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """Inputs on the model's device, and in its precision when they are floating point."""
    some = next(model.parameters())
    dtype = some.dtype if inputs.is_floating_point() else inputs.dtype
    return inputs.to(device=some.device, dtype=dtype)
