"""What a user does on a cloud cluster, on three local nodes (a 0-CPU head, two workers) and a local S3 bucket:
the data in the bucket, `ray job submit` of a training run and of a sweep with `--output s3://...`, one trial's
worker killed mid-run, then `--resume s3://...`. Everything lands in the bucket, nothing on the head's disk.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import yaml

from helpers import write_digits_as_fashion_mnist

pytestmark = [pytest.mark.slow, pytest.mark.extended]  # 6 minutes: make test-all, not CI's make test
ROOT = Path(__file__).parents[2]
RAY = str(Path(sys.executable).with_name("ray"))
# what a run leaves in its output; none of it may be found on the head's disk
OUTPUT_FILES = {"report.json", "checkpoint.pt", "final_mask.npy", "history.parquet", "pruned_model.pt2",
                "trials.parquet", "pareto.png", "sweep.json"}
DATA = ["--set", "dataset=fashion_mnist", "--set", "image_size=8", "--set", "batch_size=64",
        "--set", "latency_batches=[]", "--set", "max_steps_per_epoch=2"]
SWEEP = """
base: {{dataset: fashion_mnist, data_dir: "{data}", image_size: 8, batch_size: 64, latency_batches: [],
       epochs: {epochs}, max_steps_per_epoch: 20, converge_after: 1}}
search:
  population_size: {{grid: [4, 6]}}
max_failures: 2
"""


def submit(cluster, *command: str, wait: bool = True):
    """`ray job submit` of the CLI, with the env_vars of jobs/runtime_env.yaml but not its working_dir:
    the nodes run the installed package, as cluster nodes run the image's. Three nodes on one machine
    share one session folder, so one node's cleanup of a job's working-dir copy deleted it under a job
    running on another (seen here: "No such file ... edropout_ray/distributed/liveness.py", and a
    sweep's driver losing its working directory after a trial's worker was killed)."""
    env_vars = yaml.safe_load((ROOT / "jobs" / "runtime_env.yaml").read_text())["env_vars"]
    args = [RAY, "job", "submit", "--address", cluster.dashboard, "--runtime-env-json",
            json.dumps({"env_vars": env_vars}), "--", "python", "-m", "edropout_ray", *command]
    if not wait:
        return subprocess.Popen(args, env=cluster.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    done = subprocess.run(args, env=cluster.env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    return done.returncode, done.stdout + done.stderr


def on_disk(*folders: Path) -> list[Path]:
    """Files of a run's output (or a folder named 's3:') anywhere under `folders`."""
    found = []
    for folder in folders:
        for path in folder.rglob("*"):
            if path.name in OUTPUT_FILES or path.name == "s3:":
                found.append(path)
    return found


def trial_processes(cluster) -> dict[str, int]:
    """The trial actors' processes, by the trial's folder name (Tune runs each in a folder named after it)."""
    found = {}
    for pid in cluster.processes():
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            folder = Path(os.readlink(f"/proc/{pid}/cwd")).name
        except OSError:
            continue
        if "ImplicitFunc" in title:
            found[folder] = pid
    return found


