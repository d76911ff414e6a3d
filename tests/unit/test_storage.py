"""Output folders and checkpoints on pyarrow filesystems (what s3:// and gs:// URIs open): a local S3
endpoint (moto's server, tests/conftest.py), no cloud needed."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch

from edropout_ray.artifacts import checkpoint
from edropout_ray.cli import main
from edropout_ray.errors import CheckpointError
from edropout_ray.artifacts.storage import Folder, open_folder


class BreaksUploadsMidway:
    """The bucket's real S3 filesystem, except that every upload stops halfway as when the connection drops;
    the stream is still closed, which commits what was sent (pyarrow's output streams close on an error)."""

    def __init__(self, filesystem: pafs.FileSystem):
        self.filesystem = filesystem

    def __getattr__(self, name: str):
        return getattr(self.filesystem, name)

    def open_output_stream(self, path: str, *args):
        return _HalfThenReset(self.filesystem.open_output_stream(path, *args))


class _HalfThenReset:
    def __init__(self, stream):
        self.stream = stream

    def __enter__(self):
        return self

    def __exit__(self, *error):
        self.stream.close()

    def write(self, data: bytes) -> None:
        self.stream.write(data[:len(data) // 2])
        raise ConnectionResetError("connection reset by peer, halfway through the upload")


def test_checkpoint_round_trip_on_s3_leaves_no_partial_file(s3_bucket):
    folder = open_folder(s3_bucket.uri("runs/a"))
    checkpoint.save_checkpoint(folder, {"step": 1, "weights": torch.arange(4.0)})
    checkpoint.save_checkpoint(folder, {"step": 2, "weights": torch.arange(5.0)})
    loaded = checkpoint.load_checkpoint(open_folder(s3_bucket.uri("runs/a")))
    assert loaded["step"] == 2 and torch.equal(loaded["weights"], torch.arange(5.0))
    assert s3_bucket.files("runs/a") == {"checkpoint.pt"}, "written under a temporary name, then moved into place"


def test_an_upload_broken_halfway_leaves_the_old_checkpoint_whole_on_s3(s3_bucket):
    """The atomic write's claim on a real S3 endpoint: a reader sees the old file or the new one, never half."""
    folder = open_folder(s3_bucket.uri("runs/a"))
    checkpoint.save_checkpoint(folder, {"step": 1, "weights": torch.arange(4.0)})
    breaking = Folder(BreaksUploadsMidway(folder.filesystem), folder.path, folder.location)
    with pytest.raises(ConnectionResetError):
        checkpoint.save_checkpoint(breaking, {"step": 2, "weights": torch.arange(1000.0)})
    loaded = checkpoint.load_checkpoint(folder)
    assert loaded["step"] == 1 and torch.equal(loaded["weights"], torch.arange(4.0))
    halves = [s3_bucket.read(f"runs/a/{name}") for name in s3_bucket.files("runs/a") - {"checkpoint.pt"}]
    assert halves and all(halves), "the broken upload landed half a file in the bucket, under another name"
    checkpoint.save_checkpoint(folder, {"step": 3, "weights": torch.arange(2.0)})  # the next write replaces both
    assert checkpoint.load_checkpoint(folder)["step"] == 3 and s3_bucket.files("runs/a") == {"checkpoint.pt"}


def test_corrupt_or_missing_checkpoint_on_s3_is_a_clear_error_and_left_alone(s3_bucket):
    folder = open_folder(s3_bucket.uri("runs/a"))
    with pytest.raises(CheckpointError, match=f"no checkpoint at {s3_bucket.name}/runs/a/checkpoint.pt"):
        checkpoint.load_checkpoint(folder)
    with s3_bucket.filesystem.open_output_stream(f"{s3_bucket.name}/runs/a/checkpoint.pt") as stream:
        stream.write(b"half a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        checkpoint.load_checkpoint(folder)
    assert s3_bucket.read("runs/a/checkpoint.pt") == b"half a checkpoint"


def test_unknown_output_uri_is_one_clear_line(capsys, tmp_path):
    assert main(["train", "--output", "nope://bucket/run", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope://bucket/run" in err and "s3://" in err


def test_file_uri_opens_the_local_filesystem(tmp_path):
    folder = open_folder(f"file://{tmp_path}/run")
    assert folder.is_local and folder.path == f"{tmp_path}/run"


def test_a_folder_inside_a_uri_keeps_the_uri_options_after_its_path(tmp_path):
    folder = open_folder("s3://bucket/sweep?endpoint_override=127.0.0.1:9&scheme=http")
    child = folder.child("edropout/seed0")
    assert child.path == "bucket/sweep/edropout/seed0"
    assert str(child) == "s3://bucket/sweep/edropout/seed0?endpoint_override=127.0.0.1:9&scheme=http"
    local = open_folder("relative/out").child("edropout/seed0")
    assert str(local) == str(Path.cwd() / "relative/out/edropout/seed0"), "absolute: a Ray task finds it too"


def test_tables_and_staged_files_land_in_the_bucket_and_nothing_is_staged_after_an_error(s3_bucket):
    folder = open_folder(s3_bucket.uri("runs/a"))
    folder.write_table("rows.parquet", pa.table({"a": [1, 2]}))
    assert pq.read_table(pa.BufferReader(s3_bucket.read("runs/a/rows.parquet"))).column("a").to_pylist() == [1, 2]
    with folder.staged() as local:
        (local / "best").mkdir()
        (local / "best" / "report.json").write_text("{}")
    assert s3_bucket.read("runs/a/best/report.json") == b"{}"
    with pytest.raises(RuntimeError), folder.staged() as local:
        (local / "half.png").write_bytes(b"x")
        raise RuntimeError("the plot failed")
    assert s3_bucket.files("runs/a") == {"rows.parquet", "best/report.json"}


@pytest.mark.slow
def test_train_writes_to_and_resumes_from_an_s3_uri_with_endpoint_options(s3_bucket, tmp_path, monkeypatch):
    """`--output s3://bucket/run?endpoint_override=...&scheme=http` against a local S3 endpoint: the whole run is
    in the bucket, nothing in the working directory (no folder named 's3:'); --resume reads it back."""
    monkeypatch.chdir(tmp_path)
    uri = s3_bucket.uri("runs/a")
    quick = ["--set", "epochs=1", "--set", "max_steps_per_epoch=2", "--set", "checkpoint_every=1",
             "--set", "latency_batches=[]", "--quiet"]
    assert main(["train", "--output", uri, *quick]) == 0
    assert {"checkpoint.pt", "config.json", "report.json", "final_mask.npy", "pruned_model.pt2"} <= s3_bucket.files("runs/a")
    assert list(tmp_path.iterdir()) == []
    mask = s3_bucket.read("runs/a/final_mask.npy")
    s3_bucket.filesystem.delete_file(f"{s3_bucket.name}/runs/a/report.json")
    assert main(["train", "--resume", uri, "--quiet"]) == 0
    assert "report.json" in s3_bucket.files("runs/a") and s3_bucket.read("runs/a/final_mask.npy") == mask
    assert list(tmp_path.iterdir()) == []
