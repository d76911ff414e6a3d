"""Checkpoints: kill the driver mid-run, resume, get the uninterrupted run's result; bad checkpoints."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from edropout_ray.cli import main

ARGS = ["--set", "epochs=3", "--set", "max_steps_per_epoch=8", "--set", "checkpoint_every=5", "--quiet"]


def train_command(output) -> list[str]:
    return [sys.executable, "-m", "edropout_ray", "train", *ARGS, "--output", str(output)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    output = tmp_path_factory.mktemp("uninterrupted")
    subprocess.run(train_command(output), check=True, capture_output=True, timeout=600)
    return output


@pytest.mark.slow
def test_killed_driver_resumes_to_the_same_result(uninterrupted, tmp_path):
    output = tmp_path / "run"
    process = subprocess.Popen(train_command(output), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = output / "checkpoint.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (output / "report.json").exists(), "the run must have been killed before it finished"
    saved = torch.load(checkpoint, weights_only=True)
    assert 0 < saved["engine"]["step_count"] < 24

    assert main(["train", "--resume", str(output), "--quiet"]) == 0
    assert np.array_equal(np.load(output / "final_mask.npy"), np.load(uninterrupted / "final_mask.npy"))
    resumed = pq.read_table(output / "history.parquet").to_pylist()
    assert resumed == pq.read_table(uninterrupted / "history.parquet").to_pylist()


def test_corrupt_checkpoint_is_a_clear_error_and_left_alone(uninterrupted, tmp_path, capsys):
    folder = tmp_path / "copy"
    folder.mkdir()
    (folder / "config.json").write_text((uninterrupted / "config.json").read_text())
    corrupt = b"not a checkpoint at all"
    (folder / "checkpoint.pt").write_bytes(corrupt)
    assert main(["train", "--resume", str(folder), "--quiet"]) == 2
    assert "corrupt" in capsys.readouterr().err
    assert (folder / "checkpoint.pt").read_bytes() == corrupt


def test_checkpoint_with_pickled_code_is_refused(uninterrupted, tmp_path, capsys):
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "config.json").write_text((uninterrupted / "config.json").read_text())
    torch.save({"format": 1, "payload": Exploit()}, folder / "checkpoint.pt")
    assert main(["train", "--resume", str(folder), "--quiet"]) == 2
    assert "corrupt" in capsys.readouterr().err


class Exploit:
    def __reduce__(self):
        return (print, ("arbitrary code ran",))


def test_resume_refuses_a_different_config(uninterrupted, capsys):
    assert main(["train", "--resume", str(uninterrupted), "--set", "population_size=16", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "these keys differ from it: population_size." in err, err


def test_resume_of_another_model_is_refused(uninterrupted, tmp_path, capsys):
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "config.json").write_text(
        (uninterrupted / "config.json").read_text().replace("small_cnn", "mlp"))
    (folder / "checkpoint.pt").write_bytes((uninterrupted / "checkpoint.pt").read_bytes())
    assert main(["train", "--resume", str(folder), "--quiet"]) == 2
    assert "units" in capsys.readouterr().err


def test_output_or_resume_is_required(capsys):
    assert main(["train", "--quiet"]) == 2
    assert "--output" in capsys.readouterr().err
