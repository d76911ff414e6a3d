"""A latency target: the measured latency model's arithmetic, its cache, and a run held by it whose report
checks the exported model against the target."""

from __future__ import annotations

import json

import pytest

from edropout_ray.artifacts.latency_model import (FILE, LatencyModel, check_against_target, latency_model_for,
                                                  macs_target_for_latency)
from edropout_ray.artifacts.report import describe_latency_target
from edropout_ray.artifacts.storage import open_folder
from edropout_ray.config import Config
from edropout_ray.errors import ConfigError

from helpers import space_of

CURVE = LatencyModel(key={}, points=[[0.1, 0.3], [0.3, 0.5], [0.5, 0.45], [1.0, 1.0]])


def test_latency_is_made_monotone_in_the_macs_and_inverted():
    assert CURVE.latency_at(0.2) == pytest.approx(0.4)
    assert CURVE.latency_at(0.5) == pytest.approx(0.5), "a dip below a smaller width is not trusted"
    assert CURVE.macs_for(0.5) == pytest.approx(0.5), "the largest MACs predicted within the target"
    assert CURVE.macs_for(0.75) == pytest.approx(0.75)
    assert CURVE.macs_for(0.4) == pytest.approx(0.2)
    assert CURVE.macs_for(1.0) == 1.0


def test_a_target_below_the_smallest_width_keeps_that_width_and_says_so(caplog):
    assert macs_target_for_latency(CURVE, 0.2) == pytest.approx(0.1)
    assert "below what the smallest width measured reaches (0.30" in caplog.text


def test_a_miss_is_one_the_measurements_spread_does_not_cover():
    row = {"batch": 64, "speedup": 1.6, "speedup_interval": [1.5, 1.7], "dense_ms": 8.0, "dense_ms_iqr": [7.9, 8.1],
           "pruned_ms": 5.0, "pruned_ms_iqr": [4.9, 5.1]}
    met = check_against_target(row, target=0.62, predicted=0.6)
    assert not met["missed"] and met["measured_fraction"] == pytest.approx(1 / 1.6)
    missed = check_against_target(row, target=0.5, predicted=0.5)
    assert missed["missed"] and missed["over_by"] == pytest.approx(0.25)
    assert describe_latency_target(missed).startswith("MISSED the latency target 0.50 at batch 64")
    assert "met within the measurement's spread" in describe_latency_target(met)


def test_the_model_is_measured_once_and_reused_for_the_same_key(tmp_path, caplog):
    caplog.set_level("INFO")
    space = space_of("small_cnn")
    folder = open_folder(tmp_path)
    first = latency_model_for(space, "small_cnn", 16, space.example_inputs.device, 8, 5, folder)
    macs = [m for m, _ in first.points]
    assert macs == sorted(macs) and macs[-1] == 1.0 and len(macs) == 7 and macs[0] < 0.2
    assert all(latency > 0 for _, latency in first.points)
    saved = json.loads((tmp_path / FILE).read_text())
    assert saved["key"]["batch"] == 16 and saved["points"] == first.points
    caplog.clear()
    again = latency_model_for(space, "small_cnn", 16, space.example_inputs.device, 8, 5, folder)
    assert again.points == first.points and "reusing" in caplog.text
    other = latency_model_for(space, "small_cnn", 8, space.example_inputs.device, 8, 5, folder)
    assert other.key["batch"] == 8, "another batch is measured again"


def test_one_size_target_at_a_time_and_no_unresolved_latency_target():
    with pytest.raises(ConfigError, match="prune_target_macs and prune_target_latency are all set"):
        Config(prune_target_macs=0.5, prune_target_latency=0.5)
    with pytest.raises(ConfigError, match=r"prune_target_latency .* must be in \(0, 1\]"):
        Config(prune_target_latency=0.0)
    with pytest.raises(ConfigError, match="turns it into prune_target_macs first"):
        Config(prune_target_latency=0.5).size_target


@pytest.mark.slow
def test_a_run_held_to_a_latency_target_reports_how_close_it_came(tmp_path):
    from edropout_ray.train import run

    config = Config(epochs=1, max_steps_per_epoch=3, prune_target_latency=0.6, latency_target_batch=64,
                    latency_batches=[], latency_repeats=5, report_extra_masks=False)
    report = run(config, tmp_path / "run", progress=False)
    model = LatencyModel(**json.loads((tmp_path / "run" / FILE).read_text()))
    # the mask was timed when it froze: kept at the model's MACs when the time met the target, else resized
    assert "timed at" in report["freeze_reason"]
    if report["freeze_reason"].endswith("kept as it froze"):
        assert report["macs_kept_fraction"] == pytest.approx(model.macs_for(0.6), abs=0.02)
    else:
        assert f"resized to {report['macs_kept_fraction']:.3f} of the MACs" in report["freeze_reason"]
    goal = report["latency_target"]
    assert goal["batch"] == 64 and goal["target"] == 0.6 and "batch_64" in report["latency"]
    assert goal["predicted_fraction"] == pytest.approx(model.latency_at(report["macs_kept_fraction"]))
    assert goal["missed"] == (not goal["measured_interval"][0] <= 0.6 <= goal["measured_interval"][1])
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["prune_target_latency"] == 0.6 and saved["prune_target_macs"] is None, "saved as given"
