"""The pruners EDropout is compared with: DropNet (Tan & Motani, ICML 2020), L1-norm and random.

They share EDropout's pruning space, training loop, learner (pruned units never move) and report:
each returns the trained space and a final state, and the caller measures and exports it like
EDropout's.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Callable

import torch

from ..choices import DROPNET_STRATEGIES
from ..config import Config
from ..errors import ConfigError
from ..evolution.population import set_kept_counts
from ..training.step import EDropoutEngine
from ..training.learner import Learner
from ..training.loop import TrainLoop
from ..training.run_setup import PrunedRun, RunSetup, steps_per_epoch
from ..pruning.sizing import fit_to_size, size_fraction
from ..pruning.space import PruningSpace
from .unit_scores import layer_of_units, mean_abs_activation, weight_l1_norms

STRATEGIES = DROPNET_STRATEGIES
RANKING_CRITERIA = ("l1", "random")
FILL_ABOVE_MISS = 0.005  # a ranked state further than this from its size target is filled in rank order


def select_to_drop(scores: torch.Tensor, state: torch.Tensor, layer: torch.Tensor, strategy: str, fraction: float,
                   generator: torch.Generator) -> torch.Tensor:
    """A new state with `fraction` of the kept units removed, chosen by `strategy`.

    'min'/'max' rank all kept units together; '*_layer' remove the fraction within each layer
    (coupled group); 'random*' ignore the scores. The last unit of a layer is never removed.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"DropNet strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    keys = torch.rand(len(scores), generator=generator) if strategy.startswith("random") else scores.float()
    if strategy == "max":
        keys = -keys
    state = state.clone()
    pools = [state.nonzero().squeeze(1)] if "layer" not in strategy else \
        [((layer == g) & state).nonzero().squeeze(1) for g in range(int(layer.max()) + 1)]
    for pool in pools:
        count = round(fraction * len(pool))
        order = pool[torch.argsort(keys[pool], stable=True)]
        for unit in order[:count].tolist():
            if state[layer == layer[unit]].sum() > 1:
                state[unit] = False
    return state


def keep_top(scores: torch.Tensor, keep_fraction: float, layer: torch.Tensor, per_layer: bool) -> torch.Tensor:
    """A state keeping the highest-scoring units: `keep_fraction` of all, or of each layer; >= 1 per layer."""
    state = torch.zeros(len(scores), dtype=torch.bool)
    pools = [torch.arange(len(scores))] if not per_layer else \
        [(layer == g).nonzero().squeeze(1) for g in range(int(layer.max()) + 1)]
    for pool in pools:
        count = max(1, round(keep_fraction * len(pool)))
        state[pool[torch.argsort(scores[pool], descending=True, stable=True)[:count]]] = True
    for g in range(int(layer.max()) + 1):  # a global ranking may empty a layer
        members = (layer == g).nonzero().squeeze(1)
        if not state[members].any():
            state[members[torch.argmax(scores[members])]] = True
    return state


def ranked_state_at_size(space: PruningSpace, scores: torch.Tensor, layer: torch.Tensor, per_layer: bool,
                         cost: str, target: float) -> torch.Tensor:
    """The best units by `scores` keeping `target` of `cost`: the closest top-k, else filled in rank order.

    A top-k grows in steps of its next unit, and one unit can be a large step (a first-layer channel
    of LeNet-5 carries a few points of its MACs): the closest top-k of a random ranking missed a
    MACs target by up to 1.4 points. When it misses by more than half a point, the global ranking
    is walked best first, keeping each unit that still fits under the target (a greedy fill of the
    budget in rank order), and the closer of the two states is kept.
    """
    state = fit_to_size(space, lambda fraction: keep_top(scores, fraction, layer, per_layer=per_layer), target,
                        cost=cost)
    miss = abs(size_fraction(space, state, cost) - target)
    if per_layer or miss <= FILL_ABOVE_MISS:
        return state
    filled = keep_top(scores, 0.0, layer, per_layer=False)  # the floor: the best unit of each layer
    for unit in torch.argsort(scores, descending=True, stable=True).tolist():
        if not filled[unit]:
            filled[unit] = True
            filled[unit] = size_fraction(space, filled, cost) <= target
    return filled if abs(size_fraction(space, filled, cost) - target) < miss else state


