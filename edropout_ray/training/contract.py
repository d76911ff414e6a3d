"""What the engine needs of a learner, whichever runtime holds it.

Three classes satisfy `LearnerContract`: the local `Learner`, the `LearnerWorker` that runs one on a
Ray actor, and the `RemoteLearner` proxy that drives that actor from the coordinator. The engine and
the loop call only these methods, so a runtime is chosen by which learner is passed in, never by a
check of its type (tests/unit/test_contract.py holds all three to the same signatures).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass
class StepResult:
    """What one backprop step reports: the batch's loss and top-1 accuracy (a fraction)."""
    loss: float
    accuracy: float


@runtime_checkable
class LearnerContract(Protocol):
    def step(self, state: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        """One optimizer step on (x, y) with `state` applied; pruned units stay as they were."""

    def end_epoch(self) -> None:
        """Advance a per-epoch learning-rate schedule (a no-op for a per-step one)."""

    def restart_schedule(self) -> None:
        """Rewind the learning rate to its start (the mask has just frozen)."""

    def learning_rate(self) -> float:
        """The rate the next step will use."""

    def sync(self) -> None:
        """Bring the dense weights up to date with what was trained at a state's size."""

    def weights(self) -> dict[str, torch.Tensor]:
        """The model's parameters and buffers, on the CPU."""

    def state_dict(self) -> dict:
        """Weights, optimizer, schedule and random state: what a resumed run needs. No side effects."""

    def load_state_dict(self, state: dict) -> None:
        """Continue from a `state_dict()`."""
