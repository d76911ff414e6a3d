"""The pruners EDropout is compared with: DropNet (Tan & Motani, ICML 2020), L1-norm and random.

They share EDropout's pruning space, training loop, learner (pruned units never move) and report:
each returns the trained space and a final state, and the caller measures and exports it like
EDropout's.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass

import torch

from .config import Config
from .engine import EDropoutEngine
from .loop import TrainLoop
from .setup import RunSetup
from .space import PruningSpace
from .unit_scores import layer_of_units, mean_abs_activation, weight_l1_norms

STRATEGIES = ("min", "min_layer", "max", "random", "random_layer")


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


@dataclass
class PrunedRun:
    state: torch.Tensor
    epoch_rows: list[dict]


def _train(space: PruningSpace, config: Config, setup: RunSetup, state: torch.Tensor, epochs: int,
           patience: int | None, label: str) -> list[dict]:
    """One phase: the kept units of a fixed state trained by the shared loop, with a fresh optimizer."""
    loop = TrainLoop(EDropoutEngine(space, config), setup, f"{config.method} {label}", state=state, epochs=epochs,
                     patience=patience)
    loop.run(progress=False)
    return [row | {"label": label} for row in loop.epoch_rows]


def run_dropnet(space: PruningSpace, config: Config, setup: RunSetup, keep_fraction: float) -> PrunedRun:
    """Train, remove `dropnet_fraction` of the units by mean activation, reset, repeat to the target."""
    generator = torch.Generator().manual_seed(config.seed)
    layer = layer_of_units(space)
    initial = {k: v.clone() for k, v in space.model.state_dict().items()}
    cycles = max(1, math.ceil(math.log(keep_fraction) / math.log(1 - config.dropnet_fraction))) if keep_fraction < 1 \
        else 0
    # the same total budget as the other methods: epochs saved by early stopping go to the last cycle
    per_cycle = max(1, config.epochs // (cycles + 1))
    state = torch.ones(space.num_units, dtype=torch.bool)
    rows: list[dict] = []
    for cycle in range(cycles + 1):
        budget = per_cycle if cycle < cycles else max(1, config.epochs - len(rows))
        rows += _train(space, config, setup, state, budget, config.dropnet_patience, f"cycle {cycle}")
        kept = float(state.float().mean())
        print(f"[dropnet-{config.dropnet_strategy}] cycle {cycle + 1}/{cycles + 1}: units kept {kept:.1%}",
              file=sys.stderr, flush=True)
        if cycle == cycles:
            break
        scores = mean_abs_activation(space, state, setup.train_loader, setup.device,
                                     max_batches=setup.config.max_steps_per_epoch)
        fraction = min(config.dropnet_fraction, 1 - keep_fraction / kept) if cycle == cycles - 1 else \
            config.dropnet_fraction
        state = select_to_drop(scores, state, layer, config.dropnet_strategy, fraction, generator)
        _reset(space, initial, config, setup, cycle)
    return PrunedRun(state, rows)


def _reset(space: PruningSpace, initial: dict, config: Config, setup: RunSetup, cycle: int) -> None:
    if config.dropnet_reset == "initial":  # lottery-ticket style
        space.model.load_state_dict(initial)
    else:  # a fresh random initialization, different every cycle
        fresh = dataclasses.replace(setup.recipe, seed=config.seed + 1000 + cycle).build()
        space.model.load_state_dict(fresh.to(setup.device).state_dict())


def run_ranked(space: PruningSpace, config: Config, setup: RunSetup, keep_fraction: float,
               criterion: str) -> PrunedRun:
    """Train dense for half the budget, keep the best units by `criterion` ('l1' or 'random'), fine-tune."""
    dense_epochs = max(1, config.epochs // 2)
    all_kept = torch.ones(space.num_units, dtype=torch.bool)
    rows = _train(space, config, setup, all_kept, dense_epochs, None, "dense")
    layer = layer_of_units(space)
    if criterion == "l1":
        scores = weight_l1_norms(space)
    else:
        scores = torch.rand(space.num_units, generator=torch.Generator().manual_seed(config.seed))
    state = keep_top(scores, keep_fraction, layer, per_layer=config.l1_per_layer and criterion == "l1")
    rows += _train(space, config, setup, state, max(1, config.epochs - dense_epochs), None, "fine-tune")
    return PrunedRun(state, rows)


def run_baseline(space: PruningSpace, config: Config, setup: RunSetup) -> PrunedRun:
    """Dispatch on `config.method` (anything but 'edropout')."""
    keep = config.prune_target
    if config.method == "dropnet":
        return run_dropnet(space, config, setup, keep)
    return run_ranked(space, config, setup, keep, criterion=config.method)
