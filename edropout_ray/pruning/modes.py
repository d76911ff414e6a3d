"""The modes a forward runs in: eval for tracing and checks, and scoring without side effects."""

from __future__ import annotations

import contextlib

from torch import nn

from .groups import NORMS


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def scoring_mode(model: nn.Module):
    """Score without side effects: batch statistics are used but never stored, dropout is off.

    Normalization layers keep the model's mode (batch statistics while training, running
    statistics in eval), so an energy sees the network as the learner's step will.
    """
    changed_norms = [m for m in model.modules() if isinstance(m, NORMS) and m.track_running_stats and m.training]
    changed_dropouts = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.training]
    for m in changed_norms:
        m.track_running_stats = False
    for m in changed_dropouts:
        m.eval()
    try:
        yield
    finally:
        for m in changed_norms:
            m.track_running_stats = True
        for m in changed_dropouts:
            m.train()
