"""How a pruning space scores S states on a batch: the scoring modes, 'auto's choice among them, and energies.

Every mode computes the masked network of each state (docs/design.md, invariant 2); they differ in
cost. `loop`: one masked forward per state. `vmap`: the masked weights of all states stacked, one
vmapped forward. `at_size`: each state's network at its own size (at_size.py). `folded`: the
states' inputs in one batch of S x B samples on the dense weights, units zeroed in the activations
(folded.py). A mode a model cannot run exactly (checked once per model) falls back to `loop`.
"""

from __future__ import annotations

import logging

import torch
from torch.func import vmap

from ..evolution.energies import Energy, resolve_energy
from .at_size import preferred_layout, probe_state
from .folded import consumer_masks, folded_logits, producer_masks
from .measure import fastest
from .modes import eval_mode, scoring_mode

log = logging.getLogger(__name__)

# what 'auto' measures on a GPU (at size is left out: every new channel count costs a new kernel plan)
MEASURED_MODES = ("folded", "vmap", "loop")


class StateScoring:
    """The scoring half of `PruningSpace` (space.py), which holds the model, its units and masked forwards."""

    # ---- folded: the states in one batch -----------------------------------------------------
    @property
    def folded_supported(self) -> bool:
        """Whether the states can be scored folded (folded.py); checked once, against the masked forward."""
        if self._folded_problem is False:
            self._folded_problem = self._check_folded()
            if self._folded_problem is not None:
                log.warning("%s is scored masked instead of folded: %s", type(self.model).__name__,
                            self._folded_problem)
        return self._folded_problem is None

    def _check_folded(self) -> str | None:
        states = torch.stack([probe_state(self.group_sizes), torch.ones(self.num_units)])
        x = self.example_inputs.to(next(self.model.parameters()).device)
        try:
            with eval_mode(self.model), torch.no_grad():
                masked = torch.stack([self.masked_forward(state, x) for state in states])
                folded = self.folded_logits(states, x)
        except Exception as error:  # a model whose code reads the batch size, ...
            return f"{type(error).__name__}: {error}".splitlines()[0]
        scale = float(masked.abs().max())
        if folded.shape != masked.shape or float((folded - masked).abs().max()) > 5e-3 * scale + 1e-12:
            return "its folded outputs differ from the masked network's (its code mixes the samples of a batch)"
        return None

    def folded_logits(self, states: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits [S, B, K] of the states masked, run as one batch of S x B samples on the dense weights."""
        if self._activation_masks is None:
            self._activation_masks = (producer_masks(self.model, self.producer_indices(), self._norms),
                                      consumer_masks(self.model, self.consumer_indices()))
        producers, consumers = self._activation_masks
        return folded_logits(self.model, self._check_states(states), x, producers, consumers, self._norms)

    # ---- scoring -----------------------------------------------------------------------------
    def scoring_mode_for(self, x: torch.Tensor, count: int = 1) -> str:
        """The mode `count` states are scored in on `x`. 'auto': at size on a CPU where the model allows
        it; on a GPU the fastest of folded, vmap and loop, measured once per input shape.
        Measured (docs/performance.md): on a CPU at size is the fastest for every model tried; on a
        GPU every new channel count costs the convolution library a new plan, and the states of an
        evolving population bring new ones at every step, while the masked modes run fixed shapes."""
        mode = self.scoring
        if mode == "auto":
            mode = self._measured_mode(x, count) if x.device.type == "cuda" else "at_size"
        if mode == "at_size" and not self.at_size_supported:
            mode = "loop"
        if mode == "folded" and not self.folded_supported:
            mode = "loop"
        return mode

    def _measured_mode(self, x: torch.Tensor, count: int) -> str:
        key = (str(x.device), tuple(x.shape), count)
        if key not in self._measured:
            states = probe_state(self.group_sizes, x.device).expand(count, -1)
            modes = [m for m in MEASURED_MODES if m != "folded" or self.folded_supported]
            sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
            with torch.no_grad(), scoring_mode(self.model), self.options.autocast(x.device):
                runs = {mode: (lambda mode=mode: self._logits_in(mode, states, x)) for mode in modes}
                self._measured[key], times = fastest(runs, sync)
            log.info("scoring %d states of shape %s on %s: %s (%s)", count, tuple(x.shape), x.device,
                     self._measured[key], ", ".join(f"{m} {t * 1e3:.1f} ms" for m, t in times.items()))
        return self._measured[key]

    @torch.no_grad()
    def logits(self, states: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits of every state on the batch: [S, B, K], without touching weights or statistics.

        In the model's dtype, or the autocast one with score_precision bfloat16 or float16."""
        states = self._check_states(states)
        x = self.options.layout(x)
        mode = self.scoring_mode_for(x, len(states))
        with scoring_mode(self.model), self.options.autocast(x.device):
            return self._logits_in(mode, states, x)

    def _logits_in(self, mode: str, states: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if mode == "vmap":
            stacked = self.masked_parameters(states)
            # randomness in the forward (stochastic depth while training, drawn in place on an unbatched
            # tensor) is drawn once for all the states of the call: every state sees the same draw
            return vmap(lambda params, state: self._call(params, state, x),
                        randomness="same")(stacked, states.to(x.device))
        if mode == "folded":
            return self.folded_logits(states, x)
        if mode == "at_size":
            x = preferred_layout(x)  # once for every state
            # a state that empties a layer has no network at its size; masked, its energy is still defined
            return torch.stack([self.masked_forward(state, x) if self.emptied_groups(state)
                                else self.at_size_forward(state, x) for state in states])
        return torch.stack([self.masked_forward(state, x) for state in states])

    def score(self, states: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
              energy: str | Energy = "margin", kappa: float = 10.0) -> torch.Tensor:
        """Energy of every state on (x, y): Tensor[S], lower is better (on score_batch samples if set)."""
        x, y = self.options.sub_batch(x, y)
        logits = self.logits(states, x)
        if logits.dtype in (torch.float16, torch.bfloat16):  # autocast: energies in float32
            logits = logits.float()
        return resolve_energy(energy, kappa)(logits, y, states).detach()
