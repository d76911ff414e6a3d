"""A Ray cluster of three nodes on this machine, as a cloud cluster is laid out: a head with no CPUs (it only
coordinates and runs the job server) and two worker nodes, with token authentication, and a local S3
endpoint as the cluster's bucket."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import S3_ENV, free_port, ray_head_processes

WORKER_NODES = 2
WORKER_CPUS = 2


@dataclass(frozen=True)
class LocalCluster:
    gcs_port: int
    dashboard: str  # the job server's address, for `ray job submit --address`
    env: dict  # what a client (and every node) runs with: the token's HOME, the bucket's credentials
    temp_dir: Path  # Ray's files of every node (sessions, logs, Tune's local staging)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def processes(self) -> list[int]:
        return ray_head_processes(self.gcs_port)


def _ray_start(ray: str, env: dict, *args: str) -> None:
    ports = [f"--{name}={free_port()}" for name in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                     "metrics-export-port", "runtime-env-agent-port")]
    done = subprocess.run([ray, "start", "--node-ip-address=127.0.0.1", "--disable-usage-stats", *ports, *args],
                          env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


@pytest.fixture
def local_cluster(tmp_path, s3_endpoint):
    """A 0-CPU head and two worker nodes started with `ray start`; stopped afterwards, only its own processes."""
    ray = str(Path(sys.executable).with_name("ray"))
    home = tmp_path / "home"
    home.mkdir()
    temp_dir = Path(tempfile.mkdtemp(prefix="edr-", dir="/tmp"))  # short: Ray's socket paths live under it
    env = {**os.environ, **S3_ENV, "HOME": str(home), "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0",
           "EDROPOUT_RAY_DATA_CACHE": str(tmp_path / "node-cache"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    subprocess.run([ray, "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=60)
    port, dashboard = free_port(), free_port()
    try:
        _ray_start(ray, env, "--head", f"--port={port}", "--num-cpus=0", "--dashboard-host=127.0.0.1",
                   f"--dashboard-port={dashboard}", f"--temp-dir={temp_dir}")
        for _ in range(WORKER_NODES):
            _ray_start(ray, env, f"--address=127.0.0.1:{port}", f"--num-cpus={WORKER_CPUS}")
        yield LocalCluster(port, f"http://127.0.0.1:{dashboard}", env, temp_dir)
    finally:
        for pid in ray_head_processes(port):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp_dir, ignore_errors=True)
        # what `ray stop` also does: forget this head, or a later local ray.init() tries to join it and hangs
        current = Path(os.environ.get("RAY_TMPDIR", "/tmp"), "ray", "ray_current_cluster")
        if current.exists() and current.read_text().strip().endswith(f":{port}"):
            current.unlink()
