"""Backprop with a state applied, leaving every pruned unit exactly as it was.

Where the model allows it (`PruningSpace.at_size_supported`) and `train_at_size` is on, the state's
network is trained at its own size (at_size_training.py): its kept slices are gathered when the
state changes and scattered back when the dense weights are needed, so a step costs what the state
keeps, and pruned entries are never touched. Otherwise the forward is masked: that zeroes the pruned
units' gradients, but weight decay and momentum would still move them, so the learner snapshots the
pruned entries (parameters, optimizer state, normalization statistics) and puts them back after the
step. Either way a unit pruned now can return later unchanged, the dropout that turns into pruning.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import torch

# called with the parameters being trained (their .grad filled) and the buffers, between backward and the
# optimizer's step: a data-parallel learner averages the gradients of its workers there (learner_group.py)
BeforeUpdate = Callable[[list[torch.Tensor], list[torch.Tensor]], None]

from .at_size_training import CompactTraining, finite_loss
from .contract import StepResult
from ..config import Config
from ..pruning.space import PruningSpace


def make_optimizer(params, config: Config) -> torch.optim.Optimizer:
    if config.optimizer == "adadelta":
        # rho and eps as in the paper's reference setup
        return torch.optim.Adadelta(params, lr=config.lr, rho=0.9, eps=1e-6, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


class RestartableCosine:
    """The per-step cosine factor, from 1 down to 0 at `total_steps`; `restart(step)` starts a new
    cosine from 1 at that step down to 0 at the same end (the rate rewound when the mask freezes)."""

    def __init__(self, total_steps: int):
        self.total_steps = total_steps
        self.start = 0

    def restart(self, step: int) -> None:
        self.start = min(step, self.total_steps - 1)

    def __call__(self, step: int) -> float:
        span = self.total_steps - self.start
        done = min(max(step - self.start, 0), span)
        return 0.5 * (1 + math.cos(math.pi * done / span))


def make_schedule(optimizer: torch.optim.Optimizer, config: Config,
                  total_steps: int | None = None) -> torch.optim.lr_scheduler.LRScheduler:
    """'cosine' anneals to zero over the run: stepped every step when the run's `total_steps` is known
    (a few epochs then still end at zero, not at a quarter of the rate), else once per epoch; 'step' is
    the paper's StepLR, stepped per epoch."""
    if config.lr_schedule == "cosine" and total_steps:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, RestartableCosine(total_steps))
    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step, gamma=config.lr_gamma)


