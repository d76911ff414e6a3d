"""Energies by name or callable, with hand-computed values."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from edropout_ray.evolution.energies import cross_entropy_energy, margin_energy, resolve_energy
from edropout_ray.errors import ConfigError


def test_margin_energy_by_hand():
    logits = torch.tensor([[[3.0, 1.0, 0.0], [0.0, 2.0, 5.0]]])  # one state, two samples
    targets = torch.tensor([0, 1])
    # margins: 3 - 1 = 2 and 2 - 5 = -3; mean -0.5; energy = -kappa * -0.5
    assert margin_energy(logits, targets, kappa=10.0).tolist() == [5.0]


def test_cross_entropy_energy_matches_torch():
    logits = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 1, 2, 3, 0])
    expected = torch.stack([F.cross_entropy(logits[s], targets) for s in range(3)])
    torch.testing.assert_close(cross_entropy_energy(logits, targets), expected)


def test_energies_chosen_by_name():
    logits = torch.randn(2, 4, 3)
    targets = torch.tensor([0, 1, 2, 0])
    torch.testing.assert_close(resolve_energy("margin", kappa=2.0)(logits, targets, None),
                               margin_energy(logits, targets, kappa=2.0))
    assert resolve_energy("cross_entropy") is cross_entropy_energy


def test_user_callable_by_import_path(monkeypatch):
    module = types.ModuleType("my_energies")
    module.kept_units = lambda logits, targets, states: states.float().sum(dim=1)
    monkeypatch.setitem(sys.modules, "my_energies", module)
    energy = resolve_energy("my_energies:kept_units")
    states = torch.tensor([[1, 0, 1], [1, 1, 1]], dtype=torch.bool)
    assert energy(torch.zeros(2, 1, 3), torch.zeros(1, dtype=torch.long), states).tolist() == [2.0, 3.0]


@pytest.mark.parametrize("bad", ["hinge", "no_such_module_xyz:f", "edropout_ray.evolution.energies:nothing"])
def test_unknown_energy_is_a_clear_error(bad):
    with pytest.raises(ConfigError):
        resolve_energy(bad)
