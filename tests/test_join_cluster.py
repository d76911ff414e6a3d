"""`--address` joins a running cluster: a real `ray start --head` on 127.0.0.1 with token auth."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def head(tmp_path):
    """A head node whose token lives in a private HOME, stopped afterwards."""
    env = {**os.environ, "HOME": str(tmp_path), "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    subprocess.run([RAY, "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=60)
    subprocess.run([RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=3",
                    "--include-dashboard=false", "--disable-usage-stats"], env=env, check=True, capture_output=True,
                   timeout=120)
    try:
        yield f"127.0.0.1:{port}", env
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_train_joins_a_running_cluster(head, tmp_path):
    address, env = head
    output = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "edropout_ray", "train", "--address", address, "--output", str(output), "--quiet",
         "--set", "shards=2", "--set", "epochs=1", "--set", "max_steps_per_epoch=3"],
        env=env, capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    assert address in done.stderr or "Connected to Ray cluster" in done.stderr or "Connecting to existing" in done.stderr
    report = json.loads((output / "report.json").read_text())
    assert report["shards"] == 2 and report["params_kept"] < report["params_total"]
