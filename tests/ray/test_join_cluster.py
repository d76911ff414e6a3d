"""A running cluster: `--address` joins it, and `ray job submit` runs the CLI on it (token auth on)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[2]
SHORT = ["--set", "shards=2", "--set", "epochs=1", "--set", "max_steps_per_epoch=3", "--quiet",
         "--set", "latency_batches=[]", "--set", "report_extra_masks=false"]


@pytest.mark.extended  # 28 s: make test-all (the ray job submit test below joins the same cluster)
def test_train_joins_a_running_cluster(ray_head, tmp_path):
    address, _, env = ray_head
    output = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "edropout_ray", "train", "--address", address, "--output",
                           str(output), *SHORT], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((output / "report.json").read_text())
    assert report["shards"] == 2 and report["params_kept"] < report["params_total"]


def test_ray_job_submit_runs_a_training_job(ray_head, tmp_path):
    _, dashboard, env = ray_head
    output = tmp_path / "job"
    ray = str(Path(sys.executable).with_name("ray"))
    done = subprocess.run(
        [ray, "job", "submit", "--address", dashboard, "--working-dir", str(ROOT),
         "--runtime-env-json", json.dumps({"excludes": [".venv", "/runs", ".git", "/data"]}), "--",
         "python", "-m", "edropout_ray", "train", "--config", "jobs/demo.yaml", "--output", str(output), *SHORT],
        env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "succeeded" in done.stdout + done.stderr
    report = json.loads((output / "report.json").read_text())
    assert report["shards"] == 2 and report["units_kept"] < report["units_total"]
    # jobs/demo.yaml's dense baseline: a task of its own with the learner's CPU, not the job's driver
    assert "dense_top1" in report and report["dense_placement"]["resources"] == {"CPU": 1.0}
    assert report["dense_placement"]["pid"] != report["placement"]["pid"]
