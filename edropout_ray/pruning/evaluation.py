"""Test-set metrics of a pruned network (run at its own size, or masked), and the baselines the paper
reports beside it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..evolution.population import repair_empty_groups
from .at_size import run_at_size
from .space import PruningSpace


@dataclass
class EvaluationSums:
    """Sums over the samples seen so far; batches scored apart (on several workers) add up."""
    total: int = 0
    loss_sum: float = 0.0
    correct: dict[int, int] = field(default_factory=lambda: {1: 0, 3: 0, 5: 0})

    def __add__(self, other: "EvaluationSums") -> "EvaluationSums":
        return EvaluationSums(self.total + other.total, self.loss_sum + other.loss_sum,
                              {k: self.correct[k] + other.correct[k] for k in self.correct})

    def metrics(self) -> dict[str, float]:
        """Loss and top-1/3/5 accuracy (in %)."""
        if self.total == 0:
            raise ValueError("cannot evaluate on an empty data set")
        return {"loss": self.loss_sum / self.total,
                **{f"top{k}": 100.0 * c / self.total for k, c in self.correct.items()}}


@torch.no_grad()
def evaluation_sums(space: PruningSpace, state: torch.Tensor, batches, device: torch.device) -> EvaluationSums:
    """`batches`' sums with `state` applied, in eval mode (the model's mode restored after)."""
    model = space.model
    was_training = model.training
    model.eval()
    sums = EvaluationSums()
    forward = _forward(space, state)
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            logits = forward(x)
            sums.loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hits = ranked == y.unsqueeze(1)
            for k in sums.correct:
                sums.correct[k] += int(hits[:, :k].any(dim=1).sum())
            sums.total += len(y)
    finally:
        model.train(was_training)
    return sums


def _forward(space: PruningSpace, state: torch.Tensor):
    """The state's network at its own size where the space runs states at size (what its exported model
    computes, at the exported model's cost; the tensors cut once for every batch), else masked."""
    if bool(state.all()) or not space.at_size_supported or space.emptied_groups(state):
        return lambda x: space.masked_forward(state, x)
    tensors = space.compact_tensors(state)
    return lambda x: run_at_size(space.model, tensors, x, space.sized_layers)


def evaluate(space: PruningSpace, state: torch.Tensor, loader, device: torch.device) -> dict[str, float]:
    """Loss and top-1/3/5 accuracy (in %) with `state` applied, in eval mode."""
    return evaluation_sums(space, state, loader, device).metrics()


def random_state(space: PruningSpace, prune_fraction: float, generator: torch.Generator) -> torch.Tensor:
    """A state with exactly `prune_fraction` of the units pruned, chosen uniformly (then repaired)."""
    state = torch.ones(space.num_units, dtype=torch.bool)
    pruned = torch.randperm(space.num_units, generator=generator)[: round(prune_fraction * space.num_units)]
    state[pruned] = False
    return repair_empty_groups(state.unsqueeze(0), space.group_sizes, generator)[0]
