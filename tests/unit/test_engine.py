"""The EDropout step on real data: learning, reproducibility, early state convergence, NaN losses."""

from __future__ import annotations

import math

import pytest
import torch

from edropout_ray.config import Config
from edropout_ray.data import load_dataset
from edropout_ray.training.step import EDropoutEngine
from edropout_ray.errors import NonFiniteLossError
from edropout_ray.models import small_cnn
from edropout_ray.pruning.space import PruningSpace


@pytest.fixture(scope="module")
def digits_batch():
    data = load_dataset("digits", "unused")
    xs, ys = zip(*(data.train[i] for i in range(64)))
    return torch.stack(xs), torch.tensor(ys)


# the paper's schedule: the learner trains the best state from the first step (the default trains every
# unit until the search's deadline, which these tests of the population's mechanics do not want)
PAPER = dict(train_while_searching="best", dense_warmup=0.0, freeze_by=None)


def make_engine(config: Config, x) -> EDropoutEngine:
    torch.manual_seed(config.seed)
    return EDropoutEngine(PruningSpace(small_cnn(), x), config)


def test_kept_weights_learn(digits_batch):
    x, y = digits_batch
    engine = make_engine(Config(seed=1, **PAPER), x)
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
    engine.finish()  # the dense model holds what the learner trained at size
    before = {k: v.clone() for k, v in engine.space.model.state_dict().items()}
    with pytest.raises(NonFiniteLossError, match="lower lr"):
        engine.learner.step(engine.best_state, torch.full_like(x, float("nan")), y)
    after = engine.space.model.state_dict()
    for name, value in before.items():
        assert torch.equal(after[name], value), f"{name} changed by a NaN batch"


class _Recorder:
    """Wraps a scorer and notes (number of states, batch size) of every call."""

    def __init__(self, scorer):
        self.scorer, self.calls, self.energies = scorer, [], []

    def __call__(self, states, x, y):
        self.calls.append((len(states), len(x)))
        self.energies.append(self.scorer(states, x, y))
        return self.energies[-1]


