"""A sweep file is checked whole before Ray starts: every value of every list, range ends, --set on the base."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import pytest
import yaml

from edropout_ray.config import Config
from edropout_ray.errors import ConfigError
from edropout_ray.sweep import SweepSpec, load_sweep

JOBS = Path(__file__).parents[2] / "jobs"


def refusal(**spec) -> str:
    with pytest.raises(ConfigError) as error:
        SweepSpec(**spec)
    return str(error.value)


def test_a_bad_value_after_the_first_of_a_grid_is_refused_naming_key_and_value():
    message = refusal(search={"population_size": {"grid": [8, 0]}})
    assert message.startswith("sweep search: population_size = 0 is refused: population_size must be >= 4")
    assert "\n" not in message


def test_every_list_value_and_range_end_is_checked():
    assert "temperature = -1.0" in refusal(search={"population_size": {"grid": [4, 8]},
                                                    "temperature": {"choice": [0.0, 0.05, -1.0]}})
    assert "p_init = 1.5" in refusal(search={"p_init": {"uniform": [0.2, 1.5]}})
    assert re.search(r"population_size must be >= 4 .*got 3$", refusal(search={"population_size": {"randint": [3, 9]}}))
    # train_top <= population_size (8): randint [1, 10) draws 9, [1, 9) never draws its upper end
    assert "train_top = 9 is refused" in refusal(search={"train_top": {"randint": [1, 10]}})
    SweepSpec(search={"train_top": {"randint": [1, 9]}})


def test_pbt_mutation_values_are_checked_too():
    message = refusal(search={"temperature": {"grid": [0.0]}}, scheduler="pbt",
                      mutations={"temperature": {"choice": [0.0, 0.05, -0.5]}, "kappa": {"choice": [10.0, 0.0]}})
    assert "temperature = -0.5" in message or "kappa = 0.0" in message


def test_values_valid_alone_but_not_together_are_refused():
    message = refusal(search={"dense_warmup": {"grid": [0.1, 0.4]}, "freeze_by": {"grid": [0.5, 0.3]}})
    assert "the trial dense_warmup = 0.4, freeze_by = 0.3 is refused: freeze_by" in message


@pytest.mark.parametrize("domain, words", [
    ({"uniform": [1.0]}, "uniform needs [low, high] with low < high"),
    ({"uniform": [0.5, 0.1]}, "low < high"),
    ({"loguniform": [0.0, 0.1]}, "low < high > 0"),
    ({"randint": [4.0, 8.5]}, "randint needs [low, high] with low < high, integers"),
    ({"grid": []}, "grid needs a non-empty list"),
])
def test_malformed_ranges_are_refused(domain, words):
    assert words in refusal(search={"temperature" if "randint" not in domain else "population_size": domain})


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


def test_set_overrides_the_base_and_reads_yaml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, "base: {epochs: 30, data_dir: data}\nsearch:\n  temperature: {grid: [0.0, 0.05]}\n")
    spec = load_sweep(path, ["epochs=2", "data_dir=elsewhere", "freeze_by=null", "export_formats=[pt2, onnx]"])
    assert spec.base["epochs"] == 2 and spec.base["freeze_by"] is None
    assert spec.base["data_dir"] == str(tmp_path / "elsewhere"), "relative to where the sweep started"
    assert spec.base["export_formats"] == ["pt2", "onnx"]
    assert load_sweep(path).base["epochs"] == 30, "the file is not changed"


def test_set_is_refused_on_a_swept_key_an_unknown_key_and_a_bad_value(tmp_path):
    path = write(tmp_path, "search:\n  temperature: {grid: [0.0, 0.05]}\n")
    with pytest.raises(ConfigError, match="--set temperature: the sweep file's search sweeps temperature"):
        load_sweep(path, ["temperature=0.1"])
    with pytest.raises(ConfigError, match="did you mean 'population_size'"):
        load_sweep(path, ["populaton_size=8"])
    with pytest.raises(ConfigError, match="epochs must be >= 1, got 0"):
        load_sweep(path, ["epochs=0"])
    with pytest.raises(ConfigError, match="--set expects key=value"):
        load_sweep(path, ["epochs"])


def test_converge_after_that_the_freeze_by_deadline_precedes_is_warned(caplog):
    with caplog.at_level(logging.WARNING):
        SweepSpec(base={"epochs": 30}, search={"converge_after": {"grid": [5, 15]}})
    warned = [r.getMessage() for r in caplog.records]
    assert any("converge_after 15 has no effect" in m and "epoch 9" in m for m in warned), warned
    assert not any("converge_after 5 " in m for m in warned), "epoch 5 comes before the deadline: it can act"
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        SweepSpec(base={"epochs": 30, "freeze_by": None}, search={"converge_after": {"grid": [5, 15]}})
    assert not caplog.records, "without a deadline converge_after decides"


@pytest.mark.parametrize("path", sorted(JOBS.glob("sweep*.yaml")), ids=lambda p: p.stem)
def test_shipped_sweeps_sweep_only_keys_that_act(path, caplog):
    with caplog.at_level(logging.WARNING):
        load_sweep(path)
    assert not [r for r in caplog.records if "has no effect" in r.getMessage()]


def test_the_paper_sweeps_comment_counts_its_grid():
    text = (JOBS / "sweep_paper.yaml").read_text()
    claimed = int(re.search(r"full grid is ([\d,]+) trials", text).group(1).replace(",", ""))
    search = yaml.safe_load(text)["search"]
    assert claimed == math.prod(len(next(iter(domain.values()))) for domain in search.values())


def test_the_imagenet_sweep_reads_the_parquet_shards_that_convert_writes():
    base = load_sweep(JOBS / "sweep_imagenet_resnet50.yaml").base
    assert base["dataset"] == "parquet"


def test_an_imagenet_trial_holds_eight_gpus_that_serve_every_phase():
    from edropout_ray.sweep import trial_resources

    config = Config.from_dict(load_sweep(JOBS / "sweep_imagenet_resnet50.yaml").base)
    gpus = [bundle.get("GPU", 0) for bundle in trial_resources(config).bundles]
    assert sum(gpus) == 8 == config.learner_workers == config.shards and config.score_on_learners