def test_training_and_a_sweep_on_a_multi_node_cluster_keep_everything_in_the_bucket(
        local_cluster, s3_bucket, tmp_path):
    searched = (local_cluster.temp_dir, Path(local_cluster.env["HOME"]), ROOT)
    there_before = set(on_disk(*searched))  # a developer's own runs/ in the repository are not this test's
    write_digits_as_fashion_mnist(tmp_path / "fashion")
    pafs.copy_files(str(tmp_path / "fashion"), f"{s3_bucket.name}/data/fashion",
                    destination_filesystem=s3_bucket.filesystem)
    data = s3_bucket.uri("data/fashion")

    # a folder on the head's disk is refused before any work, with what to use instead
    code, log = submit(local_cluster, "train", "--output", str(tmp_path / "local"), "--set", "shards=2", *DATA)
    assert code != 0 and "s3://bucket/path" in log and "--shared-mount" in log and "cluster of 3 nodes" in log, log
    assert not (tmp_path / "local").exists()

    # (a) a distributed run with its dense baseline, data and output in the bucket; then resumed from the bucket
    run = s3_bucket.uri("runs/train")
    code, log = submit(local_cluster, "train", "--output", run, "--set", "shards=2", "--set", "dense_baseline=true",
                       "--set", f"data_dir={data}", "--set", "epochs=1", "--set", "checkpoint_every=1", "--quiet", *DATA)
    assert code == 0, log[-3000:]
    assert {"checkpoint.pt", "config.json", "report.json", "final_mask.npy", "pruned_model.pt2",
            "dense/checkpoint.pt"} <= s3_bucket.files("runs/train")  # the dense baseline's task checkpoints too
    report = json.loads(s3_bucket.read("runs/train/report.json"))
    assert report["shards"] == 2 and "dense_top1" in report
    # the job's driver on the 0-CPU head only waited: the run coordinated its actors from a task on a
    # worker, holding the learner's CPU, and the dense baseline was a task of its own
    assert report["placement"]["resources"] == {"CPU": 1.0}, report["placement"]
    assert report["dense_placement"]["resources"] == {"CPU": 1.0}
    assert report["dense_placement"]["pid"] != report["placement"]["pid"]
    mask = s3_bucket.read("runs/train/final_mask.npy")
    s3_bucket.filesystem.delete_file(f"{s3_bucket.name}/runs/train/report.json")
    code, log = submit(local_cluster, "train", "--resume", run, "--quiet")
    assert code == 0, log[-3000:]
    assert "report.json" in s3_bucket.files("runs/train") and s3_bucket.read("runs/train/final_mask.npy") == mask

    # (b) a two-trial sweep on the workers; one trial's process is killed once it has a checkpoint in the bucket
    epochs = 12  # of 20 steps: the killed trial has epochs left to run after its restore
    spec = tmp_path / "sweep.yaml"
    spec.write_text(SWEEP.format(data=data, epochs=epochs))
    sweep = s3_bucket.uri("sweep")
    job = submit(local_cluster, "sweep", "--config", str(spec), "--output", sweep, wait=False)
    killed = None
    while killed is None and job.poll() is None:
        # a trial with one of its first checkpoints: killed then, it restores and runs the epochs left
        checkpointed = {name.split("/")[1] for name in s3_bucket.files("sweep")
                        if "/checkpoint_00000" in name and int(name.split("/checkpoint_")[1][:6]) <= 2}
        running = trial_processes(local_cluster)
        for trial in checkpointed & set(running):
            os.kill(running[trial], signal.SIGKILL)
            killed = trial
            break
        else:
            time.sleep(0.2)  # polls the bucket and the processes for the event, a checkpoint of a running trial
    log = job.communicate(timeout=600)[0]
    assert job.returncode == 0 and killed, log[-3000:]
    rows = pq.read_table(f"{s3_bucket.name}/sweep/trials.parquet", filesystem=s3_bucket.filesystem).to_pylist()
    assert len(rows) == 2 and all(r["epochs_done"] == epochs and r["error"] is None for r in rows), rows
    assert any(r["restored"] for r in rows), "the killed trial went on from its checkpoint in the bucket"
    assert {"sweep.json", "trials.parquet", "pareto.png", "best/report.json"} <= s3_bucket.files("sweep")
    results = {n: s3_bucket.read(f"sweep/{n}") for n in s3_bucket.files("sweep") if n.endswith("result.json")}

    s3_bucket.filesystem.delete_file(f"{s3_bucket.name}/sweep/trials.parquet")
    code, log = submit(local_cluster, "sweep", "--resume", sweep)
    assert code == 0, log[-3000:]
    assert "trials.parquet" in s3_bucket.files("sweep")
    assert all(s3_bucket.read(f"sweep/{n}") == text for n, text in results.items()), "no finished trial ran again"

    assert set(on_disk(*searched)) - there_before == set()
    cache = Path(local_cluster.env["EDROPOUT_RAY_DATA_CACHE"])  # one per node; here the nodes share one disk
    fetched = [p.name for p in cache.iterdir() if not p.name.endswith(".lock")]
    assert len(fetched) == 1 and fetched[0].startswith(f"{s3_bucket.name}_data_fashion-"), fetched
