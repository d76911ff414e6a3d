"""Training one state's network at its own size, with the dense model's weights and optimizer state.

The learner trains the state it is given; a masked step pays for the dense network. Here the
state's kept slices of every parameter, normalization statistic and per-entry optimizer state
(momentum, Adam's moments, ...) are gathered once into compact tensors, which the model's own
modules then train (`functional_call`), at the cost of the network the state describes.
`write_back` scatters them into the dense tensors. Pruned entries are never gathered, so they stay
exactly as they were: the learner's invariant holds by construction, not by restoring.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..pruning.at_size import run_at_size
from ..errors import NonFiniteLossError
from ..pruning.space import PruningSpace


class CompactTraining:
    """`state`'s network at its size, trained with a twin of `optimizer` (same class and settings)."""

    def __init__(self, space: PruningSpace, optimizer: torch.optim.Optimizer, state: torch.Tensor):
        self.space, self.dense_optimizer = space, optimizer
        self.state = state.clone()
        model = space.model
        device = next(model.parameters()).device
        self.kept = space.layout.kept(state, device)
        layout = space.layout
        self.dense_params = dict(model.named_parameters())
        self.dense_buffers = {name: b for name, b in model.named_buffers() if name in layout.indices}
        # buffers no unit cuts (BatchNorm's num_batches_tracked): trained in place, in the dense model
        self.uncut_buffers = {name: b for name, b in model.named_buffers() if name not in layout.indices}
        with torch.no_grad():
            self.params = {name: self._gather(name, p).clone().requires_grad_(p.requires_grad)
                           for name, p in self.dense_params.items()}
            self.buffers = {name: self._gather(name, b).clone() for name, b in self.dense_buffers.items()}
        name_of = {id(p): name for name, p in self.dense_params.items()}
        # (name, dense parameter, compact parameter) for every parameter the optimizer steps
        self.pairs = [(name_of[id(p)], p, self.params[name_of[id(p)]])
                      for group in optimizer.param_groups for p in group["params"]]
        self.optimizer = type(optimizer)([
            {**{k: v for k, v in group.items() if k != "params"},
             "params": [self.params[name_of[id(p)]] for p in group["params"]]}
            for group in optimizer.param_groups])
        self._gather_optimizer_state()
        self.dirty = False  # trained since the last write_back

    def _gather(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        return self.space.layout.gather(tensor, self.kept[name]) if name in self.kept else tensor

    @torch.no_grad()
    def _gather_optimizer_state(self) -> None:
        for name, dense, compact in self.pairs:
            state = self.dense_optimizer.state.get(dense)
            if not state:
                continue
            self.optimizer.state[compact] = {
                key: (self._gather(name, value).clone() if _per_entry(value, dense)
                      else value.clone() if torch.is_tensor(value) else value)
                for key, value in state.items()}

    def step(self, x: torch.Tensor, y: torch.Tensor, before_update=None) -> tuple[float, torch.Tensor]:
        """One step on (x, y); the loss and the logits. Raises NonFiniteLossError, leaving everything as it was.
        `before_update(parameters, buffers)` runs between backward and the update (the learner's hook)."""
        for compact_group, dense_group in zip(self.optimizer.param_groups, self.dense_optimizer.param_groups):
            compact_group["lr"] = dense_group["lr"]  # the schedule steps the dense optimizer
        touched = list((self.buffers | self.uncut_buffers).values())  # statistics the forward updates
        saved = [b.clone() for b in touched]
        logits = run_at_size(self.space.model, self.params | self.buffers, x, self.space.sized_layers)
        loss = finite_loss(logits, y, zip(touched, saved), self.dense_optimizer.param_groups[0]["lr"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if before_update is not None:
            before_update(list(self.params.values()), touched)
        self.optimizer.step()
        self.dirty = True
        return loss.item(), logits.detach()

    @torch.no_grad()
    def write_back(self) -> None:
        """Scatter the compact weights, statistics and optimizer state into the dense ones."""
        if not self.dirty:
            return
        self.dirty = False
        for name, dense in self.dense_params.items():
            self._scatter(name, dense, self.params[name])
        for name, dense in self.dense_buffers.items():
            self._scatter(name, dense, self.buffers[name])
        for name, dense, compact in self.pairs:
            state = self.optimizer.state.get(compact)
            if not state:
                continue
            dense_state = self.dense_optimizer.state.setdefault(dense, {})
            for key, value in state.items():
                if _per_entry(value, compact):
                    if key not in dense_state:  # created at size: pruned entries start from zero
                        dense_state[key] = torch.zeros_like(dense)
                    self._scatter(name, dense_state[key], value)
                else:
                    dense_state[key] = value.clone() if torch.is_tensor(value) else value

    def _scatter(self, name: str, dense: torch.Tensor, compact: torch.Tensor) -> None:
        if name in self.kept:
            self.space.layout.scatter_(dense, compact, self.kept[name])
        else:
            dense.copy_(compact)


def finite_loss(logits: torch.Tensor, y: torch.Tensor, saved_statistics, lr: float) -> torch.Tensor:
    """The step's cross-entropy; when it is NaN or infinite, put back each (statistic, saved copy),
    so that a bad batch poisons no running statistics, and raise a clear error."""
    loss = F.cross_entropy(logits, y)
    if not math.isfinite(loss.item()):
        with torch.no_grad():
            for statistic, copy in saved_statistics:
                statistic.copy_(copy)
        raise NonFiniteLossError(f"the training loss became {loss.item()}; lower lr (now {lr}) "
                                 "or check the input data for NaN values")
    return loss


def _per_entry(value, param: torch.Tensor) -> bool:
    """Optimizer state with one entry per parameter entry (momentum, moments), not a scalar like `step`."""
    return torch.is_tensor(value) and value.shape == param.shape and value.dim() > 0
