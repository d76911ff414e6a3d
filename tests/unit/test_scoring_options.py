"""Folded scoring's guard, 'auto' by measurement, and the scoring options (precision, layout, sub-batch).

That folded scoring equals masked scoring on every listed model is checked with the other modes
(test_space.py, test_model_coverage.py); here are the cases around it.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from helpers import inputs_of, random_states, space_of
from edropout_ray.config import Config
from edropout_ray.pruning.measure import fastest
from edropout_ray.pruning.scoring_options import ScoringOptions
from edropout_ray.pruning.scoring import MEASURED_MODES
from edropout_ray.pruning.space import PruningSpace


class BatchCentered(nn.Module):
    """Subtracts the batch mean: the model's own code mixes samples, which folding cannot keep apart."""

    def forward(self, x):
        return x - x.mean(dim=0, keepdim=True)


def test_a_model_that_mixes_samples_is_scored_masked_not_folded():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), BatchCentered(), nn.ReLU(), nn.Linear(12, 3)).eval()
    space = PruningSpace(model, torch.randn(2, 6), scoring="folded")
    assert not space.folded_supported
    assert space.scoring_mode_for(torch.zeros(4, 6)) == "loop"
    states = random_states(space, 3, seed=1)
    x, y = torch.randn(5, 6), torch.arange(5) % 3
    expected = torch.cat([space.score(s.unsqueeze(0), x, y) for s in states])
    torch.testing.assert_close(space.score(states, x, y), expected)


def test_fastest_times_every_run_after_a_warm_up_and_picks_the_quickest():
    clock = itertools.count()  # every clock read advances one second; a run reads it by calling `tick`
    calls = {"slow": 0, "quick": 0}

    def run(name, ticks):
        def go():
            calls[name] += 1
            for _ in range(ticks):
                next(clock)
        return go

    best, times = fastest({"slow": run("slow", 5), "quick": run("quick", 1)}, clock=lambda: next(clock), repeats=3)
    assert best == "quick" and times["quick"] < times["slow"]
    assert calls == {"slow": 4, "quick": 4}  # one untimed warm-up each, then 3 timed rounds
    with pytest.raises(ValueError, match="nothing to measure"):
        fastest({})


def test_auto_is_at_size_on_a_cpu_and_measured_once_per_shape_elsewhere():
    space = space_of("small_cnn")
    x = inputs_of("small_cnn")
    assert space.scoring_mode_for(x, 4) == "at_size"
    measured = space._measured_mode(x, 3)  # what a GPU's 'auto' runs, here on the CPU
    assert measured in MEASURED_MODES
    assert space._measured == {(str(x.device), tuple(x.shape), 3): measured}
    space._measured_mode(x, 3)
    assert len(space._measured) == 1, "measured once per device, input shape and number of states"


@pytest.mark.parametrize("scoring", ["loop", "folded", "at_size"])
def test_score_batch_scores_each_state_on_the_first_samples(scoring):
    full = space_of("resnet20")
    space = PruningSpace(full.model, full.example_inputs, scoring=scoring, options=ScoringOptions(batch=3))
    states = random_states(space, 3, seed=2)
    x = inputs_of("resnet20", batch=8)
    y = torch.arange(8) % 10
    full.scoring = scoring
    try:
        torch.testing.assert_close(space.score(states, x, y), full.score(states, x[:3], y[:3]))
    finally:
        full.scoring = "auto"


@pytest.mark.parametrize("scoring", ["loop", "vmap", "folded", "at_size"])
def test_channels_last_scoring_gives_the_same_energies(scoring):
    base = space_of("resnet20")
    space = PruningSpace(base.model, base.example_inputs, scoring=scoring, options=ScoringOptions(channels_last=True))
    states = random_states(space, 2, seed=3)
    x, y = inputs_of("resnet20"), torch.arange(4)
    base.scoring = scoring
    try:
        torch.testing.assert_close(space.score(states, x, y), base.score(states, x, y), rtol=1e-4, atol=1e-4)
    finally:
        base.scoring = "auto"


@pytest.mark.parametrize("scoring", ["loop", "folded", "at_size"])
def test_bfloat16_scoring_autocasts_the_forwards_and_returns_float32_energies(scoring):
    base = space_of("small_cnn")
    space = PruningSpace(base.model, base.example_inputs, scoring=scoring, options=ScoringOptions("bfloat16"))
    states = random_states(space, 3, seed=4)
    x, y = inputs_of("small_cnn", batch=16), torch.arange(16) % 10
    assert space.logits(states, x).dtype == torch.bfloat16
    energies = space.score(states, x, y)
    assert energies.dtype == torch.float32 and torch.isfinite(energies).all()
    base.scoring = scoring
    try:
        exact = base.score(states, x, y)
    finally:
        base.scoring = "auto"
    torch.testing.assert_close(energies, exact, rtol=0.05, atol=0.05)  # bfloat16 keeps ~3 significant digits


def test_options_are_read_from_the_config_and_checked():
    options = ScoringOptions.of(Config(score_precision="bfloat16", score_channels_last=True, score_batch=32))
    assert options == ScoringOptions("bfloat16", True, 32)
    with pytest.raises(ValueError, match="score precision must be one of"):
        ScoringOptions("half")
    with pytest.raises(ValueError, match="score batch must be >= 1"):
        ScoringOptions(batch=0)
