"""One EDropout training step: evolve, score, select, then backprop with the best state.

`EDropoutEngine.step` is the step's sequence, written once. A runtime changes how a part is done,
never the order: the scorer is pluggable (`(states, x, y) -> energies`: the pruning space's own
scoring in one process, shard actors on Ray), and `_learn` may hand back a `PendingStep` whose
result arrives later (the coordinator's overlap), which the engine collects before it is needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Callable, Protocol

import torch

from ..config import Config
from ..errors import CheckpointError
from .contract import LearnerContract, StepResult
from .learner import Learner
from ..evolution.population import (Population, diversity, kept_per_group, reference_operator,
                                    repair_empty_groups, round_kept_counts, set_kept_counts)
from ..pruning.evaluation import evaluate
from ..pruning.sizing import counts_for_size, fit_states_to_size, scaled_counts
from ..pruning.space import PruningSpace

Scorer = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # energies on the CPU


@dataclass
class StepRecord:
    step: int
    epoch: int
    best_energy: float
    mean_energy: float
    kept_fraction: float
    accepted: int
    loss: float
    accuracy: float
    frozen: bool
    diversity: float  # mean Hamming distance between members, fraction of units (after selection)


class PendingStep(Protocol):
    """A learner step still running elsewhere; `result()` waits for it."""

    def result(self) -> StepResult: ...


@dataclass
class EngineState:
    """Everything a checkpoint keeps of the engine: the population, the generator, the convergence
    bookkeeping and the learner's own state. Written as a plain dict (checkpoints are read with
    `torch.load(weights_only=True)`), read back by field name so a missing key is named."""
    states: torch.Tensor
    energies: torch.Tensor
    generator: torch.Tensor
    step_count: int
    previous_best: torch.Tensor | None
    best_unchanged: int
    final_mask: torch.Tensor | None
    freeze_reason: str | None
    learner: dict

    def to_dict(self) -> dict:
        return {field.name: getattr(self, field.name) for field in fields(self)}

    @classmethod
    def from_dict(cls, saved: dict) -> "EngineState":
        missing = [field.name for field in fields(cls) if field.name not in saved]
        if missing:
            raise CheckpointError(f"the checkpoint's engine state lacks {', '.join(missing)}: it was written by "
                                  "another version or is damaged; start the run again without --resume")
        return cls(**{field.name: saved[field.name] for field in fields(cls)})


class EDropoutEngine:
    """Holds the population, the learner and the pruning schedule of one run."""

    def __init__(self, space: PruningSpace, config: Config, scorer: Scorer | None = None,
                 learner: LearnerContract | None = None, total_steps: int | None = None):
        self.space = space
        self.config = config
        self.generator = torch.Generator().manual_seed(config.seed)
        self.population = Population.initial(config.population_size, space.num_units, config.p_init,
                                             space.group_sizes, self.generator)
        # a size target (cost, fraction): every state is brought to it, with the same number of units per
        # group (uniform widths, the search picks which units) or with widths of its own (searched)
        self.target = config.size_target if config.method == "edropout" else None
        self.kept_counts = counts_for_size(space, self.target[1], config.channel_multiple, cost=self.target[0]) \
            if self.target and config.layer_widths == "uniform" else None
        self.population.states = self._sized(self.population.states)
        self.learner: LearnerContract = learner or Learner(space, config, total_steps=total_steps)
        self.scorer = scorer or self.local_scorer
        self.final_mask: torch.Tensor | None = None
        self.previous_best: torch.Tensor | None = None
        self.best_unchanged = 0  # steps for which the best state has stayed the same
        self.freeze_reason: str | None = None
        self.step_count = 0
        self.warmup_steps = 0  # dense steps before the population starts (set by plan())
        self.freeze_step: int | None = None  # the step by which the population freezes (set by plan())
        self.all_kept = torch.ones(space.num_units, dtype=torch.bool)
        self._pending: tuple[PendingStep, StepRecord] | None = None  # a step whose loss is not in yet
        # called once, on the step the mask freezes, with the final mask and `resized`: the mask it returns
        # replaces it and its words join the freeze reason (a latency target timed: artifacts/latency_fit.py)
        self.on_freeze: Callable[[torch.Tensor, Callable], tuple[torch.Tensor, str]] | None = None

    def plan(self, total_steps: int) -> None:
        """The run's length in steps, known to the loop: `dense_warmup` is a share of it."""
        self.warmup_steps = round(self.config.dense_warmup * total_steps)
        self.freeze_step = None if self.config.freeze_by is None else round(self.config.freeze_by * total_steps)

    @property
    def warming_up(self) -> bool:
        """Dense steps first, so the population is scored on trained weights, not on an initialization."""
        return self.step_count < self.warmup_steps

    def _sized(self, states: torch.Tensor) -> torch.Tensor:
        if self.target and self.kept_counts is None:  # widths searched
            cost, fraction = self.target
            return fit_states_to_size(self.space, states, fraction, self.generator, self.config.channel_multiple,
                                      cost=cost)
        if self.kept_counts is not None:
            return set_kept_counts(states, self.space.group_sizes, self.kept_counts, self.generator)
        return round_kept_counts(states, self.space.group_sizes, self.config.channel_multiple, self.generator)

    def local_scorer(self, states: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.learner.sync()  # the learner may hold its latest weights at the state's size
        # on the CPU, where the states live (as a shard's energies arrive)
        return self.space.score(states, x, y, energy=self.config.energy, kappa=self.config.kappa).cpu()

    @property
    def frozen(self) -> bool:
        return self.final_mask is not None

    @property
    def best_state(self) -> torch.Tensor:
        return self.final_mask if self.frozen else self.population.best_state

    def propose(self) -> torch.Tensor:
        children = reference_operator(self.population.states, self.config.mutation_factor,
                                      self.config.crossover_rate, self.generator)
        children = repair_empty_groups(children, self.space.group_sizes, self.generator)
        return self._sized(children)

    def evolve(self, x: torch.Tensor, y: torch.Tensor) -> int:
        """One generation on this batch; returns how many children were accepted.

        `selection` decides what a child is compared with: 'reference' keeps each parent's energy
        from the batch it was last scored on (S forwards; a parent scored on an easy batch then
        holds a record no child beats); 'rescore' scores parents and children on this batch (2S
        forwards); 'paired' does the same on half of the batch (about the cost of S forwards).
        """
        children = self.propose()
        if self.config.selection == "reference":
            if not self.population.scored:
                self.population.energies = self.scorer(self.population.states, x, y).float()
            child_energies = self.scorer(children, x, y).float()
        else:
            if self.config.selection == "paired":
                half = max(1, len(x) // 2)
                x, y = x[:half], y[:half]
            both = self.scorer(torch.cat([self.population.states, children]), x, y).float()
            self.population.energies, child_energies = both.split(len(children))
        accepted = self.population.select(children, child_energies, self.config.temperature, self.generator)
        return int(accepted.sum())

    def search(self, x: torch.Tensor, y: torch.Tensor) -> int:
        """This step's part of the search: nothing while warming up or frozen; with `search: false`,
        the energy-best initial state frozen at once (the ablation); else one generation."""
        if self.frozen or self.warming_up:
            return 0
        if not self.config.search:  # when a search would start, or by its deadline if it has one
            if self.freeze_step is None or self.step_count >= self.freeze_step:
                self.population.energies = self.scorer(self.population.states, x, y).float()
                self.final_mask = self.population.best_state.clone()
                self.freeze_reason = "search is off: the energy-best initial state"
            return 0
        return self.evolve(x, y)

    def training_state(self) -> torch.Tensor:
        """The state the learner trains this step: all units while warming up, the final mask once
        frozen, else one of the `train_top` lowest-energy states (1: the best, as in the paper)."""
        if self.warming_up or (not self.frozen and self.config.train_while_searching == "dense"):
            return self.all_kept
        if self.frozen or self.config.train_top == 1:
            return self.best_state
        ranked = torch.argsort(self.population.energies, stable=True)[:self.config.train_top]
        pick = torch.randint(len(ranked), (1,), generator=self.generator)
        return self.population.states[ranked[pick]].squeeze(0)

    def step(self, x: torch.Tensor, y: torch.Tensor, epoch: int) -> StepRecord:
        """Search (while searching), pick the state to train, learn with it, record, check convergence."""
        self._prepare_step()
        was_frozen = self.frozen
        accepted = self.search(x, y)
        state = self.training_state()
        outcome = self._learn(state, x, y)
        self.step_count += 1
        record = self._record(epoch, state, accepted, outcome)
        self._check_convergence(epoch, record.diversity)
        self._after_freeze(was_frozen)
        return record

    def usage_so_far(self) -> dict | None:
        """Device-seconds the runtime's processes held and used until now (report.json's `resources`
        summary); None in one process, which has no processes of its own to count."""
        return None

    def _prepare_step(self) -> None:
        """Whatever the coming steps need set up first (a runtime starts its scorers here)."""

    def _learn(self, state: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> StepResult | PendingStep:
        """The learner's step with `state`: done now in one process (a runtime may return it pending)."""
        return self.learner.step(state, x, y)

    def _collect_pending(self) -> None:
        """Fill in the loss and accuracy of a step that was still running when it was recorded."""
        if self._pending is not None:
            pending, record = self._pending
            self._pending = None
            result = pending.result()
            record.loss, record.accuracy = result.loss, result.accuracy

    def resized(self, state: torch.Tensor, fraction: float) -> torch.Tensor:
        """`state`'s widths all scaled by one factor until it keeps `fraction` of the size target's cost
        (rounded to `channel_multiple`): the units it keeps stay, others are added (or dropped) in an order
        drawn from the run's seed, so the states of every fraction are nested and a fit can bisect them."""
        cost = self.target[0] if self.target else "macs"
        counts = scaled_counts(self.space, kept_per_group(state, self.space.group_sizes), fraction,
                               self.config.channel_multiple, cost=cost)
        order = torch.Generator().manual_seed(self.config.seed)
        return set_kept_counts(state.unsqueeze(0), self.space.group_sizes, counts, order)[0]

    def _after_freeze(self, was_frozen: bool) -> None:
        """On the step that froze the mask: `on_freeze` may replace it; `lr_after_freeze: restart` rewinds
        the learning rate."""
        if not self.frozen or was_frozen:
            return
        if self.on_freeze is not None:
            self.final_mask, words = self.on_freeze(self.final_mask, self.resized)
            self.freeze_reason = f"{self.freeze_reason}; {words}"
        if self.config.lr_after_freeze == "restart":
            self.learner.restart_schedule()

    def _record(self, epoch: int, state: torch.Tensor, accepted: int,
                outcome: StepResult | PendingStep) -> StepRecord:
        """The history row of the step just taken with `state` (loss and accuracy later if pending)."""
        energies = self.population.energies  # inf until the population is first scored (the warm-up)
        done = isinstance(outcome, StepResult)
        record = StepRecord(step=self.step_count, epoch=epoch, best_energy=float(energies.min()),
                            mean_energy=float(energies.mean()), kept_fraction=float(state.float().mean()),
                            accepted=accepted, loss=outcome.loss if done else math.nan,
                            accuracy=outcome.accuracy if done else math.nan, frozen=self.frozen,
                            diversity=diversity(self.population.states))
        if not done:
            self._pending = (outcome, record)
        return record

    def _check_convergence(self, epoch: int, spread: float) -> None:
        """Early state convergence: from epoch `converge_after` on, freeze the best state once the
        population agrees (`spread`, its diversity, at most `converge_diversity`) or the best state
        has stayed the same for `converge_patience` steps. Both look at states, not at the best energy, which a
        stalled selection also keeps unchanged. With parents scored on the children's batch
        ('paired', 'rescore') a state that stays best is one no child beat on fresh batches; under
        the reference's stale energies a stall still looks like convergence."""
        if self.frozen or not self.population.scored:
            return
        if self.freeze_step is not None and self.step_count >= self.freeze_step:
            self.final_mask = self.population.best_state.clone()
            self.freeze_reason = f"the search's deadline (freeze_by {self.config.freeze_by} of the steps)"
            return
        if self.config.converge_epoch is None:
            return
        best = self.population.best_state
        same = self.previous_best is not None and torch.equal(best, self.previous_best)
        self.best_unchanged = self.best_unchanged + 1 if same else 0
        self.previous_best = best.clone()
        if epoch < self.config.converge_epoch:
            return
        if spread <= self.config.converge_diversity:
            self.freeze_reason = f"the population agrees (diversity {spread:.3f} <= {self.config.converge_diversity})"
        elif self.best_unchanged >= self.config.converge_patience:
            self.freeze_reason = f"the best state was the same for {self.best_unchanged} steps"
        else:
            return
        self.final_mask = best.clone()

    def validate(self, state: torch.Tensor, loader, device: torch.device) -> dict[str, float]:
        """Loss and top-k of `state` on `loader` with the learner's latest weights (here, on the driver's model;
        a runtime may evaluate where its learner lives)."""
        self.finish()
        return evaluate(self.space, state, loader, device)

    def end_epoch(self) -> None:
        self._collect_pending()
        self.learner.end_epoch()

    def snapshot(self) -> EngineState:
        """The evolution's and the learner's state (tensors and plain values), with no side effects."""
        self._collect_pending()
        return EngineState(states=self.population.states.clone(), energies=self.population.energies.clone(),
                           generator=self.generator.get_state(), step_count=self.step_count,
                           previous_best=self.previous_best, best_unchanged=self.best_unchanged,
                           final_mask=self.final_mask, freeze_reason=self.freeze_reason,
                           learner=self.learner.state_dict())

    def restore(self, saved: EngineState) -> None:
        self.population.states = saved.states.clone()
        self.population.energies = saved.energies.clone()
        self.generator.set_state(saved.generator)
        self.step_count = saved.step_count
        self.previous_best, self.best_unchanged = saved.previous_best, saved.best_unchanged
        self.freeze_reason, self.final_mask = saved.freeze_reason, saved.final_mask
        self.learner.load_state_dict(saved.learner)

    def checkpoint(self) -> dict:
        """What a checkpoint writes (`EngineState` as a dict); a runtime may also keep it as the point
        its learner restarts from."""
        return self.snapshot().to_dict()

    def state_dict(self) -> dict:
        return self.snapshot().to_dict()

    def load_state_dict(self, saved: dict) -> None:
        self.restore(EngineState.from_dict(saved))

    def finish(self) -> None:
        """Make the driver's model hold the learner's latest weights (in one process, the learner's
        model is the driver's: only what it trained at size is written back)."""
        self._collect_pending()
        self.learner.sync()

    def resources(self) -> dict | None:
        """What the run's processes held and used (report.json's `resources`); None in one process."""
        return None

    def close(self) -> None:
        """Release workers (a no-op in one process)."""