def _train(space: PruningSpace, config: Config, setup: RunSetup, state: torch.Tensor, steps: int,
           patience: int | None, label: str, after_backward=None) -> tuple[list[dict], int]:
    """One phase of at most `steps` steps: the kept units of a fixed state trained by the shared loop.

    A fresh optimizer and learning-rate schedule per phase, the schedule spanning the phase's own
    steps (a cosine schedule anneals within each phase, as when fine-tuning). Returns the epoch
    rows and the steps taken (fewer when early stopping ends the phase). `after_backward`: the
    learner's hook between backward and step (a sparsity regularizer), None for plain training.
    """
    epochs, epoch_steps = _phase_epochs(steps, steps_per_epoch(setup))
    phase = config.replace(epochs=epochs)
    learner = Learner(space, phase, after_backward=after_backward, total_steps=epochs * epoch_steps)
    engine = EDropoutEngine(space, phase, learner=learner)
    loop = TrainLoop(engine, setup, f"{config.method} {label}", state=state, epochs=epochs, epoch_steps=epoch_steps,
                     patience=patience)
    loop.run(progress=False)
    return [row | {"label": label} for row in loop.epoch_rows], len(loop.epoch_rows) * epoch_steps


def dense_phase(space: PruningSpace, config: Config, setup: RunSetup, steps: int) -> tuple[list[dict], int]:
    """`_train` with every unit kept: read from the setup's phase cache when another run of the same model,
    seed and training settings trained it (L1's and random's first half, at every size and budget)."""
    all_kept = torch.ones(space.num_units, dtype=torch.bool)
    return cached_phase("dense", space, config, setup, steps,
                        lambda: _train(space, config, setup, all_kept, steps, None, "dense"))


def cached_phase(kind: str, space: PruningSpace, config: Config, setup: RunSetup, steps: int,
                 train: Callable[[], tuple[list[dict], int]]) -> tuple[list[dict], int]:
    """`train()`, a phase of `steps` steps from the model's current state that no pruning setting changes
    (`kind` names whatever else it depends on), read from the setup's phase cache when it holds it."""
    if setup.phase_cache is None:
        return train()
    return setup.phase_cache.phase(kind, config, steps, train, model=space.model, loader=setup.train_loader)


