"""The frozen mask held to a latency target by timing it: the fitting loop against a device whose time
is known (so the arithmetic can be checked exactly), and the engine's hook that applies it once, on
the step the mask freezes, surviving a checkpoint."""

from __future__ import annotations

import pytest
import torch

from edropout_ray.artifacts import latency_fit
from edropout_ray.artifacts.latency_fit import describe_fit, fit_to_latency
from edropout_ray.artifacts.latency_model import LatencyGoal, LatencyModel
from edropout_ray.config import Config
from edropout_ray.data import load_dataset
from edropout_ray.models import small_cnn
from edropout_ray.pruning.sizing import size_fraction
from edropout_ray.pruning.space import PruningSpace
from edropout_ray.training.step import EDropoutEngine

UNIFORM_CURVE = LatencyModel(key={"batch": 16}, points=[[0.1, 0.1], [1.0, 1.0]])  # time = MACs, over uniform widths


@pytest.fixture(scope="module")
def digits_batch():
    data = load_dataset("digits", "unused")
    xs, ys = zip(*(data.train[i] for i in range(64)))
    return torch.stack(xs), torch.tensor(ys)


def engine_for(x, **changes) -> EDropoutEngine:
    torch.manual_seed(0)
    config = Config(**{"seed": 0, "prune_target_macs": 0.5, "dense_warmup": 0.25, "freeze_by": 0.5,
                       "converge_after": None, "channel_multiple": 1, **changes})
    return EDropoutEngine(PruningSpace(small_cnn(), x), config)


def a_device_faster_than_the_curve(space: PruningSpace, factor: float, calls: list):
    """measured_fraction on a device where every mask takes `factor` of what the uniform curve predicts."""
    def measured(space_, state, batch, repeats):
        calls.append(state.clone())
        return factor * size_fraction(space, state, "macs")
    return measured


def test_a_mask_faster_than_predicted_is_widened_until_its_time_meets_the_target(digits_batch, monkeypatch):
    x, _ = digits_batch
    engine = engine_for(x)
    state = engine.population.states[0]
    assert size_fraction(engine.space, state, "macs") == pytest.approx(0.5, abs=0.01)
    calls = []
    monkeypatch.setattr(latency_fit, "measured_fraction", a_device_faster_than_the_curve(engine.space, 0.8, calls))
    fitted, rounds = fit_to_latency(engine.space, state, LatencyGoal(0.5, UNIFORM_CURVE), engine.resized, repeats=5)
    # 0.5 of the MACs takes 0.4: the curve scaled by 0.8 asks for 0.625 of the MACs, which takes 0.5
    assert rounds[0]["measured_fraction"] == pytest.approx(0.4, abs=0.01)
    assert size_fraction(engine.space, fitted, "macs") == pytest.approx(0.625, abs=0.01)
    assert abs(rounds[-1]["measured_fraction"] / 0.5 - 1) <= latency_fit.TOLERANCE and rounds[-1]["chosen"]
    assert len(rounds) == len(calls) == 2
    assert bool((fitted | state).eq(fitted).all()), "widened: every unit the frozen mask kept is still kept"
    assert "resized to 0.62" in describe_fit(rounds, 0.5) or "resized to 0.63" in describe_fit(rounds, 0.5)


def test_a_mask_that_meets_the_target_is_kept_after_one_timing(digits_batch, monkeypatch):
    x, _ = digits_batch
    engine = engine_for(x)
    state = engine.population.states[0]
    calls = []
    monkeypatch.setattr(latency_fit, "measured_fraction", a_device_faster_than_the_curve(engine.space, 0.97, calls))
    fitted, rounds = fit_to_latency(engine.space, state, LatencyGoal(0.5, UNIFORM_CURVE), engine.resized, repeats=5)
    assert torch.equal(fitted, state) and len(calls) == 1
    assert describe_fit(rounds, 0.5).endswith("kept as it froze")


def test_the_timing_closest_to_the_target_wins_when_the_rounds_run_out(digits_batch, monkeypatch):
    x, _ = digits_batch
    engine = engine_for(x)
    state = engine.population.states[0]
    times = iter([0.40, 0.62, 0.43, 0.54])  # a device that never settles within 5%: the closest timing is kept
    monkeypatch.setattr(latency_fit, "measured_fraction", lambda *args: next(times))
    fitted, rounds = fit_to_latency(engine.space, state, LatencyGoal(0.5, UNIFORM_CURVE), engine.resized, repeats=5)
    assert [r["measured_fraction"] for r in rounds] == [0.40, 0.62, 0.43, 0.54]
    assert [r["chosen"] for r in rounds] == [False, False, False, True]
    assert size_fraction(engine.space, fitted, "macs") == pytest.approx(rounds[3]["macs_fraction"])


def test_the_hook_replaces_the_mask_once_on_the_freezing_step_and_a_resume_keeps_it(digits_batch):
    x, y = digits_batch
    engine = engine_for(x)
    engine.plan(total_steps=6)
    seen = []

    def widen_to_60(mask, resize):
        seen.append(mask.clone())
        return resize(mask, 0.6), "widened for the test"

    engine.on_freeze = widen_to_60
    trained = []
    inner = engine.learner.step
    engine.learner.step = lambda state, xb, yb: trained.append(state.clone()) or inner(state, xb, yb)
    for _ in range(4):
        engine.step(x, y, epoch=0)
    assert len(seen) == 1, "called on the freezing step only"
    assert engine.freeze_reason.endswith("; widened for the test") and "deadline" in engine.freeze_reason
    assert size_fraction(engine.space, engine.final_mask, "macs") == pytest.approx(0.6, abs=0.01)
    assert torch.equal(trained[-1], engine.final_mask), "the steps after the freeze train the replaced mask"
    saved = engine.state_dict()
    resumed = engine_for(x)
    resumed.plan(total_steps=6)
    resumed.on_freeze = widen_to_60
    resumed.load_state_dict(saved)
    resumed.step(x, y, epoch=0)
    assert len(seen) == 1 and torch.equal(resumed.final_mask, engine.final_mask), "a resume does not fit again"


def test_a_frozen_mask_off_the_multiple_and_slow_brackets_nothing(digits_batch, monkeypatch):
    x, _ = digits_batch
    engine = engine_for(x, channel_multiple=8)
    counts = torch.tensor([13, 27, 61, 70])  # small_cnn (groups of 32, 64, 128, 128) at odd widths
    from edropout_ray.evolution.population import set_kept_counts

    frozen = set_kept_counts(torch.ones(1, engine.space.num_units, dtype=torch.bool), engine.space.group_sizes, counts,
                             torch.Generator().manual_seed(1))[0]
    macs = size_fraction(engine.space, frozen, "macs")
    assert not torch.equal(engine.resized(frozen, macs), frozen), "the test needs a mask the rounding would change"

    def measured(space_, state, batch, repeats):  # odd widths run slow here; rounded ones at 0.8 of the curve
        return 0.62 if torch.equal(state, frozen) else 0.8 * size_fraction(engine.space, state, "macs")

    monkeypatch.setattr(latency_fit, "measured_fraction", measured)
    fitted, rounds = fit_to_latency(engine.space, frozen, LatencyGoal(0.5, UNIFORM_CURVE), engine.resized, repeats=5)
    assert [r["nested"] for r in rounds][:2] == [False, True]
    # with the slow mask as the bracket's upper end the fit would have stayed below 0.5 of the MACs
    assert abs(rounds[-1]["measured_fraction"] / 0.5 - 1) <= latency_fit.TOLERANCE and rounds[-1]["chosen"], rounds
    assert size_fraction(engine.space, fitted, "macs") > macs
