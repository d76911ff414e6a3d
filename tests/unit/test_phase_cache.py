"""The phase cache: a run that reads a dense phase another run trained ends bit for bit as one that trains
it (the model, the global generator and the loader's generator are left as training leaves them)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from edropout_ray.config import Config
from edropout_ray.train import run
from edropout_ray.training.phase_cache import PhaseCache

CONFIG = Config(model="edropout_ray.models:small_cnn", epochs=2, max_steps_per_epoch=4, batch_size=32,
                latency_batches=[], report_extra_masks=False, dense_baseline=False, seed=3)


def _same_run(a, b, folder_a, folder_b) -> None:
    assert (a["top1"], a["test_loss"]) == (b["top1"], b["test_loss"])
    assert np.array_equal(np.load(folder_a / "final_mask.npy"), np.load(folder_b / "final_mask.npy"))


@pytest.mark.parametrize("fills, reads", [("l1", "random"), ("tp_magnitude", "tp_taylor"),
                                          ("tp_group_norm", "tp_group_norm")])
def test_a_baseline_reading_a_dense_phase_ends_as_one_that_trains_it(tmp_path, fills, reads):
    """L1 and random share their dense half, the iterative pipelines their dense quarter, at any size;
    the group-norm pipeline's sparse training is the same at every size."""
    cache = PhaseCache(tmp_path / "phases")
    run(CONFIG.replace(method=fills, prune_target_params=0.5), tmp_path / "fills", progress=False, phase_cache=cache)
    assert (cache.hits, cache.misses) == (0, 1)
    other = CONFIG.replace(method=reads, prune_target_params=0.3)
    read = run(other, tmp_path / "reads", progress=False, phase_cache=cache)
    assert (cache.hits, cache.misses) == (1, 1)
    assert read["phases_from_cache"] == 1
    trained = run(other, tmp_path / "trains", progress=False)
    _same_run(read, trained, tmp_path / "reads", tmp_path / "trains")


def test_another_seed_or_training_setting_is_not_read_from_the_cache(tmp_path):
    cache = PhaseCache(tmp_path / "phases")
    run(CONFIG.replace(method="l1"), tmp_path / "a", progress=False, phase_cache=cache)
    run(CONFIG.replace(method="l1", seed=4), tmp_path / "b", progress=False, phase_cache=cache)
    run(CONFIG.replace(method="l1", lr=0.01), tmp_path / "c", progress=False, phase_cache=cache)
    assert (cache.hits, cache.misses) == (0, 3)
    assert len(list((tmp_path / "phases").glob("dense-*.pt"))) == 3


def test_the_dense_reference_is_trained_once_for_every_size(tmp_path):
    cache = PhaseCache(tmp_path / "phases")
    config = CONFIG.replace(dense_baseline=True, prune_target_params=0.5)
    run(config, tmp_path / "fills", progress=False, phase_cache=cache)
    assert (cache.hits, cache.misses) == (0, 1)
    other = config.replace(prune_target_params=0.3)
    read = run(other, tmp_path / "reads", progress=False, phase_cache=cache)
    assert (cache.hits, cache.misses) == (1, 1)
    trained = run(other, tmp_path / "trains", progress=False)
    assert (read["dense_top1"], read["dense_test_loss"]) == (trained["dense_top1"], trained["dense_test_loss"])
    _same_run(read, trained, tmp_path / "reads", tmp_path / "trains")
    assert json.loads((tmp_path / "reads" / "report.json").read_text())["phases_from_cache"] == 1
    again = run(other, tmp_path / "again", progress=False, phase_cache=cache)
    assert again["phases_from_cache"] == 1, "a report counts its own run's reads, not the cache's"


def test_an_unreadable_entry_is_trained_again_and_replaced(tmp_path, caplog):
    cache = PhaseCache(tmp_path / "phases")
    config = CONFIG.replace(method="l1")
    first = run(config, tmp_path / "first", progress=False, phase_cache=cache)
    [entry] = (tmp_path / "phases").glob("dense-*.pt")
    entry.write_bytes(b"not a checkpoint")
    with caplog.at_level(logging.WARNING, logger="edropout_ray.training.phase_cache"):
        again = run(config, tmp_path / "again", progress=False, phase_cache=cache)
    assert any("unreadable" in r.getMessage() and entry.name in r.getMessage() for r in caplog.records)
    assert (cache.hits, cache.misses) == (0, 2)
    _same_run(first, again, tmp_path / "first", tmp_path / "again")
    assert PhaseCache(tmp_path / "phases")._read(entry) is not None, "the entry was written anew"