def test_paired_selection_scores_parents_and_children_on_half_the_batch(digits_batch):
    x, y = digits_batch
    engine = make_engine(Config(seed=0, selection="paired"), x)
    engine.scorer = recorder = _Recorder(engine.scorer)
    parents = engine.population.states.clone()
    engine.step(x, y, epoch=0)
    assert recorder.calls == [(2 * 8, len(x) // 2)], "one call: S parents and S children, on half the batch"
    expected = recorder.energies[0]
    kept_parent = ~(engine.population.states != parents).any(dim=1)
    assert torch.allclose(engine.population.energies[kept_parent], expected[:8][kept_parent])
    assert torch.allclose(engine.population.energies[~kept_parent], expected[8:][~kept_parent])


def test_reference_selection_scores_only_children_after_the_first_step(digits_batch):
    x, y = digits_batch
    engine = make_engine(Config(seed=0, selection="reference"), x)
    engine.scorer = recorder = _Recorder(engine.scorer)
    engine.step(x, y, epoch=0)
    engine.step(x, y, epoch=0)
    assert recorder.calls == [(8, len(x)), (8, len(x)), (8, len(x))]


def test_a_stalled_selection_is_not_convergence(digits_batch):
    """No child is ever accepted, but the parents' fresh energies keep changing the best member."""
    x, y = digits_batch
    engine = make_engine(Config(seed=0, converge_after=0, converge_patience=5), x)
    noise = torch.Generator().manual_seed(1)

    def stalled(states, xb, yb):
        half = len(states) // 2
        return torch.cat([torch.rand(half, generator=noise), torch.full((half,), 10.0)])

    engine.scorer = stalled
    records = [engine.step(x, y, epoch=1) for _ in range(40)]
    assert all(r.accepted == 0 for r in records)
    assert not engine.frozen, engine.freeze_reason
    assert records[-1].diversity > 0.3


def test_a_population_that_agrees_freezes(digits_batch):
    x, y = digits_batch
    engine = make_engine(Config(seed=0, converge_after=0, converge_patience=1000), x)
    engine.population.states[:] = engine.population.states[0]
    engine.scorer = lambda states, xb, yb: torch.cat([torch.rand(len(states) // 2), torch.full((len(states) // 2,), 9.0)])
    record = engine.step(x, y, epoch=0)
    assert record.diversity == 0.0
    assert engine.frozen and "agrees" in engine.freeze_reason
    assert torch.equal(engine.final_mask, engine.population.states[0])


@pytest.mark.slow
def test_default_selection_keeps_accepting_until_it_converges():
    """Digits, the default selection: children are still accepted in the epoch before the freeze,
    and the freeze comes from the states' convergence test."""
    data = load_dataset("digits", "unused", seed=0)
    loader = torch.utils.data.DataLoader(data.train, batch_size=64, shuffle=True,
                                         generator=torch.Generator().manual_seed(0), drop_last=True)
    x0, _ = next(iter(loader))
    engine = make_engine(Config(seed=0, converge_after=3, **PAPER), x0)
    records = []
    for epoch in range(12):
        for x, y in loader:
            records.append(engine.step(x, y, epoch))
        if engine.frozen:
            break
    assert engine.frozen, "the population converged within 12 epochs"
    frozen_at = next(r for r in records if r.frozen)
    before = [r for r in records if r.epoch == frozen_at.epoch - 1]
    assert sum(r.accepted for r in before) > 0, "selection still accepted children in the epoch before the freeze"
    assert engine.freeze_reason is not None


def test_dense_warmup_trains_every_unit_before_the_population_starts(digits_batch):
    x, y = digits_batch
    engine = make_engine(Config(seed=0, **(PAPER | {"dense_warmup": 0.5})), x)
    engine.plan(total_steps=6)
    calls = []
    inner = engine.scorer
    engine.scorer = lambda states, xb, yb: calls.append(len(states)) or inner(states, xb, yb)
    records = [engine.step(x, y, epoch=0) for _ in range(6)]
    assert [r.kept_fraction for r in records[:3]] == [1.0] * 3 and calls[:1] == [16]
    assert len(calls) == 3 and all(r.kept_fraction < 1 for r in records[3:])  # scored only after the warm-up
    assert all(r.best_energy == math.inf for r in records[:3])  # no energies yet


def test_no_search_freezes_the_energy_best_initial_state(digits_batch):
    x, y = digits_batch
    engine = make_engine(Config(seed=0, search=False), x)
    initial = engine.population.states.clone()
    energies = engine.space.score(initial, x, y, energy="margin", kappa=10.0)
    record = engine.step(x, y, epoch=0)
    assert engine.frozen and record.accepted == 0
    assert torch.equal(engine.final_mask, initial[int(torch.argmin(energies))])
    engine.step(x, y, epoch=0)
    assert torch.equal(engine.population.states, initial)  # nothing evolves afterwards


def test_train_top_draws_the_learners_state_from_the_best_few(digits_batch):
    x, y = digits_batch
    engine = make_engine(Config(seed=0, train_top=3, **PAPER), x)
    trained = []
    inner = engine.learner.step
    engine.learner.step = lambda state, xb, yb: trained.append(state.clone()) or inner(state, xb, yb)
    for _ in range(6):
        engine.step(x, y, epoch=0)
        best_three = engine.population.states[torch.argsort(engine.population.energies, stable=True)[:3]]
        assert any(torch.equal(trained[-1], s) for s in best_three)
    assert len({tuple(s.tolist()) for s in trained}) > 1


@pytest.mark.parametrize("cost, target", [("params", 0.5), ("params", 0.25), ("macs", 0.25)])
@pytest.mark.parametrize("widths", ["uniform", "searched"])
def test_a_size_target_holds_every_state_to_the_size(digits_batch, cost, target, widths):
    from edropout_ray.evolution.population import kept_per_group
    from edropout_ray.pruning.sizing import size_fraction

    x, y = digits_batch
    engine = make_engine(Config(seed=0, layer_widths=widths, **{f"prune_target_{cost}": target}), x)
    widths_seen = set()
    for _ in range(4):
        engine.step(x, y, epoch=0)
        for state in engine.population.states:
            assert abs(size_fraction(engine.space, state, cost) - target) < 0.02
            widths_seen.add(tuple(kept_per_group(state, engine.space.group_sizes).tolist()))
    assert (len(widths_seen) == 1) == (widths == "uniform")  # searched: states differ in their layers' widths


@pytest.mark.parametrize("train_at_size", [True, False])
def test_cosine_schedule_anneals_per_step_to_zero_when_the_runs_length_is_known(digits_batch, train_at_size):
    x, y = digits_batch
    config = Config(seed=0, lr=0.1, train_at_size=train_at_size)
    torch.manual_seed(0)
    engine = EDropoutEngine(PruningSpace(small_cnn(), x), config, total_steps=4)
    rates = []
    for _ in range(4):
        engine.step(x, y, epoch=0)
        rates.append(engine.learner.learning_rate())
    engine.end_epoch()  # no second decay at the end of an epoch
    assert rates == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in (1, 2, 3, 4)])
    assert engine.learner.learning_rate() == pytest.approx(0.0)
    per_epoch = make_engine(config, x)  # without the length: once per epoch, over config.epochs
    per_epoch.step(x, y, epoch=0)
    assert per_epoch.learner.learning_rate() == 0.1


def test_dense_search_trains_every_unit_until_its_deadline_then_the_frozen_mask(digits_batch):
    x, y = digits_batch
    config = Config(seed=0, train_while_searching="dense", dense_warmup=0.25, freeze_by=0.5, converge_after=None)
    engine = make_engine(config, x)
    engine.plan(total_steps=8)
    trained = []
    inner = engine.learner.step
    engine.learner.step = lambda state, xb, yb: trained.append(state.clone()) or inner(state, xb, yb)
    records = [engine.step(x, y, epoch=0) for _ in range(8)]
    assert all(bool(s.all()) for s in trained[:4])  # warm-up, then the search on equally trained weights
    assert all(math.isfinite(r.best_energy) for r in records[2:4])  # scored from the end of the warm-up
    assert [r.frozen for r in records] == [False] * 4 + [True] * 4  # frozen after step 4 of 8
    assert "deadline" in engine.freeze_reason
    assert all(torch.equal(s, engine.final_mask) for s in trained[4:]) and not bool(engine.final_mask.all())


def test_no_search_with_a_deadline_freezes_the_initial_best_at_the_deadline(digits_batch):
    x, y = digits_batch
    config = Config(seed=0, train_while_searching="dense", freeze_by=0.5, search=False, converge_after=None)
    engine = make_engine(config, x)
    engine.plan(total_steps=4)
    initial = engine.population.states.clone()
    frozen = [engine.step(x, y, epoch=0).frozen for _ in range(4)]
    assert frozen == [False, False, True, True]
    assert any(torch.equal(engine.final_mask, s) for s in initial)


@pytest.mark.parametrize("train_at_size", [True, False])
def test_lr_restart_rewinds_the_rate_when_the_mask_freezes_and_survives_a_checkpoint(digits_batch, train_at_size):
    x, y = digits_batch
    config = Config(seed=0, lr=0.1, dense_warmup=0.25, freeze_by=0.5, converge_after=None,
                    lr_after_freeze="restart", train_at_size=train_at_size)
    torch.manual_seed(0)
    engine = EDropoutEngine(PruningSpace(small_cnn(), x), config, total_steps=8)
    engine.plan(total_steps=8)
    rates = []
    for _ in range(8):
        engine.step(x, y, epoch=0)
        rates.append(engine.learner.learning_rate())
        if len(rates) == 5:
            saved = engine.state_dict()
    # frozen by step 4 of 8: the rate starts again from lr and anneals to zero over the last 4 steps
    assert rates[:3] == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * k / 8)) for k in (1, 2, 3)])
    assert rates[3:] == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in (0, 1, 2, 3, 4)])
    torch.manual_seed(0)
    resumed = EDropoutEngine(PruningSpace(small_cnn(), x), config, total_steps=8)
    resumed.plan(total_steps=8)
    resumed.load_state_dict(saved)
    resumed.step(x, y, epoch=0)
    assert resumed.learner.learning_rate() == pytest.approx(rates[5])  # the rewound schedule, not the original one


def test_lr_after_freeze_continue_keeps_one_cosine(digits_batch):
    x, y = digits_batch
    config = Config(seed=0, lr=0.1, dense_warmup=0.25, freeze_by=0.5, converge_after=None, lr_after_freeze="continue")
    torch.manual_seed(0)
    engine = EDropoutEngine(PruningSpace(small_cnn(), x), config, total_steps=8)
    engine.plan(total_steps=8)
    rates = []
    for _ in range(8):
        engine.step(x, y, epoch=0)
        rates.append(engine.learner.learning_rate())
    assert rates == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(1, 9)])
