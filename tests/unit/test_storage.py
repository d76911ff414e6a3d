"""Output folders and checkpoints on pyarrow filesystems (what s3:// and gs:// URIs open), no cloud needed."""

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


def test_a_folder_inside_a_uri_keeps_the_uri_options_after_its_path(tmp_path):
    folder = open_folder("s3://bucket/sweep?endpoint_override=127.0.0.1:9&scheme=http")
    child = folder.child("edropout/seed0")
    assert child.path == "bucket/sweep/edropout/seed0"
    assert str(child) == "s3://bucket/sweep/edropout/seed0?endpoint_override=127.0.0.1:9&scheme=http"
    local = open_folder("relative/out").child("edropout/seed0")
    assert str(local) == str(Path.cwd() / "relative/out/edropout/seed0"), "absolute: a Ray task finds it too"


def test_tables_and_staged_files_land_on_the_filesystem_and_nothing_is_staged_after_an_error(tmp_path):
    filesystem, folder = in_memory_folder()
    folder.write_table("rows.parquet", pa.table({"a": [1, 2]}))
    with filesystem.open_input_file("bucket/runs/a/rows.parquet") as handle:
        assert pq.read_table(handle).column("a").to_pylist() == [1, 2]
    with folder.staged() as local:
        (local / "best").mkdir()
        (local / "best" / "report.json").write_text("{}")
    assert folder.read_text("best/report.json") == "{}"
    with pytest.raises(RuntimeError), folder.staged() as local:
        (local / "half.png").write_bytes(b"x")
        raise RuntimeError("the plot failed")
    assert not folder.exists("half.png")


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
