"""Faults as a benchmark: the demo on Ray (2 shards) with a shard, the learner, or the driver killed mid-run.

Each run is `edropout-ray train` in its own process with its own local Ray. Once the first
checkpoint is written, the fault is dealt from outside with SIGKILL (as a lost node or an OOM kill
would): a shard's process, the learner's process, or the driver's (then `--resume`). For each it
prints whether the run completed and whether its final mask equals the fault-free run's.

    .venv/bin/python benchmarks/faults.py [--config jobs/demo.yaml] [--epochs 30] [--checkpoint-every 10]
                                          [--faults shard,learner,driver]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FAULTS = {"none": "none", "shard": "shard killed", "learner": "learner killed", "driver": "driver killed, resumed"}


def descendants(pid: int) -> list[int]:
    """The processes below `pid` (from /proc): the Ray instance that run started for itself."""
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        children.setdefault(int(stat[stat.rindex(")") + 2:].split()[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def kill(pids) -> int:
    """SIGKILL each; returns how many were still there to kill."""
    killed = 0
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except ProcessLookupError:
            pass
    return killed


# what the driver logs when it deals with each fault: evidence that the fault hit a running run
EVIDENCE = {"shard": "starting a replacement", "learner": "replaying"}


def one_run(fault: str, args, folder: Path) -> tuple[bool, bool, float]:
    """(completed, fault dealt and handled, seconds) of one run with `fault` dealt after its first checkpoint."""
    train = [sys.executable, "-m", "edropout_ray", "train", "--config", args.config, "--quiet",
             "--set", "shards=2", "--set", "dense_baseline=false", "--set", f"epochs={args.epochs}",
             "--set", f"checkpoint_every={args.checkpoint_every}"]
    env = {**os.environ, "RAY_TMPDIR": str(folder / "r")}  # its own Ray; a short path (Unix sockets)
    env.pop("RAY_ADDRESS", None)
    output = folder / "run"
    started = time.perf_counter()
    driver = subprocess.Popen([*train, "--output", str(output)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    dealt = fault == "none"
    if fault != "none":
        while not (output / "checkpoint.pt").exists() and driver.poll() is None:
            time.sleep(0.2)
        below = descendants(driver.pid)
        if fault == "shard":  # shards exist only while the population searches, after the dense warm-up
            shards = []
            while not shards and driver.poll() is None:
                shards = [p for p in descendants(driver.pid) if "ray::ShardWorker" in command_line(p)]
                time.sleep(0.2)
            dealt = kill(shards[:1]) == 1
        elif fault == "learner":
            dealt = kill([p for p in below if "ray::LearnerWorker" in command_line(p)]) == 1
        else:
            dealt = kill([driver.pid]) == 1 and driver.wait() != 0
            kill(below)  # its Ray instance, orphaned
            driver = subprocess.Popen([sys.executable, "-m", "edropout_ray", "train", "--resume", str(output),
                                       "--quiet"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True)
    _, stderr = driver.communicate()
    if driver.returncode != 0:
        print(f"[{FAULTS[fault]}] exit code {driver.returncode}: {stderr.strip().splitlines()[-1:]}", file=sys.stderr)
    if EVIDENCE.get(fault):
        dealt = dealt and EVIDENCE[fault] in stderr
    return driver.returncode == 0, dealt, time.perf_counter() - started


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="jobs/demo.yaml")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--faults", default="shard,learner,driver",
                        help="comma-separated among shard, learner, driver (the fault-free run always runs)")
    args = parser.parse_args(argv)
    chosen = ["none", *(f.strip() for f in args.faults.split(",") if f.strip())]
    unknown = [f for f in chosen if f not in FAULTS]
    if unknown:
        parser.error(f"unknown faults {unknown}; choose among shard, learner, driver")
    rows, reference = [], None
    with tempfile.TemporaryDirectory() as root:
        for index, fault in enumerate(chosen):
            folder = Path(root) / str(index)
            folder.mkdir()
            completed, dealt, seconds = one_run(fault, args, folder)
            mask = np.load(folder / "run" / "final_mask.npy") if completed else None
            reference = mask if fault == "none" else reference
            same = completed and reference is not None and np.array_equal(mask, reference)
            rows.append((fault, dealt, completed, same, seconds))
            print(f"done: {FAULTS[fault]}", file=sys.stderr, flush=True)
    print(f"\n{'fault':<24} {'dealt mid-run':>14} {'completed':>10} {'final mask = fault-free':>24} {'seconds':>8}")
    for fault, dealt, completed, same, seconds in rows:
        dealt_text = "-" if fault == "none" else "yes" if dealt else "NO"
        print(f"{FAULTS[fault]:<24} {dealt_text:>14} {'yes' if completed else 'NO':>10} "
              f"{'yes' if same else 'NO':>24} {seconds:>8.1f}")


if __name__ == "__main__":
    main()
