"""Output folders and checkpoints on pyarrow filesystems (what s3:// and gs:// URIs open), no cloud needed."""

from __future__ import annotations

import numpy as np
import pyarrow.fs as pafs
import pytest
import torch

from edropout_ray.artifacts import checkpoint
from edropout_ray.cli import main
from edropout_ray.config import Config
from edropout_ray.errors import CheckpointError
from edropout_ray.artifacts.storage import Folder, open_folder
from edropout_ray.train import run


def in_memory_folder() -> tuple[pafs.FileSystem, Folder]:
    filesystem = pafs._MockFileSystem()  # pyarrow's in-memory filesystem, as an object store would be used
    return filesystem, Folder(filesystem, "bucket/runs/a", "mock://bucket/runs/a")


def test_checkpoint_round_trip_on_an_in_memory_filesystem_leaves_no_partial_file():
    filesystem, folder = in_memory_folder()
    checkpoint.save_checkpoint(folder, {"step": 1, "weights": torch.arange(4.0)})
    checkpoint.save_checkpoint(folder, {"step": 2, "weights": torch.arange(5.0)})
    loaded = checkpoint.load_checkpoint(folder)
    assert loaded["step"] == 2 and torch.equal(loaded["weights"], torch.arange(5.0))
    names = [info.base_name for info in filesystem.get_file_info(pafs.FileSelector("bucket/runs/a"))]
    assert names == ["checkpoint.pt"], "written under a temporary name, then moved into place"


def test_corrupt_or_missing_checkpoint_on_a_filesystem_is_a_clear_error_and_left_alone():
    filesystem, folder = in_memory_folder()
    with pytest.raises(CheckpointError, match="no checkpoint at bucket/runs/a/checkpoint.pt"):
        checkpoint.load_checkpoint(folder)
    filesystem.create_dir("bucket/runs/a")
    with filesystem.open_output_stream("bucket/runs/a/checkpoint.pt") as stream:
        stream.write(b"half a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        checkpoint.load_checkpoint(folder)
    assert folder.read_bytes("checkpoint.pt") == b"half a checkpoint"


def test_unknown_output_uri_is_one_clear_line(capsys, tmp_path):
    assert main(["train", "--output", "nope://bucket/run", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope://bucket/run" in err and "s3://" in err


def test_file_uri_opens_the_local_filesystem(tmp_path):
    folder = open_folder(f"file://{tmp_path}/run")
    assert folder.is_local and folder.path == f"{tmp_path}/run"


@pytest.mark.slow
def test_a_run_writes_to_and_resumes_from_a_shared_filesystem(tmp_path):
    """Every artifact and the checkpoint land on the filesystem (a subtree of a local one standing in for
    a bucket); --resume reads the config and the checkpoint back from it."""
    (tmp_path / "bucket").mkdir()
    bucket = pafs.SubTreeFileSystem(str(tmp_path / "bucket"), pafs.LocalFileSystem())
    folder = Folder(bucket, "runs/a", "bucket://runs/a")
    config = Config(epochs=2, max_steps_per_epoch=3, batch_size=32, checkpoint_every=2)
    run(config, folder, progress=False)
    names = {info.base_name for info in bucket.get_file_info(pafs.FileSelector("runs/a"))}
    assert {"checkpoint.pt", "config.json", "report.json", "final_mask.npy", "history.parquet",
            "pruned_model.pt2"} <= names
    mask = np.load(tmp_path / "bucket/runs/a/final_mask.npy")
    (tmp_path / "bucket/runs/a/final_mask.npy").unlink()
    run(None, folder, progress=False, resume=True)
    assert np.array_equal(np.load(tmp_path / "bucket/runs/a/final_mask.npy"), mask)
