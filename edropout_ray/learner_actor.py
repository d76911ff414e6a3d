"""The central learner as a Ray actor, and the proxy the engine talks to.

The proxy has the local `Learner`'s interface (step, end_epoch, lr, weights, state_dict), so the
engine does not know which runtime it drives. After every `sync_every` steps it publishes the
new weights to the shards through the object store, without a trip through the driver.
"""

from __future__ import annotations

import numpy as np
import ray
import torch

from .config import Config
from .learner import Learner, StepResult
from .models import ModelRecipe
from .shard import ShardPool
from .space import PruningSpace


class LearnerWorker:
    def __init__(self, recipe: ModelRecipe, example_inputs: torch.Tensor, config: Config,
                 initial_weights: dict[str, torch.Tensor], device: str = "cpu"):
        self.device = torch.device(device)
        model = recipe.build().to(self.device)
        model.load_state_dict(initial_weights)
        self.learner = Learner(PruningSpace(model, example_inputs.to(self.device), scoring=config.scoring), config)

    def step(self, state: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        return self.learner.step(state.to(self.device), x.to(self.device), y.to(self.device))

    def end_epoch(self) -> None:
        self.learner.end_epoch()

    def lr(self) -> float:
        return self.learner.lr

    def weights(self) -> dict[str, torch.Tensor]:
        return self.learner.weights()

    def weights_for_broadcast(self) -> dict[str, np.ndarray]:
        """NumPy views of the weights: Ray copies them into the object store once, without pickling
        (tensors would be pickled). Safe without a clone: the return value is stored before this
        single-threaded actor runs its next step."""
        return {name: value.detach().cpu().numpy() for name, value in self.learner.model.state_dict().items()}

    def state_dict(self) -> dict:
        return self.learner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.learner.load_state_dict(state)


class RemoteLearner:
    """Drives a LearnerWorker actor; publishes its weights to `pool` every `sync_every` steps."""

    def __init__(self, actor, pool: ShardPool, sync_every: int):
        self.actor, self.pool, self.sync_every = actor, pool, sync_every
        self.steps = 0
        self.publish()

    def publish(self) -> None:
        """The weights after the learner's last submitted step (actor calls run in order)."""
        self.pool.publish(self.actor.weights_for_broadcast.remote())

    def publish_if_due(self) -> None:
        if self.steps % self.sync_every == 0:
            self.publish()

    def step_async(self, state: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> "ray.ObjectRef":
        """Start a step without publishing its weights: the caller decides when shards get them."""
        self.steps += 1
        return self.actor.step.remote(state.cpu(), x.cpu(), y.cpu())

    def step(self, state: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        future = self.step_async(state, x, y)
        self.publish_if_due()
        return ray.get(future)

    def end_epoch(self) -> None:
        ray.get(self.actor.end_epoch.remote())

    @property
    def lr(self) -> float:
        return ray.get(self.actor.lr.remote())

    def weights(self) -> dict[str, torch.Tensor]:
        return ray.get(self.actor.weights.remote())

    def state_dict(self) -> dict:
        return ray.get(self.actor.state_dict.remote())

    def load_state_dict(self, state: dict) -> None:
        ray.get(self.actor.load_state_dict.remote(state))
        self.publish()

    def close(self) -> None:
        ray.kill(self.actor)
