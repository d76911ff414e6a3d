"""`edropout-ray sweep`: a 4-trial sweep on digits with real Ray Tune, and an interrupted one resumed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch

from edropout_ray.errors import ConfigError
from edropout_ray.sweep import SweepSpec, pareto_front, trial_resources
from edropout_ray.config import Config

SWEEP = """
base: {epochs: EPOCHS, max_steps_per_epoch: 3, converge_after: 1, batch_size: 64, latency_batches: []}
search:
  population_size: {grid: [4, 6]}
  temperature: {grid: [0.0, 1.0]}
scheduler: SCHEDULER
params_weight: 0.1
"""


def sweep_command(path: Path, output: Path) -> list[str]:
    return [sys.executable, "-m", "edropout_ray", "sweep", "--config", str(path), "--output", str(output)]


def write_sweep(tmp_path: Path, epochs: int, scheduler: str = "fifo") -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP.replace("EPOCHS", str(epochs)).replace("SCHEDULER", scheduler))
    return path


@pytest.mark.slow
def test_small_sweep_writes_table_plot_and_best_model_into_a_bucket(tmp_path, s3_bucket):
    """--output s3://...?endpoint_override=...: Tune's experiment and every result are in the bucket, nothing
    in the working directory (once, a folder named 's3:' there got everything)."""
    started_in = tmp_path / "cwd"
    started_in.mkdir()
    done = subprocess.run(sweep_command(write_sweep(tmp_path, 2, "asha"), s3_bucket.uri("sweep")), capture_output=True,
                          text=True, timeout=900, cwd=started_in)
    assert done.returncode == 0, done.stderr[-3000:]
    assert list(started_in.iterdir()) == []
    files = s3_bucket.files("sweep")
    assert {"sweep.json", "trials.parquet", "pareto.png", "best/report.json"} <= files
    assert any(name.startswith("tune/") and "/checkpoint_" in name for name in files), sorted(files)
    output = tmp_path / "out"  # a copy, to read it as files
    pafs.copy_files(f"{s3_bucket.name}/sweep", str(output), source_filesystem=s3_bucket.filesystem)
    rows = pq.read_table(output / "trials.parquet").to_pylist()
    assert len(rows) == 4
    assert {(r["population_size"], r["temperature"]) for r in rows} == {(4, 0.0), (4, 1.0), (6, 0.0), (6, 1.0)}
    for row in rows:
        assert 0 < row["params_kept_fraction"] < 1
        assert row["objective"] == pytest.approx(row["val_top1"] - 10 * row["params_kept_fraction"])
        assert 0 < row["busy_device_s"] < row["held_device_s"], row  # what the trial held, and computed in it
    assert any(r["pareto"] for r in rows)
    assert (output / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads((output / "best" / "report.json").read_text())
    best = max(rows, key=lambda r: r["objective"])
    assert report["config"]["population_size"] == best["population_size"]
    model = torch.export.load(str(output / "best" / report["exported_model"])).module()
    assert model(torch.rand(3, 1, 8, 8)).shape == (3, 10)
    assert report["export_max_abs_diff"] < 1e-4
    assert "Trial status" in done.stdout + done.stderr, "progress is visible while it runs"


@pytest.mark.slow
@pytest.mark.extended  # 75 s: make test-all (tests/cluster resumes a sweep from a bucket too)
def test_interrupted_sweep_resumes_without_redoing_finished_trials(tmp_path):
    output = tmp_path / "out"
    epochs = 12  # the last trial still runs for a while after the first finishes, even on a fast machine
    process = subprocess.Popen(sweep_command(write_sweep(tmp_path, epochs), output), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    finished = {}
    deadline = time.monotonic() + 600
    while not finished and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
        for result in (output / "tune").glob("*/result.json"):
            lines = result.read_text().splitlines()
            if len(lines) == epochs:
                finished[result] = lines
    process.send_signal(signal.SIGINT)  # what Ctrl-C does: Tune saves its state and stops
    process.wait(timeout=300)
    assert finished, "a trial must have finished before the interruption"
    assert not (output / "trials.parquet").exists(), "the sweep must have been interrupted before the end"

    done = subprocess.run([sys.executable, "-m", "edropout_ray", "sweep", "--resume", str(output)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(pq.read_table(output / "trials.parquet").to_pylist()) == 4
    for result, lines in finished.items():
        assert result.read_text().splitlines() == lines, f"{result.parent.name} was trained again"


PBT = """
# PBT exploits only between trials alive at once: 8 steps an epoch keep a trial running for a couple of
# seconds per epoch, much longer than a late start of the other trial's worker on a loaded machine
base: {epochs: 12, max_steps_per_epoch: 8, converge_after: 3, batch_size: 64, latency_batches: []}
search:
  temperature: {grid: [0.5, 2.0]}
scheduler: pbt
perturbation_interval: 1
mutations:
  temperature: {uniform: [0.0, 3.0]}
