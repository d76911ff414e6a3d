"""Measurement of a pruned model, and a saved model that loads without this project.

The physical removal itself is `removal.prune_physically`, reached through `PruningSpace.export`.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch_pruning as tp
from torch import nn

EXPORT_FILE = "pruned_model.pt2"


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
