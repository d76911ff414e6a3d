"""Per-unit importance scores for the baseline pruners, in the pruning space's unit order.

- Mean absolute activation (DropNet): measured where the unit's channel is *consumed*, i.e. at the
  inputs of the layers that read it, which is its post-activation value (after ReLU, pooling,
  residual additions). Conv inputs are averaged over samples and positions, linear inputs over
  samples; a conv channel flattened into several linear features is averaged over those
  positions too, so conv and linear units are ranked on the same footing.
- L1 norm of a unit's own weights (the filter or neuron), the classic filter-pruning criterion.
"""

from __future__ import annotations

import torch

from ..pruning.space import PruningSpace


@torch.no_grad()
def mean_abs_activation(space: PruningSpace, state: torch.Tensor, loader, device: torch.device,
                        max_batches: int | None = None) -> torch.Tensor:
    """Tensor[U]: each unit's mean |post-activation| over the data, with `state` applied."""
    model = space.model
    modules = dict(model.named_modules())
    sums = torch.zeros(space.num_units + 1, dtype=torch.float64)
    counts = torch.zeros(space.num_units + 1, dtype=torch.float64)
    hooks = []
    for name, index in space.consumer_indices().items():
        def record(module, inputs, index=index):
            x = inputs[0].detach().abs()
            per_input = x.mean(dim=[d for d in range(x.dim()) if d != 1]) if x.dim() > 2 else x.mean(dim=0)
            sums.index_add_(0, index, per_input.double().cpu())
            counts.index_add_(0, index, torch.ones_like(per_input, dtype=torch.float64).cpu())
        hooks.append(modules[name].register_forward_pre_hook(record))
    was_training = model.training
    model.eval()
    try:
        for i, (x, _) in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            space.masked_forward(state, x.to(device))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    # batches are weighted equally; each consumer slice of a unit counts once
    return (sums[:-1] / counts[:-1].clamp(min=1)).float()


@torch.no_grad()
def weight_l1_norms(space: PruningSpace) -> torch.Tensor:
    """Tensor[U]: L1 norm of each unit's output weights (filter or neuron, with its bias), per element."""
    params = dict(space.model.named_parameters())
    sums = torch.zeros(space.num_units + 1, dtype=torch.float64)
    counts = torch.zeros(space.num_units + 1, dtype=torch.float64)
    for name, index in space.producer_indices().items():
        weight = params[name]
        if weight.dim() < 2:
            continue  # biases and normalization scales are not part of the classic criterion
        per_unit = weight.detach().abs().flatten(1).sum(dim=1).double().cpu()
        sums.index_add_(0, index, per_unit)
        counts.index_add_(0, index, torch.full_like(per_unit, float(weight[0].numel())))
    return (sums[:-1] / counts[:-1].clamp(min=1)).float()


def layer_of_units(space: PruningSpace) -> torch.Tensor:
    """Tensor[U]: the index of each unit's group (its 'layer' for per-layer strategies)."""
    layer = torch.empty(space.num_units, dtype=torch.long)
    for i, group in enumerate(space.groups):
        layer[group.start:group.start + group.size] = i
    return layer
