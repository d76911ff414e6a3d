"""Faults a cloud deals out: the Ray instance a run uses is killed mid-run, from outside."""

from __future__ import annotations

import glob
import json
import os
import signal
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
from helpers import descendants

from edropout_ray.artifacts.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

LIVENESS_S = 5
# How Ray's core worker (Ray 2.60's _raylet.so) logs that it ends its driver itself when the node's Ray is
# killed: the object store's connection broken (seen: exit code 1, nothing on stderr), or the raylet's.
RAY_DRIVER_EXITS = ("The connection to the plasma store is failed. Terminate the process.",
                    "Exiting because the Raylet IPC connection failed and the local Raylet is dead.")


@pytest.fixture
def private_ray_env():
    """Environment for a subprocess whose local Ray lives in its own short temp dir (Unix socket paths
    are limited to 107 bytes), where it cannot find, or be found by, any other Ray on the machine."""
    folder = tempfile.mkdtemp(prefix="edr", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": folder, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    yield env
    shutil.rmtree(folder, ignore_errors=True)


def ray_driver_exit(ray_tmpdir: str, pid: int) -> str | None:
    """The line of the driver's own core-worker log (Ray writes it there, not to stderr) in which Ray
    ended process `pid` itself, or None."""
    for log in glob.glob(f"{ray_tmpdir}/ray/session_*/logs/python-core-driver-*_{pid}.log"):
        with open(log, errors="replace") as handle:
            lines = [line.strip() for line in handle if any(exit_ in line for exit_ in RAY_DRIVER_EXITS)]
        if lines:
            return lines[-1]
    return None


@pytest.mark.extended  # 33 s: make test-all
def test_a_killed_ray_stops_the_run_with_the_resume_command(tmp_path, private_ray_env):
    """Kill every process of the local Ray a run started (GCS, raylet, actors) mid-run: the driver stops
    with one line naming the loss and the --resume command, exit code 3 (or Ray's core worker ends it
    first, exit code 1, saying so in its log), and leaves the checkpoint as it was."""
    output = tmp_path / "run"
    command = [sys.executable, "-m", "edropout_ray", "train", "--quiet", "--output", str(output),
               "--set", "shards=1", "--set", "epochs=50", "--set", "max_steps_per_epoch=4", "--set", "batch_size=32",
               "--set", "checkpoint_every=2", "--set", f"liveness_timeout={LIVENESS_S}"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=private_ray_env)
    checkpoint = output / "checkpoint.pt"
    while not checkpoint.exists() and process.poll() is None:
        time.sleep(0.2)  # polling for the first checkpoint (pytest-timeout ends a run that never writes one)
    assert process.poll() is None, process.communicate()[1][-3000:]
    ray_processes = descendants(process.pid)
    assert ray_processes, "the run started its own Ray"
    for pid in ray_processes:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    saved = load_checkpoint(output)
    _, stderr = process.communicate()  # a driver that hangs instead is ended by pytest-timeout
    errors = [line for line in stderr.splitlines() if line.startswith("edropout-ray: error:")]
    assert "Traceback" not in stderr
    ray_exit = ray_driver_exit(private_ray_env["RAY_TMPDIR"], process.pid)
    if process.returncode == 1 and not errors:
        # Ray's own core worker ended the driver first (seen in 1 of 4 full runs; the README's limits say
        # so): its write to the killed node's object store fails and Ray terminates the process before
        # any Python runs. Only that exit, logged by Ray as such, is accepted in place of the named error.
        assert ray_exit is not None, f"exit code 1 with no error line and no exit logged by Ray: {stderr[-3000:]}"
    else:
        assert process.returncode == 3, stderr[-3000:]
        assert len(errors) == 1 and "lost the Ray cluster" in errors[0], stderr[-3000:]
        assert f"edropout-ray train --resume {output}" in errors[0]
    # intact: the one there at the kill, or a whole later one whose state the driver held before it
    # (a write in flight then lands after it; writes are atomic, so never a torn or emptied one)
    left = load_checkpoint(output)
    assert len(left["step_rows"]) >= len(saved["step_rows"]) and left["num_units"] == saved["num_units"]
    assert not (output / "report.json").exists()


def test_the_ray_exit_signature_is_read_from_the_drivers_own_log(tmp_path):
    """The fallback above accepts exit 1 only with one of Ray's exit lines in the driver's log, no other."""
    logs = tmp_path / "ray" / "session_2026-01-01_00-00-00_1_42" / "logs"
    logs.mkdir(parents=True)
    driver = logs / "python-core-driver-01000000ffff_42.log"
    driver.write_text("[I 42] accessor.cc:475: Received address\n")
    assert ray_driver_exit(str(tmp_path), 42) is None
    (logs / "python-core-driver-01000000ffff_43.log").write_text(f"[W 43] connection.cc:216: {RAY_DRIVER_EXITS[0]}\n")
    assert ray_driver_exit(str(tmp_path), 42) is None, "another process's exit"
    driver.write_text(f"[W 42] connection.cc:216: {RAY_DRIVER_EXITS[0]} Status: IOError: Broken pipe\n")
    assert RAY_DRIVER_EXITS[0] in ray_driver_exit(str(tmp_path), 42)


SWEEP = """
base: {epochs: 40, max_steps_per_epoch: 3, batch_size: 64, seed: 3, latency_batches: []}  # long enough that the kill lands mid-run
search:
  population_size: {grid: [4, 4]}
max_failures: 2
"""


def pid_of_a_trial_mid_run(tune_dir, last_epoch: int) -> int | None:
    """The process of a trial that has reported at least once and at most `last_epoch` epochs (from its
    own result.json): a trial still running, well before its end, and not an idle or finished one."""
    for result in tune_dir.glob("*/result.json"):
        lines = result.read_text().splitlines()
        try:
            last = json.loads(lines[-1]) if lines else None
        except json.JSONDecodeError:
            continue  # the line is being written
        if last is not None and 1 <= last["training_iteration"] <= last_epoch:
            return last["pid"]
    return None


@pytest.mark.extended  # 50 s: make test-all (tests/cluster kills a trial on a cluster too)
def test_a_killed_trial_restarts_from_its_checkpoint_and_ends_as_its_twin(tmp_path, private_ray_env):
    """Two identical trials; one trial's worker process is killed after the first checkpoints. Tune restarts
    it from that checkpoint (max_failures), and it ends with exactly its untouched twin's results."""
    spec = tmp_path / "sweep.yaml"
    spec.write_text(SWEEP)
    output = tmp_path / "sweep"
    process = subprocess.Popen([sys.executable, "-m", "edropout_ray", "sweep", "--config", str(spec), "--output",
                                str(output)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=private_ray_env)
    deadline, killed = time.monotonic() + 600, None
    while killed is None and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
        # both trials have a checkpoint (the killed one continues from its own); only the latest two are kept
        if len({path.parent for path in (output / "tune").glob("*/checkpoint_*")}) < 2:
            continue
        pid = pid_of_a_trial_mid_run(output / "tune", last_epoch=30)
        if pid is not None and pid in descendants(process.pid):  # a process of this sweep's own Ray
            killed = pid
            os.kill(killed, signal.SIGKILL)
    log, _ = process.communicate(timeout=600)
    assert killed is not None, log[-3000:]
    assert process.returncode == 0, log[-3000:]
    import pyarrow.parquet as pq

    rows = pq.read_table(output / "trials.parquet").to_pylist()
    assert len(rows) == 2 and all(row["error"] is None for row in rows), rows
    assert sum(row["restored"] for row in rows) == 1, rows
    twin, restored = sorted(rows, key=lambda row: row["restored"])
    for key in ("epochs_done", "val_top1", "val_loss", "params_kept_fraction", "units_kept_fraction"):
        assert restored[key] == twin[key], key