class Learner:
    """Owns the weights' optimizer and learning-rate schedule for one PruningSpace (a LearnerContract)."""

    def __init__(self, space: PruningSpace, config: Config,
                 after_backward: Callable[[torch.nn.Module], None] | None = None, total_steps: int | None = None,
                 before_update: BeforeUpdate | None = None):
        self.space = space
        self.model = space.model
        self.optimizer = make_optimizer(self.model.parameters(), config)
        self.scheduler = make_schedule(self.optimizer, config, total_steps)
        self.schedule_per_step = isinstance(self.scheduler, torch.optim.lr_scheduler.LambdaLR)
        self._cached_state: torch.Tensor | None = None
        self._cached_masks: dict[str, torch.Tensor] = {}
        # called with the model between backward and the optimizer's step, its parameters' .grad filled
        # (a sparsity regularizer adds to them); it needs the dense model's gradients, so steps are masked
        self.after_backward = after_backward
        self.before_update = before_update
        self.at_size = config.train_at_size and space.at_size_supported and after_backward is None
        self._compact: CompactTraining | None = None  # the state trained at size, while it stays the same

    def _pruned_masks(self, state: torch.Tensor) -> dict[str, torch.Tensor]:
        """name -> True where the entry belongs to a pruned unit (cached: the state rarely changes)."""
        if self._cached_state is None or not torch.equal(self._cached_state, state):
            keep = self.space.keep_masks(state)
            self._cached_masks = {name: ~mask for name, mask in keep.items() if not bool(mask.all())}
            self._cached_state = state.clone()
        return self._cached_masks

    def step(self, state: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        result = self._step(state, x, y)
        if self.schedule_per_step:
            self._advance_schedule()
        return result

    def _step(self, state: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        self.model.train()
        if self.at_size:
            return self._step_at_size(state, x, y)
        pruned = self._pruned_masks(state)
        tensors = dict(self.model.named_parameters()) | dict(self.model.named_buffers())
        # Whole-tensor copies restored with one elementwise select: boolean indexing of the pruned
        # entries (three quarters of ResNet-18 at half the units kept) cost more than a training step.
        saved = {name: tensors[name].detach().clone() for name in pruned}
        saved_optim = self._optimizer_state(tensors, pruned)
        buffers = [(b, b.clone()) for b in self.model.buffers()]  # small: norm statistics

        logits = self.space.masked_forward(state, x)
        loss = finite_loss(logits, y, buffers, self.learning_rate())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.after_backward is not None:
            self.after_backward(self.model)
        if self.before_update is not None:
            self.before_update(list(self.model.parameters()), list(self.model.buffers()))
        self.optimizer.step()
        self._restore(tensors, pruned, saved, saved_optim)
        accuracy = (logits.detach().argmax(dim=1) == y).float().mean().item()
        return StepResult(loss=loss.item(), accuracy=accuracy)

    def _step_at_size(self, state: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        if self._compact is None or not torch.equal(self._compact.state, state.to(self._compact.state.device)):
            self.sync()
            self._compact = CompactTraining(self.space, self.optimizer, state)
        loss, logits = self._compact.step(x, y, self.before_update)
        accuracy = (logits.argmax(dim=1) == y).float().mean().item()
        return StepResult(loss=loss, accuracy=accuracy)

    def sync(self) -> None:
        """Bring the dense model and optimizer up to date with the state trained at size (if any)."""
        if self._compact is not None:
            self._compact.write_back()

    def _optimizer_state(self, tensors, pruned) -> dict[tuple[str, str], torch.Tensor | None]:
        """Copies of per-parameter optimizer state; None where the state does not exist yet."""
        copies = {}
        for name in pruned:
            param = tensors[name]
            if not isinstance(param, torch.nn.Parameter):
                continue
            state = self.optimizer.state.get(param, {})
            for key in ("momentum_buffer", "square_avg", "acc_delta", "exp_avg", "exp_avg_sq"):
                value = state.get(key)
                copies[(name, key)] = None if value is None else value.clone()
        return copies

    @torch.no_grad()
    def _restore(self, tensors, pruned, saved, saved_optim) -> None:
        for name, mask in pruned.items():
            torch.where(mask, saved[name], tensors[name], out=tensors[name])
        for (name, key), old in saved_optim.items():
            value = self.optimizer.state.get(tensors[name], {}).get(key)
            if value is None:
                continue
            if old is None:  # created by this step: pruned entries start from zero, as if never touched
                value.masked_fill_(pruned[name], 0)
            else:
                torch.where(pruned[name], old, value, out=value)

    def end_epoch(self) -> None:
        if not self.schedule_per_step:
            self._advance_schedule()

    def _advance_schedule(self) -> None:
        with warnings.catch_warnings():
            # at size, the compact twin of the optimizer takes the steps: the schedule's check that
            # this one stepped first would warn wrongly
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            self.scheduler.step()

    def restart_schedule(self) -> None:
        """Rewind the learning rate to its start and anneal it again over the steps left (per-step
        cosine only): the frozen network is fine-tuned at a high rate again, not at what is left."""
        if not self.schedule_per_step:
            return
        cosine = self.scheduler.lr_lambdas[0]
        cosine.restart(self.scheduler.last_epoch)
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * cosine(self.scheduler.last_epoch)

    def learning_rate(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def weights(self) -> dict[str, torch.Tensor]:
        """The model's parameters and buffers, on the CPU (what shards and checkpoints need)."""
        self.sync()
        return {name: value.detach().cpu().clone() for name, value in self.model.state_dict().items()}

    def state_dict(self) -> dict:
        """Everything a resumed run needs from the learner: weights, optimizer, schedule (weights()
        first: it writes back what was trained at size, optimizer state included)."""
        return {"model": self.weights(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": torch.get_rng_state()}  # rng: dropout draws

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        self._cached_state = None
        self._compact = None  # gathered again from the loaded weights at the next step