"""


@pytest.mark.slow
@pytest.mark.extended  # 1.5 minutes: make test-all
def test_population_based_training_exploits_and_mutates(tmp_path):
    path = tmp_path / "pbt.yaml"
    path.write_text(PBT)
    output = tmp_path / "out"
    done = subprocess.run(sweep_command(path, output), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[Exploit]" in done.stdout + done.stderr
    rows = pq.read_table(output / "trials.parquet").to_pylist()
    assert len(rows) == 2 and all(r["error"] is None for r in rows), rows
    assert len({r["trial_id"] for r in rows}) == 2, "a trial exploited at its end reports as itself, not its source"
    assert all(r["epochs_done"] == 12 for r in rows), rows
    assert any(r["temperature"] not in (0.5, 2.0) for r in rows), "an exploited trial runs with a mutated value"


def test_sweep_file_errors_name_the_problem():
    with pytest.raises(ConfigError, match="not a config key"):
        SweepSpec(search={"temprature": {"grid": [0, 1]}})
    with pytest.raises(ConfigError, match="must be one of"):
        SweepSpec(search={"temperature": {"between": [0, 1]}})
    with pytest.raises(ConfigError, match="cannot change population_size mid-run"):
        SweepSpec(scheduler="pbt", mutations={"population_size": {"choice": [4, 8]}})
    with pytest.raises(ConfigError, match="population_size must be >= 4"):
        SweepSpec(search={"population_size": {"grid": [2, 8]}})


def test_pareto_front():
    points = [(90.0, 0.5), (95.0, 0.6), (89.0, 0.7), (95.0, 0.5), (80.0, 0.1)]
    assert pareto_front(points) == [False, False, False, True, True]


def test_trial_reserves_learner_and_shards_together():
    bundles = trial_resources(Config(shards=3, shard_gpus=1, learner_gpus=1)).bundles
    assert len(bundles) == 5 and sum(b.get("GPU", 0) for b in bundles) == 4
    assert trial_resources(Config()).bundles == [{"CPU": 1}]
    assert trial_resources(Config(learner_gpus=1)).bundles == [{"CPU": 1, "GPU": 1}], "shards: 0: the GPU it uses"


def test_a_trials_devices_serve_the_learners_workers_and_the_shards_in_turn():
    """8 GPUs a trial: 8 learner workers outside the search, 1 worker and 7 shards in it, on the same bundles."""
    shared = trial_resources(Config(shards=7, learner_workers=8, shard_gpus=1, learner_gpus=1)).bundles
    assert shared == [{"CPU": 0.01}] + [{"CPU": 1, "GPU": 1}] * 8
    apart = trial_resources(Config(shards=7, learner_workers=8, shard_gpus=1, learner_gpus=1,
                                   share_devices_across_phases=False)).bundles
    assert sum(b.get("GPU", 0) for b in apart) == 15


def test_a_trial_whose_learner_workers_score_reserves_only_the_workers():
    """score_on_learners: the shards live in the workers, so 8 bundles serve every phase of the trial."""
    bundles = trial_resources(Config(shards=8, learner_workers=8, score_on_learners=True, shard_gpus=1,
                                     learner_gpus=1)).bundles
    assert bundles == [{"CPU": 0.01}] + [{"CPU": 1, "GPU": 1}] * 8


@pytest.mark.slow
def test_a_sweep_of_trials_whose_learner_workers_score_completes_in_their_placement_groups(tmp_path):
    """Two trials, each two data-parallel learner workers that also score the population, placed in the
    trial's placement group (2 CPUs: the trials take turns); each reports what it held and used."""
    path = tmp_path / "sweep.yaml"
    path.write_text("base: {epochs: 2, max_steps_per_epoch: 4, batch_size: 64, latency_batches: [], shards: 2,\n"
                    "       learner_workers: 2, score_on_learners: true, freeze_by: null}\n"
                    "search:\n  population_size: {grid: [4, 6]}\n")
    done = subprocess.run(sweep_command(path, tmp_path / "out"), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = pq.read_table(tmp_path / "out" / "trials.parquet").to_pylist()
    assert sorted(r["population_size"] for r in rows) == [4, 6]
    for row in rows:
        assert row["val_top1"] > 10, row  # above chance on digits after 8 steps
        assert 0 < row["busy_device_s"] < row["held_device_s"], row


@pytest.mark.slow
def test_a_sweep_whose_trials_all_fail_exits_non_zero_naming_the_error(tmp_path):
    """--set reaches every trial (here a model module that does not exist: valid by its syntax, so the
    trials start and fail); with no trial left the sweep says why and exits 1, not 0."""
    path = tmp_path / "sweep.yaml"
    path.write_text("base: {epochs: 1, max_steps_per_epoch: 2}\nsearch:\n  population_size: {grid: [4, 6]}\n"
                    "max_failures: 0\n")
    done = subprocess.run(sweep_command(path, tmp_path / "out") + ["--set", "model=no_such_module:build"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("edropout-ray: error: all 2 trials of the sweep failed; the first: ") and \
        "no_such_module" in last, last
