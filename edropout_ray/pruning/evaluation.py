"""Test-set metrics of a masked network, and the baselines the paper reports beside it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..evolution.population import repair_empty_groups
from .space import PruningSpace


@torch.no_grad()
def evaluate(space: PruningSpace, state: torch.Tensor, loader, device: torch.device) -> dict[str, float]:
    """Loss and top-1/3/5 accuracy (in %) with `state` applied, in eval mode."""
    model = space.model
    was_training = model.training
    model.eval()
    total, loss_sum = 0, 0.0
    correct = {1: 0, 3: 0, 5: 0}
    try:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits = space.masked_forward(state, x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hits = ranked == y.unsqueeze(1)
            for k in correct:
                correct[k] += int(hits[:, :k].any(dim=1).sum())
            total += len(y)
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("cannot evaluate on an empty data set")
    return {"loss": loss_sum / total, **{f"top{k}": 100.0 * c / total for k, c in correct.items()}}


def random_state(space: PruningSpace, prune_fraction: float, generator: torch.Generator) -> torch.Tensor:
    """A state with exactly `prune_fraction` of the units pruned, chosen uniformly (then repaired)."""
    state = torch.ones(space.num_units, dtype=torch.bool)
    pruned = torch.randperm(space.num_units, generator=generator)[: round(prune_fraction * space.num_units)]
    state[pruned] = False
    return repair_empty_groups(state.unsqueeze(0), space.group_sizes, generator)[0]