def _phase_epochs(steps: int, per_epoch: int) -> tuple[int, int]:
    """(epochs, steps per epoch): `steps` split into as few equal epochs as fit in loader epochs of
    `per_epoch` steps, so a phase of any length is validated (and early-stopped) per epoch."""
    epochs = max(1, math.ceil(steps / per_epoch))
    return epochs, max(1, steps // epochs)


def _budget(setup: RunSetup) -> int:
    """Training steps every method gets: what EDropout and the dense baseline take."""
    return setup.config.epochs * steps_per_epoch(setup)


def _uniform_unit_fraction(space: PruningSpace, layer: torch.Tensor, size: tuple[str, float]) -> float:
    """The fraction of units that, kept evenly in every layer, keeps `size` (cost, fraction)."""
    order = torch.arange(space.num_units, dtype=torch.float32)
    cost, fraction = size
    state = fit_to_size(space, lambda f: keep_top(order, f, layer, per_layer=True), fraction, cost=cost)
    return float(state.float().mean())


def run_dropnet(space: PruningSpace, config: Config, setup: RunSetup) -> PrunedRun:
    """Train, remove `dropnet_fraction` of the units by mean activation, reset, repeat to the target.

    The target is the config's size target (parameters or MACs) when given, else `prune_target` (units); the
    last cycle removes exactly what is left to reach it.
    """
    generator = torch.Generator().manual_seed(config.seed)
    layer = layer_of_units(space)
    size = config.size_target
    keep_fraction = _uniform_unit_fraction(space, layer, size) if size else config.prune_target
    initial = {k: v.clone() for k, v in space.model.state_dict().items()}
    cycles = max(1, math.ceil(math.log(keep_fraction) / math.log(1 - config.dropnet_fraction))) if keep_fraction < 1 \
        else 0
    # the same total budget in steps as the other methods: steps saved by early stopping go to the last cycle
    budget = _budget(setup)
    per_cycle = budget // (cycles + 1)
    state = torch.ones(space.num_units, dtype=torch.bool)
    rows: list[dict] = []
    used = 0
    for cycle in range(cycles + 1):
        steps = per_cycle if cycle < cycles else budget - used
        phase_rows, taken = _train(space, config, setup, state, steps, config.dropnet_patience, f"cycle {cycle}")
        rows, used = rows + phase_rows, used + taken
        kept = float(state.float().mean())
        print(f"[dropnet-{config.dropnet_strategy}] cycle {cycle + 1}/{cycles + 1}: units kept {kept:.1%}",
              file=sys.stderr, flush=True)
        if cycle == cycles:
            break
        scores = mean_abs_activation(space, state, setup.train_loader, setup.device,
                                     max_batches=setup.config.max_steps_per_epoch)
        cut = select_to_drop(scores, state, layer, config.dropnet_strategy, config.dropnet_fraction, generator) \
            if cycle < cycles - 1 else None
        if cut is None or (size and size_fraction(space, cut, size[0]) < size[1]):
            # the last cut: exactly to the target (the activation ranking may reach it in fewer cycles
            # than the estimate from an even cut, when it removes the cheaper units first)
            state = _last_cut(space, config, scores, state, layer, keep_fraction, kept, generator)
            cycles = cycle + 1
        else:
            state = cut
        _reset(space, initial, config, setup, cycle)
    return PrunedRun(state, rows)


def _last_cut(space: PruningSpace, config: Config, scores: torch.Tensor, state: torch.Tensor, layer: torch.Tensor,
              keep_fraction: float, kept: float, generator: torch.Generator) -> torch.Tensor:
    """The last DropNet cut: to the size target by bisection, or to the unit target directly."""
    if not config.size_target:
        fraction = min(config.dropnet_fraction, 1 - keep_fraction / kept)
        return select_to_drop(scores, state, layer, config.dropnet_strategy, fraction, generator)
    start = generator.get_state()

    def cut(keep_of_remaining: float) -> torch.Tensor:
        generator.set_state(start)  # every trial of the bisection draws the same random ranking
        return select_to_drop(scores, state, layer, config.dropnet_strategy, 1 - keep_of_remaining, generator)

    cost, fraction = config.size_target
    return fit_to_size(space, cut, fraction, cost=cost)


def _reset(space: PruningSpace, initial: dict, config: Config, setup: RunSetup, cycle: int) -> None:
    if config.dropnet_reset == "initial":  # lottery-ticket style
        space.model.load_state_dict(initial)
    else:  # a fresh random initialization, different every cycle
        fresh = dataclasses.replace(setup.recipe, seed=config.seed + 1000 + cycle).build()
        space.model.load_state_dict(fresh.to(setup.device).state_dict())


def run_ranked(space: PruningSpace, config: Config, setup: RunSetup, criterion: str) -> PrunedRun:
    """Train dense for half the budget, keep the best units by `criterion` ('l1' or 'random'), fine-tune.

    Kept: the size target (parameters or MACs) when given (`ranked_state_at_size`), else
    `prune_target` of the units.
    """
    if criterion not in RANKING_CRITERIA:
        raise ValueError(f"ranking criterion must be one of {', '.join(RANKING_CRITERIA)}, got {criterion!r}")
    budget = _budget(setup)
    rows, used = dense_phase(space, config, setup, budget // 2)
    layer = layer_of_units(space)
    if criterion == "l1":
        scores = weight_l1_norms(space)
    else:  # "random"
        scores = torch.rand(space.num_units, generator=torch.Generator().manual_seed(config.seed))
    per_layer = config.l1_per_layer and criterion == "l1"

    size = config.size_target
    state = ranked_state_at_size(space, scores, layer, per_layer, *size) if size else \
        keep_top(scores, config.prune_target, layer, per_layer=per_layer)
    fine_tune, _ = _train(space, config, setup, state, budget - used, None, "fine-tune")
    return PrunedRun(state, rows + fine_tune)


def run_fixed_random(space: PruningSpace, config: Config, setup: RunSetup) -> PrunedRun:
    """A random state keeping `kept_per_group` units of each coupled group, trained at its size for the
    whole budget: EDropout's layer sizes without its choice of units (an ablation of the search)."""
    counts = torch.tensor(config.kept_per_group)
    if len(counts) != len(space.group_sizes):
        raise ConfigError(f"kept_per_group has {len(counts)} counts but the model has {len(space.group_sizes)} "
                          "coupled groups; take them from a run of the same model (report.json: kept_per_group)")
    generator = torch.Generator().manual_seed(config.seed)
    none_kept = torch.zeros(1, space.num_units, dtype=torch.bool)
    state = set_kept_counts(none_kept, space.group_sizes, counts, generator)[0]
    rows, _ = _train(space, config, setup, state, _budget(setup), None, "fixed")
    return PrunedRun(state, rows)

