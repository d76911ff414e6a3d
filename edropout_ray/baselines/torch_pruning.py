"""Torch-Pruning's own pipelines as baselines: group-norm sparse training, iterative magnitude and Taylor.

The regularizer and the importances are Torch-Pruning's code (`GroupNormPruner.regularize`,
`GroupMagnitudeImportance`, `GroupTaylorImportance`, through `BasePruner.estimate_importance` on
Torch-Pruning's own groups of the model). What is kept is decided in the project's pruning space,
so each method ends with a state that the report, export and latency code measure exactly like
EDropout's, and is held to the size target (parameters or MACs) like the other baselines:

- a Torch-Pruning group is one of the space's coupled groups (same root layer, same traversal), and
  its per-channel importance becomes the score of the unit of each root channel (the mean over the
  channels of a unit, as Torch-Pruning averages grouped channels);
- scores are read with the pruned units' weights zeroed, which is what Torch-Pruning sees on the
  physically pruned model, and pruned units never return;
- within every group the highest-scoring units are kept, the same fraction in each group
  (Torch-Pruning's default local pruning, `global_pruning=False`), that fraction bisected until
  the state keeps the size asked for (`fit_to_size`).

Training phases are `pruners._train`: the loop, learner and schedule of every other method, and
the same total step budget.

- `tp_group_norm` (DepGraph, CVPR 2023): half the budget of sparse training, the dense network
  trained with `GroupNormPruner.regularize` after every backward; prune by group-norm importance;
  fine-tune for the rest.
- `tp_magnitude`, `tp_taylor`: a quarter of the budget dense, then `ROUNDS` rounds of pruning a
  share of the way to the target (Torch-Pruning's `linear_scheduler`, in parameters) and
  fine-tuning: the first rounds share the second quarter, the last round (at the target) fine-tunes
  for the second half, as long as every other baseline's final network. Taylor importance needs
  gradients: they are summed over `TAYLOR_BATCHES` batches first, as in Torch-Pruning's benchmarks.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from ..config import Config
from ..errors import UnsupportedModelError
from ..pruning.groups import CONVS
from ..pruning.heads import heads_called_as_modules, is_headed
from ..pruning.modes import eval_mode, scoring_mode
from ..pruning.sizing import fit_to_size, kept_summary
from ..pruning.space import PruningSpace, UnitGroup
from ..training.run_setup import PrunedRun, RunSetup
from .pruners import _budget, _train, cached_phase, dense_phase, keep_top
from .unit_scores import layer_of_units

ITERATIVE_IMPORTANCES = ("magnitude", "taylor")  # run_iterative's Torch-Pruning importances
# GroupNormPruner's own default, and what Torch-Pruning's CIFAR ResNet-56 group-sparsity benchmark
# passes (benchmarks/scripts/prune/cifar/global_group_gsl.sh: --reg 1e-4)
GROUP_NORM_REG = 1e-4
ROUNDS = 4  # iterative pruning: prune-and-fine-tune rounds after the dense phase
TAYLOR_BATCHES = 10  # Torch-Pruning's benchmarks: --taylor-batchs 10
ROOT_TYPES = (*CONVS, nn.Linear)  # the space's root layer types: both traversals find the same roots


def make_pruner(space: PruningSpace, importance: tp.importance.Importance,
                reg: float | None = None) -> tp.pruner.BasePruner:
    """Torch-Pruning's pruner on the space's model: a GroupNormPruner with `reg`, else a BasePruner.

    Groups the space cannot mask (and the output layer's) are ignored, so the regularizer pushes
    only on channels that can be pruned, as Torch-Pruning's examples ignore the classifier.
    """
    model = space.model
    options = dict(importance=importance, root_module_types=list(ROOT_TYPES), global_pruning=False)
    # tracing runs a forward: no normalization statistics move; projections called as modules, as the space traces
    with eval_mode(model), torch.enable_grad(), heads_called_as_modules(model):
        if reg is None:
            pruner = tp.pruner.BasePruner(model, space.example_inputs, **options)
        else:
            pruner = tp.pruner.GroupNormPruner(model, space.example_inputs, reg=reg, **options)
    roots = tp_roots(space)
    names = {module: name for name, module in model.named_modules()}
    outside = [group[0].dep.target.module for group in _all_groups(pruner)
               if names.get(group[0].dep.target.module) not in roots]
    pruner.ignored_layers.extend(outside)
    pruner.update_regularizer()  # GroupNormPruner: its groups again, without the ignored ones
    return pruner


def _all_groups(pruner: tp.pruner.BasePruner):
    return pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types)


def tp_roots(space: PruningSpace) -> dict[str, tuple[UnitGroup, list[int]]]:
    """Torch-Pruning's root layer of every unit group, with the unit of each of that layer's channels.

    A group of attention heads is rooted at the attention module here and at its qkv projection in
    Torch-Pruning, whose graph stops at the reshape into heads: q, k and v rows of head h are channel
    units of that projection, so a head's importance is the mean over its 3 x head_dim rows (as
    Torch-Pruning's `prune_num_heads` reduces channel importances to heads).
    """
    modules = dict(space.model.named_modules())
    roots = {}
    for group in space.groups:
        module = modules[group.root]
        if not is_headed(module):
            roots[group.root] = (group, group.units_of_channels())
            continue
        qkv = getattr(module, "qkv", None)
        if not isinstance(qkv, nn.Linear):
            raise UnsupportedModelError(
                f"Torch-Pruning's pipelines cannot score the heads of {group.root} ({type(module).__name__}): its "
                "graph has no layer for the packed q, k, v projection of nn.MultiheadAttention. Compare such models "
                "with random or l1, or use a timm ViT (its Attention has a qkv Linear)")
        width = qkv.out_features // 3
        head_dim = width // group.size
        roots[f"{group.root}.qkv"] = (group, [group.start + (row % width) // head_dim for row in range(3 * width)])
    return roots


def matched_groups(space: PruningSpace, pruner: tp.pruner.BasePruner
                   ) -> Iterator[tuple[UnitGroup, object, list[int]]]:
    """(the space's group, Torch-Pruning's group, the unit of each of its root's channels) for every unit
    group, matched by root layer."""
    roots = tp_roots(space)
    names = {module: name for name, module in space.model.named_modules()}
    found = set()
    for tp_group in _all_groups(pruner):
        root = names.get(tp_group[0].dep.target.module)
        if root in roots:
            found.add(root)
            unit_group, units = roots[root]
            yield unit_group, tp_group, units
    missing = set(roots) - found
    if missing:
        raise RuntimeError(f"Torch-Pruning found no group rooted at {', '.join(sorted(missing))}")


@torch.no_grad()
def unit_scores(space: PruningSpace, pruner: tp.pruner.BasePruner, state: torch.Tensor) -> torch.Tensor:
    """Tensor[U]: Torch-Pruning's importance of every unit, read with `state`'s pruned units removed.

    Units `state` prunes score -inf (they never return).
    """
    sums = torch.zeros(space.num_units, dtype=torch.float64)
    counts = torch.zeros(space.num_units, dtype=torch.float64)
    with _pruned_zeroed(space, state):
        for unit_group, tp_group, units_of_channels in matched_groups(space, pruner):
            importance = pruner.estimate_importance(tp_group)
            if importance is None:
                raise RuntimeError(f"Torch-Pruning's importance is undefined for the group at {unit_group.root}")
            units = torch.tensor(units_of_channels)
            sums.index_add_(0, units, importance.detach().double().cpu())
            counts.index_add_(0, units, torch.ones(len(units), dtype=torch.float64))
    scores = (sums / counts.clamp(min=1)).float()
    return scores.masked_fill(~state.bool().cpu(), float("-inf"))


@contextlib.contextmanager
def _pruned_zeroed(space: PruningSpace, state: torch.Tensor):
    """The pruned units' parameters (and their gradients) zeroed, as if removed; restored after."""
    params = dict(space.model.named_parameters())
    keep = {name: mask for name, mask in space.keep_masks(state.bool()).items()
            if name in params and not bool(mask.all())}
    saved = {name: params[name].detach().clone() for name in keep}
    saved_grads = {name: params[name].grad.clone() for name in keep if params[name].grad is not None}
    with torch.no_grad():
        for name, mask in keep.items():
            params[name].mul_(mask)
            if params[name].grad is not None:
                params[name].grad.mul_(mask)
    try:
        yield
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)
            for name, value in saved_grads.items():
                params[name].grad.copy_(value)


def accumulate_gradients(space: PruningSpace, state: torch.Tensor, setup: RunSetup, batches: int) -> None:
    """The model's .grad: the cross-entropy's gradients summed over `batches` training batches, with
    `state` applied (as Torch-Pruning's benchmarks do before a Taylor step); no statistics move."""
    model = space.model
    model.zero_grad(set_to_none=True)
    was_training = model.training
    model.train()  # batch statistics, as in training; scoring_mode stores none of them
    try:
        with scoring_mode(model):
            for index, (x, y) in enumerate(setup.train_loader):
                if index >= batches:
                    break
                logits = space.masked_forward(state, x.to(setup.device))
                F.cross_entropy(logits, y.to(setup.device)).backward()
    finally:
        model.train(was_training)


def prune_to(space: PruningSpace, scores: torch.Tensor, state: torch.Tensor, size: tuple[str, float] | None,
             units_fraction: float) -> torch.Tensor:
    """A subset of `state` keeping the best-scoring units, the same fraction of every group, sized to
    `size` (cost, fraction: of the parameters or MACs), or when None to `units_fraction` of the units."""
    layer = layer_of_units(space)
    state = state.bool().cpu()

    def state_for(keep_fraction: float) -> torch.Tensor:
        return keep_top(scores, keep_fraction, layer, per_layer=True) & state

    if size is not None:
        return fit_to_size(space, state_for, size[1], cost=size[0])
    return state_for(units_fraction)


def run_group_norm(space: PruningSpace, config: Config, setup: RunSetup, reg: float = GROUP_NORM_REG) -> PrunedRun:
    """Sparse training with Torch-Pruning's group-norm regularizer, one pruning step, fine-tuning."""
    budget = _budget(setup)
    pruner = make_pruner(space, tp.importance.GroupMagnitudeImportance(p=2), reg=reg)
    all_kept = torch.ones(space.num_units, dtype=torch.bool)
    # the regularizer knows no target: one sparse training serves every size (through the phase cache)
    rows, used = cached_phase(f"sparse-reg{reg:g}", space, config, setup, budget // 2,
                              lambda: _train(space, config, setup, all_kept, budget // 2, None, "sparse training",
                                             after_backward=pruner.regularize))
    state = prune_to(space, unit_scores(space, pruner, all_kept), all_kept, config.size_target,
                     config.prune_target)
    _say(config, f"pruned by group norm: {kept_summary(space, state)}")
    fine_tune, _ = _train(space, config, setup, state, budget - used, None, "fine-tune")
    return PrunedRun(state, rows + fine_tune)


def run_iterative(space: PruningSpace, config: Config, setup: RunSetup, importance: str,
                  rounds: int = ROUNDS) -> PrunedRun:
    """Dense training, then `rounds` rounds of pruning by Torch-Pruning's `importance` ('magnitude' or
    'taylor') and fine-tuning; the last round lands on the target and fine-tunes for half the budget."""
    if importance not in ITERATIVE_IMPORTANCES:
        raise ValueError(f"iterative importance must be one of {', '.join(ITERATIVE_IMPORTANCES)}, got {importance!r}")
    taylor = importance == "taylor"
    scorer = tp.importance.GroupTaylorImportance() if taylor else tp.importance.GroupMagnitudeImportance(p=2)
    pruner = make_pruner(space, scorer)
    budget = _budget(setup)
    state = torch.ones(space.num_units, dtype=torch.bool)
    rows, used = dense_phase(space, config, setup, budget // 4)
    # Torch-Pruning's linear schedule of the pruned fraction, here of the parameters (or units)
    size = config.size_target
    schedule = tp.pruner.algorithms.scheduler.linear_scheduler(1 - (size[1] if size else config.prune_target), rounds)
    for round_ in range(1, rounds + 1):
        if taylor:
            accumulate_gradients(space, state, setup, _taylor_batches(setup))
        scores = unit_scores(space, pruner, state)
        space.model.zero_grad(set_to_none=True)
        keep = 1 - schedule[round_]
        state = prune_to(space, scores, state, (size[0], keep) if size else None, keep)
        _say(config, f"round {round_}/{rounds}: {kept_summary(space, state)}")
        # the first rounds share the first half of the budget; the last fine-tunes for the rest
        steps = budget - used if round_ == rounds else max(1, (budget // 2 - used) // (rounds - round_))
        phase_rows, taken = _train(space, config, setup, state, steps, None, f"round {round_}")
        rows, used = rows + phase_rows, used + taken
    return PrunedRun(state, rows)


def _taylor_batches(setup: RunSetup) -> int:
    cap = setup.config.max_steps_per_epoch
    return min(TAYLOR_BATCHES, cap) if cap else TAYLOR_BATCHES


def _say(config: Config, message: str) -> None:
    print(f"[{config.method}] {message}", file=sys.stderr, flush=True)
