"""Physical removal of pruned units, measurement, and a saved model that loads without this project.

Removal is Torch-Pruning's: a fresh dependency graph on a copy of the model, and for each group
the pruned channels removed from every coupled layer.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch_pruning as tp
from torch import nn

if TYPE_CHECKING:
    from .space import PruningSpace

EXPORT_FILE = "pruned_model.pt2"


def prune_physically(space: "PruningSpace", state: torch.Tensor) -> nn.Module:
    model = copy.deepcopy(space.model)
    was_training = model.training
    model.eval()  # tracing must not update normalization statistics
    with torch.enable_grad():  # the graph is traced through autograd
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=_like_model(space.example_inputs, model),
                                                      verbose=False)
    modules = dict(model.named_modules())
    state = state.bool().cpu()
    for group in space.groups:
        pruned = group.pruned_channels(state)
        if not pruned:
            continue
        root = modules[group.root]
        pruner = graph.get_pruner_of_module(root)
        graph.get_pruning_group(root, pruner.prune_out_channels, pruned).prune()
    model.train(was_training)
    return model


def _like_model(inputs: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """Inputs on the model's device, and in its precision when they are floating point."""
    some = next(model.parameters())
    dtype = some.dtype if inputs.is_floating_point() else inputs.dtype
    return inputs.to(device=some.device, dtype=dtype)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_macs(model: nn.Module, example_inputs: torch.Tensor) -> int:
    """Multiply-accumulates of one sample's forward pass."""
    macs, _ = tp.utils.count_ops_and_params(model, example_inputs[:1])
    return int(macs)


def save_exported(model: nn.Module, example_inputs: torch.Tensor, folder: Path) -> Path:
    """Save with `torch.export` so `torch.export.load(path).module()` runs it without this package.

    The model is exported in eval mode (running statistics, no dropout), for inference; the batch
    dimension is dynamic.
    """
    model = copy.deepcopy(model).eval()
    inputs = example_inputs[:2].detach().clone()
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(model, (inputs,), dynamic_shapes=({0: batch},))
    path = Path(folder) / EXPORT_FILE
    torch.export.save(program, str(path))
    return path


def load_exported(path: str | Path) -> nn.Module:
    """What a user without this package does: plain torch."""
    return torch.export.load(str(path)).module()
