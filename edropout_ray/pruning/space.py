"""The pruning space of a model: its units, how they are coupled, and masked forwards.

A *unit* is an output channel of a convolution or an output neuron of a linear layer. Units that
must be removed together (residual additions, concatenations, depthwise convs, normalization
layers) are found with Torch-Pruning's dependency graph; one unit of the space is one channel
of such a coupled group, so every state is physically removable.

A state is applied by zeroing, in every layer of a group, the slices of the pruned units: their
output slices (filter, bias, normalization affine) and the input slices of the layers that read
them. The consumers then ignore those channels entirely, which is exactly what removing them
does, whatever activation sits in between.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn
from torch.func import functional_call

from ..choices import COSTS, SCORING_MODES
from .at_size import CompactLayout, probe_state, run_at_size, sized_layer_norm, sized_layers
from .channel_norms import ChannelNorm, kept_channel_statistics, record_inputs
from .folded import ActivationMask
from .scoring import StateScoring
from .scoring_options import ScoringOptions
from ..errors import NothingToPruneError, UnsupportedModelError
from .groups import CONVS, GroupReader, UnitGroup
from .heads import HeadedAttention, find_attentions, heads_called_as_modules, untraceable_attention
from .kept_layers import check_every_pattern_used, kept_by
from .macs import positions_per_weight
from .modes import eval_mode
from .removal import prune_physically

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class _SliceIndex:
    """For one parameter or buffer: which state bit each slice along dims `out_dim` and 1 follows.

    Index `num_units` points at an always-one bit (slices no unit controls). `out_dim` is 0 but for
    a token tensor cut along its last dim alone (a ViT's position embedding and class token).
    """

    name: str
    out_index: torch.Tensor | None
    in_index: torch.Tensor | None
    is_buffer: bool
    out_dim: int = 0




class PruningSpace(StateScoring):
    """The units of `model` and forwards of the model with a state applied.

    `example_inputs` is one batch of the model's input shape, used to trace the graph.
    """

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, *, scoring: str = "auto",
                 options: ScoringOptions | None = None, keep_layers: tuple[str, ...] = ()):
        if scoring not in SCORING_MODES:
            raise ValueError(f"scoring must be one of {', '.join(SCORING_MODES)}, got {scoring!r}")
        self.model = model
        self.example_inputs = example_inputs[:2].detach().clone()
        self.scoring = scoring
        self.options, self.keep_layers = options or ScoringOptions(), tuple(keep_layers)
        self.groups: list[UnitGroup] = []
        self.skipped: list[tuple[str, str]] = []
        self._slices: list[_SliceIndex] = []
        self._norms: dict | list[ChannelNorm] = {}  # name -> ChannelNorm while building, then a list
        self._build()
        self.layout = CompactLayout((e.name, e.out_index, e.in_index, e.out_dim) for e in self._slices)
        self.sized_layers = sized_layers(self.model, self.layout)  # whose own size follows a cut tensor
        self._at_size_problem: str | None | bool = False  # False: not checked yet
        self._folded_problem: str | None | bool = False
        self._activation_masks: tuple[list[ActivationMask], list[ActivationMask]] | None = None
        self._measured: dict[tuple, str] = {}  # (device, input shape, states) -> the mode 'auto' measured fastest
        self._counters: dict[tuple, tuple] = {}  # (cost, trainable names) -> _cost_counter's tensors

    # ---- discovery -------------------------------------------------------------------------
    def _build(self) -> None:
        if problem := untraceable_attention(self.model):
            raise UnsupportedModelError(f"Torch-Pruning could not trace {type(self.model).__name__}: {problem}")
        norm_inputs, hooks = record_inputs(self.model)
        # projections called as modules: Torch-Pruning sees only module calls (heads.heads_called_as_modules)
        with eval_mode(self.model), torch.enable_grad(), heads_called_as_modules(self.model):
            try:
                graph = tp.DependencyGraph().build_dependency(self.model, example_inputs=self.example_inputs,
                                                              verbose=False)
            except Exception as error:  # the tracer fails in many ways on exotic models
                raise UnsupportedModelError(
                    f"Torch-Pruning could not trace {type(self.model).__name__}: {error}. Models must be "
                    "traceable by autograd with the given example input shape."
                ) from error
            finally:
                for hook in hooks:
                    hook.remove()
        with eval_mode(self.model):
            reader = GroupReader(self.model, graph, norm_inputs)
            self._read_groups(reader, graph)

    def _read_groups(self, reader: GroupReader, graph) -> None:
        collected: dict[tuple[str, int], torch.Tensor] = {}
        buffers: set[str] = set()
        depth = {name: i for i, (name, _) in enumerate(self.model.named_modules())}
        attentions, _ = find_attentions(self.model)  # the others' qkv stay refused as a channel split below
        by_heads = {f"{a.name}.qkv" for a in attentions}  # their qkv channels are heads, not a split
        found_groups = [(reader.names[g.items[0].dep.target.module], g)
                        for g in graph.get_all_groups(root_module_types=(CONVS + (nn.Linear,)))]
        found_groups = [pair for pair in found_groups if pair[0] not in by_heads]
        found_groups += [(a.name, a) for a in attentions]
        found_groups.sort(key=lambda pair: depth[pair[0]])  # units in the order of the model's layers
        modules = dict(self.model.named_modules())
        start, touched = 0, []  # the layers whose outputs each group cuts (keep_layers is checked on them)
        for root, group in found_groups:
            if isinstance(group, HeadedAttention):  # one unit per head (heads.py)
                unit_of, found, norms, reason = list(range(group.num_heads)), group.tensor_slices(
                    modules[root], start), [], None
            elif reader.feeds_output(group):
                continue
            else:
                unit_of, reason = reader.units_of_channels(group)
                found, norms = [], []
                if reason is None:
                    found, norms, reason = reader.slices(group, start, unit_of)
            layers = tuple(dict.fromkeys([*(n.rsplit(".", 1)[0] for n, *_ in found), *(n.name for n in norms)]))
            outputs = tuple(dict.fromkeys([n.rsplit(".", 1)[0] for n, dim, *_ in found if dim == 0]))
            touched.append(outputs)
            if reason is None and (reason := kept_by(outputs, self.keep_layers)):
                self.skipped.append((root, reason))
                continue
            if reason is not None:
                self.skipped.append((root, reason))
                log.warning("units of %s are kept unpruned: cannot remove them exactly (%s)", root, reason)
                continue
            size = max(unit_of) + 1
            self._record(found, collected, buffers)
            self._record_norms(norms)
            self.groups.append(UnitGroup(root=root, start=start, size=size, layers=layers,
                                         unit_of_channel=tuple(unit_of)))
            start += size
        self.num_units = start
        check_every_pattern_used(self.keep_layers, touched)
        if self.num_units == 0:
            why = "; ".join(f"{root}: {reason}" for root, reason in self.skipped) or "every channel feeds the output"
            raise NothingToPruneError(
                f"{type(self.model).__name__} has nothing to prune ({why}). EDropout needs at least one "
                "convolution or linear layer whose outputs are not the model's outputs."
            )
        self._slices = self._finalize(collected, buffers)
        self._norms = [ChannelNorm(n.name, n.dim, torch.where(n.index < 0, self.num_units, n.index))
                       for n in self._norms.values()]

    def _record_norms(self, norms: list[ChannelNorm]) -> None:
        for norm in norms:
            if norm.name in self._norms:
                raise UnsupportedModelError(f"{norm.name} is coupled to two different unit groups; it cannot be "
                                            "masked")
            self._norms[norm.name] = norm

    def _record(self, found, collected, buffers) -> None:
        tensors = dict(self.model.named_parameters()) | dict(self.model.named_buffers())
        for name, dim, idxs, units, is_buffer in found:
            key = (name, dim)
            if key not in collected:
                collected[key] = torch.full((tensors[name].shape[dim],), -1, dtype=torch.long)
            index = collected[key]
            new = torch.tensor(units, dtype=torch.long)
            at = torch.tensor(idxs, dtype=torch.long)
            clash = (index[at] >= 0) & (index[at] != new)
            if clash.any():
                raise UnsupportedModelError(f"{name} is coupled to two different unit groups; it cannot be masked")
            index[at] = new
            if is_buffer:
                buffers.add(name)

    def _finalize(self, collected, buffers) -> list[_SliceIndex]:
        names = dict.fromkeys(name for name, _ in collected)
        slices = []
        for name in names:
            dims = sorted(dim for named, dim in collected if named == name)
            out_dim = dims[0] if dims[0] > 1 else 0  # a tensor cut along its last dim (> 1) alone
            if out_dim and len(dims) > 1:
                raise UnsupportedModelError(f"{name} is cut along dims {dims}; only dims 0 and 1, or its last alone, "
                                            "can be masked")
            indices = []
            for dim in (out_dim, 1):
                index = collected.get((name, dim))
                if index is not None:
                    index = torch.where(index < 0, self.num_units, index)
                indices.append(index)
            slices.append(_SliceIndex(name, indices[0], indices[1], name in buffers, out_dim))
        return slices

    def consumer_indices(self) -> dict[str, torch.Tensor]:
        """Layer name -> the unit each of its input channels or features belongs to (num_units: none)."""
        modules = dict(self.model.named_modules())
        found = {}
        for entry in self._slices:
            layer = entry.name.rsplit(".", 1)[0]
            if entry.in_index is not None and isinstance(modules[layer], CONVS + (nn.Linear,)):
                # (a per-head table's columns are not a layer's inputs)
                groups = getattr(modules[layer], "groups", 1)  # a grouped conv's weight holds one block of inputs
                found[layer] = entry.in_index.repeat(groups if isinstance(modules[layer], CONVS) else 1)
        return found

    def producer_indices(self) -> dict[str, torch.Tensor]:
        """Parameter name -> the unit each of its output slices belongs to (num_units: none); token tensors
        cut along their last dim are no layer's output."""
        return {e.name: e.out_index for e in self._slices
                if e.out_index is not None and not e.is_buffer and not e.out_dim}

    @property
    def group_sizes(self) -> list[int]:
        return [g.size for g in self.groups]

    def describe(self) -> str:
        lines = [f"{self.num_units} units in {len(self.groups)} coupled groups"]
        lines += [f"  {g.root}: {g.size} units over {len(g.layers)} layers" for g in self.groups]
        lines += [f"  kept unpruned: {root} ({reason})" for root, reason in self.skipped]
        return "\n".join(lines)

    # ---- masks -----------------------------------------------------------------------------
    def _check_states(self, states: torch.Tensor) -> torch.Tensor:
        if states.shape[-1] != self.num_units:
            raise ValueError(f"a state has {self.num_units} bits for this model, got shape {tuple(states.shape)}")
        return states

    def _slice_masks(self, states: torch.Tensor, dtype: torch.dtype, device) -> dict[str, torch.Tensor]:
        """name -> mask of shape [S, *tensor.shape] broadcastable (ones where kept)."""
        states = self._check_states(states).to(device)
        extended = torch.cat([states.to(dtype), torch.ones(states.shape[0], 1, dtype=dtype, device=device)], dim=1)
        tensors = dict(self.model.named_parameters()) | dict(self.model.named_buffers())
        masks = {}
        for entry in self._slices:
            ndim = tensors[entry.name].dim()
            mask = None
            for dim, index in ((entry.out_dim, entry.out_index), (1, entry.in_index)):
                if index is None:
                    continue
                shape = [states.shape[0]] + [1] * ndim
                shape[dim + 1] = -1
                part = extended[:, index.to(device)].view(shape)
                mask = part if mask is None else mask * part
            masks[entry.name] = mask
        return masks

    def masked_parameters(self, states: torch.Tensor) -> dict[str, torch.Tensor]:
        """Parameters with the states applied, stacked along a leading dim of size S.

        Differentiable in the model's parameters: the learner's gradients flow through it.
        """
        params = dict(self.model.named_parameters())
        some = next(iter(params.values()))
        masks = self._slice_masks(states, some.dtype, some.device)
        return {name: params[name] * mask for name, mask in masks.items() if name in params}

    def keep_masks(self, state: torch.Tensor) -> dict[str, torch.Tensor]:
        """name -> bool tensor of the tensor's shape, True where an entry belongs to no pruned unit."""
        tensors = dict(self.model.named_parameters()) | dict(self.model.named_buffers())
        masks = self._slice_masks(state.unsqueeze(0), torch.float32, next(iter(tensors.values())).device)
        return {name: mask[0].expand_as(tensors[name]) > 0 for name, mask in masks.items()}

    def kept_parameters(self, state: torch.Tensor) -> int:
        """Trainable parameters the exported model of `state` has, counted without exporting it."""
        return int(self.kept_parameters_of(state.unsqueeze(0))[0])

    def kept_parameters_of(self, states: torch.Tensor) -> torch.Tensor:
        """Trainable parameters kept by each of `states` [S, U], as int64 [S]."""
        return self.kept_cost_of(states, "params")

    def kept_macs(self, state: torch.Tensor) -> int:
        """Multiply-accumulates per sample of the exported model of `state` at the example's input size."""
        return int(self.kept_cost_of(state.unsqueeze(0), "macs")[0])

    def kept_cost_of(self, states: torch.Tensor, cost: str) -> torch.Tensor:
        """What each of `states` [S, U] keeps of `cost` ('params': trainable parameters; 'macs':
        multiply-accumulates per sample, pruning/macs.py), as int64 [S]: a tensor's kept entries are its
        kept slices along dim 0 times those along dim 1 (its mask is their outer product), each entry
        weighted by what it costs. Two matrix products over every tensor at once: the sizing of a
        population calls this a few dozen times per step."""
        if cost not in COSTS:
            raise ValueError(f"cost must be one of {', '.join(COSTS)}, got {cost!r}")
        states = self._check_states(states).cpu()
        extended = torch.cat([states.double(), torch.ones(states.shape[0], 1, dtype=torch.float64)], dim=1)
        per_slice, out_units, in_units, uncut = self._cost_counter(cost)
        kept = per_slice * (extended @ out_units) * (extended @ in_units)  # [S, tensors], exact in float64
        return kept.sum(dim=1).round().long() + uncut

    def _cost_counter(self, cost: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """Per cut trainable tensor: the cost of a kept (out, in) slice pair, and the units [U + 1, tensors]
        that its slices along dims 0 and 1 follow (the always-one bit where a dim is not cut); the cost
        of the tensors no unit cuts. Built again when which parameters train changes."""
        # a frozen layer costs MACs all the same
        params = {name: p for name, p in self.model.named_parameters() if p.requires_grad or cost == "macs"}
        key = (cost, tuple(params))
        if key not in self._counters:
            # an entry's weight: 1 for parameters; for MACs, the positions a layer's weight is applied at
            weight = {name: 1.0 for name in params} if cost == "params" else \
                positions_per_weight(self.model, self.example_inputs)
            sliced = [e for e in self._slices if e.name in params]
            per_slice = torch.ones(len(sliced), dtype=torch.float64)
            units = [torch.zeros(self.num_units + 1, len(sliced), dtype=torch.float64) for _ in range(2)]
            for column, entry in enumerate(sliced):
                param = params[entry.name]
                per_slice[column] = param.numel() * weight.get(entry.name, 0.0)
                for side, (dim, index) in enumerate(((entry.out_dim, entry.out_index), (1, entry.in_index))):
                    if index is None:
                        units[side][self.num_units, column] = 1.0
                    else:
                        per_slice[column] /= param.shape[dim]
                        units[side][:, column].index_add_(0, index.cpu(), torch.ones(len(index), dtype=torch.float64))
            cut = {e.name for e in sliced}
            uncut = round(sum(p.numel() * weight.get(name, 0.0) for name, p in params.items() if name not in cut))
            self._counters = {k: v for k, v in self._counters.items() if k[0] != cost}  # a stale one
            self._counters[key] = (per_slice, units[0], units[1], uncut)
        return self._counters[key]

    # ---- forwards --------------------------------------------------------------------------
    def masked_forward(self, state: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits of the model with `state` applied (gradients flow to the kept weights)."""
        params = {name: p[0] for name, p in self.masked_parameters(state.unsqueeze(0)).items()}
        return self._call(params, state, x)

    def _call(self, params: dict[str, torch.Tensor], state: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with kept_channel_statistics(self.model, self._norms, state):
            return functional_call(self.model, params, (x,))

    # ---- at the state's size ---------------------------------------------------------------
    @property
    def at_size_supported(self) -> bool:
        """Whether states can run at their own size (at_size.py); checked once, on a half-pruned state."""
        if self._at_size_problem is False:
            self._at_size_problem = self._check_at_size()
            if self._at_size_problem is not None:
                log.warning("%s runs pruned states masked, at the dense cost: %s", type(self.model).__name__,
                            self._at_size_problem)
        return self._at_size_problem is None

    def _check_at_size(self) -> str | None:
        modules = dict(self.model.named_modules())
        if any(not sized_layer_norm(modules[norm.name]) for norm in self._norms):
            return "its GroupNorm (or LayerNorm over several dims) over channels keeps its own channel count"
        state = probe_state(self.group_sizes)
        x = self.example_inputs.to(next(self.model.parameters()).device)
        try:
            with eval_mode(self.model), torch.no_grad():
                masked, compact = self.masked_forward(state, x), self.at_size_forward(state, x)
        except Exception as error:  # a layer that keeps a size of its own (a depthwise conv's groups, ...)
            return f"{type(error).__name__}: {error}".splitlines()[0]
        scale = float(masked.abs().max())  # random-init outputs can be tiny: a tolerance relative to them
        if compact.shape != masked.shape or float((compact - masked).abs().max()) > 5e-3 * scale + 1e-12:
            return "its outputs at size differ from the masked network's (a layer keeps a size of its own)"
        return None

    def compact_tensors(self, state: torch.Tensor) -> dict[str, torch.Tensor]:
        """The cut parameters and buffers at `state`'s size (differentiable in the parameters)."""
        tensors = dict(self.model.named_parameters()) | dict(self.model.named_buffers())
        some = next(iter(tensors.values()))
        return self.layout.compact_tensors(tensors, self.layout.kept(self._check_states(state), some.device))

    def emptied_groups(self, state: torch.Tensor) -> list[str]:
        """The roots of the groups in which `state` keeps no unit (their layers would have no channels)."""
        state = self._check_states(state).detach().bool().cpu()
        return [g.root for g in self.groups if not state[g.start:g.start + g.size].any()]

    def at_size_forward(self, state: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits of `state`'s network run at its own size: what its exported model computes."""
        if emptied := self.emptied_groups(state):
            raise ValueError(f"the state keeps no unit of the group rooted at {emptied[0]!r}: at its own size that "
                             "layer would have no channels. Score it masked (masked_forward; logits does so), or keep "
                             "a unit per group (population.repair_empty_groups)")
        return run_at_size(self.model, self.compact_tensors(state), x, self.sized_layers)

    def export(self, state: torch.Tensor) -> nn.Module:
        """A physically smaller copy of the model with the pruned units removed."""
        state = self._check_states(state).bool().cpu()
        for group in self.groups:
            if not state[group.start:group.start + group.size].any():
                raise ValueError(f"the state prunes every unit of the group rooted at {group.root!r}, which would "
                                 "cut the network; keep at least one unit per group (population.repair_empty_groups)")
        return prune_physically(self.model, self.groups, self.example_inputs, state)
