"""The EDropout step on real data: learning, reproducibility, early state convergence, NaN losses."""

from __future__ import annotations

import pytest
import torch

from edropout_ray.config import Config
from edropout_ray.data import load_dataset
from edropout_ray.engine import EDropoutEngine
from edropout_ray.errors import NonFiniteLossError
from edropout_ray.models import small_cnn
from edropout_ray.space import PruningSpace


@pytest.fixture(scope="module")
def digits_batch():
    data = load_dataset("digits", "unused")
    xs, ys = zip(*(data.train[i] for i in range(64)))
    return torch.stack(xs), torch.tensor(ys)


def make_engine(config: Config, x) -> EDropoutEngine:
    torch.manual_seed(config.seed)
    return EDropoutEngine(PruningSpace(small_cnn(), x), config)


def test_kept_weights_learn(digits_batch):
    x, y = digits_batch
    engine = make_engine(Config(seed=1), x)
    first = engine.step(x, y, epoch=0)
    for _ in range(15):
        last = engine.step(x, y, epoch=0)
    assert last.loss < first.loss
    assert 0 < last.kept_fraction < 1


def test_same_seed_same_masks(digits_batch):
    x, y = digits_batch
    runs = []
    for _ in range(2):
        engine = make_engine(Config(seed=3), x)
        masks = []
        for _ in range(4):
            engine.step(x, y, epoch=0)
            masks.append(engine.best_state.clone())
        runs.append(masks)
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    other = make_engine(Config(seed=4), x)
    other.step(x, y, epoch=0)
    assert not torch.equal(other.best_state, runs[0][0])


def test_population_freezes_and_then_trains_at_plain_cost(digits_batch):
    x, y = digits_batch
    engine = make_engine(Config(seed=0, converge_after=1, converge_patience=3), x)
    calls = []
    inner = engine.scorer
    engine.scorer = lambda states, xb, yb: calls.append(len(states)) or inner(states, xb, yb)
    for _ in range(5):
        engine.step(x, y, epoch=0)
    assert not engine.frozen, "must not freeze before converge_after"
    for _ in range(200):
        record = engine.step(x, y, epoch=1)
        if record.frozen:
            break
    assert engine.frozen, "the best energy on a fixed batch stops changing"
    mask, scored = engine.best_state.clone(), len(calls)
    for _ in range(3):
        engine.step(x, y, epoch=2)
    assert len(calls) == scored, "no scoring after the mask is frozen"
    assert torch.equal(engine.best_state, mask)


def test_never_freezes_without_converge_after(digits_batch):
    x, y = digits_batch
    engine = make_engine(Config(seed=0, converge_after=None, converge_patience=1), x)
    for _ in range(5):
        engine.step(x, y, epoch=5)
    assert not engine.frozen


def test_nan_loss_is_a_clear_error_and_changes_nothing(digits_batch):
    x, y = digits_batch
    engine = make_engine(Config(seed=0), x)
    engine.step(x, y, epoch=0)
    before = {k: v.clone() for k, v in engine.space.model.state_dict().items()}
    with pytest.raises(NonFiniteLossError, match="lower lr"):
        engine.learner.step(engine.best_state, torch.full_like(x, float("nan")), y)
    after = engine.space.model.state_dict()
    for name, value in before.items():
        assert torch.equal(after[name], value), f"{name} changed by a NaN batch"
