"""Fixtures of the tests that start Ray: a real cluster head."""

from __future__ import annotations

import pytest


@pytest.fixture
def ray_head(tmp_path):
    """A real `ray start --head` on 127.0.0.1 with token authentication (its token in a private HOME)
    and the job server; yields (gcs address, dashboard url, env) and stops the head afterwards: only its
    own processes, found by its GCS port (`ray stop` would stop every Ray on the machine)."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from helpers import free_port, ray_head_processes

    ray = str(Path(sys.executable).with_name("ray"))
    env = {**os.environ, "HOME": str(tmp_path), "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # the venv, activated
    env.pop("RAY_ADDRESS", None)
    port, dashboard = free_port(), free_port()
    subprocess.run([ray, "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=60)
    subprocess.run([ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=3",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--disable-usage-stats"],
                   env=env, check=True, capture_output=True, timeout=180)
    try:
        yield f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}", env
    finally:
        for pid in ray_head_processes(port):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # what `ray stop` also does: forget this head, or a later local ray.init() tries to join it and hangs
        current = Path(os.environ.get("RAY_TMPDIR", "/tmp"), "ray", "ray_current_cluster")
        if current.exists() and current.read_text().strip().endswith(f":{port}"):
            current.unlink()
