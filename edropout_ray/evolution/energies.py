"""Energies: lower is better; one value per state.

An energy is any callable `(logits[S, B, K], targets[B], states[S, U]) -> Tensor[S]`, so a new
pruning objective plugs in without touching the optimizer (Salehinejad & Valaee, 2021).
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F

from ..choices import ENERGIES
from ..errors import ConfigError
from ..imports import import_object

Energy = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def margin_energy(logits: torch.Tensor, targets: torch.Tensor, states: torch.Tensor | None = None,
                  *, kappa: float = 10.0) -> torch.Tensor:
    """-kappa * mean margin, the margin being z[y] minus the largest other logit."""
    del states
    targets = targets.expand(logits.shape[0], -1).unsqueeze(-1)
    true_logit = logits.gather(-1, targets).squeeze(-1)
    others = logits.scatter(-1, targets, float("-inf"))
    margins = true_logit - others.amax(dim=-1)
    return -kappa * margins.mean(dim=-1)


def cross_entropy_energy(logits: torch.Tensor, targets: torch.Tensor,
                         states: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of each masked network on the batch."""
    del states
    num_states, batch = logits.shape[:2]
    losses = F.cross_entropy(logits.flatten(0, 1), targets.repeat(num_states), reduction="none")
    return losses.view(num_states, batch).mean(dim=1)


BUILTIN_ENERGIES = ENERGIES


def resolve_energy(energy: str | Energy, kappa: float = 10.0) -> Energy:
    """Turn a config value (a built-in name, 'package.module:function' or a callable) into an energy."""
    if callable(energy):
        return energy
    if energy == "margin":
        return functools.partial(margin_energy, kappa=kappa)
    if energy == "cross_entropy":
        return cross_entropy_energy
    if isinstance(energy, str) and ":" in energy:
        return import_object(energy, what="energy")
    raise ConfigError(
        f"unknown energy {energy!r}: use one of {', '.join(BUILTIN_ENERGIES)} or "
        "'package.module:function' for a callable (logits[S,B,K], targets[B], states[S,U]) -> Tensor[S]"
    )
