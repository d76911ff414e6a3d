"""Data on every node: relative paths fixed at load, data sets read from a bucket (a local S3 endpoint)."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow.fs as pafs
import pytest
from PIL import Image

from edropout_ray.config import Config
from edropout_ray.data import load_dataset
from edropout_ray.data import locations
from edropout_ray.data.locations import join, local_copy
from edropout_ray.data.streaming import StreamingLoader, convert_image_folder
from edropout_ray.sweep import SweepSpec

from helpers import write_digits_as_fashion_mnist


def test_a_relative_data_dir_is_the_folder_under_the_directory_the_command_started_in(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Config(data_dir="data").data_dir == str(tmp_path / "data")
    assert Config(data_dir="s3://bucket/data?endpoint_override=h:1").data_dir == "s3://bucket/data?endpoint_override=h:1"
    spec = SweepSpec(base={"data_dir": "data"}, search={"data_dir": {"grid": ["a", "/b"]}})
    assert spec.base["data_dir"] == str(tmp_path / "data"), "before Tune gives each trial its own directory"
    assert spec.search["data_dir"] == {"grid": [str(tmp_path / "a"), "/b"]}


def test_a_file_data_set_in_a_bucket_is_fetched_once_per_node_by_workers_starting_together(
        s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv(locations.CACHE_ENV, str(tmp_path / "cache"))
    n_train = write_digits_as_fashion_mnist(tmp_path / "fashion")
    pafs.copy_files(str(tmp_path / "fashion"), f"{s3_bucket.name}/fashion", destination_filesystem=s3_bucket.filesystem)
    fetches = []
    copy_files = pafs.copy_files
    monkeypatch.setattr(pafs, "copy_files", lambda *a, **k: (fetches.append(a[0]), copy_files(*a, **k)))
    uri, found = s3_bucket.uri("fashion"), []
    start = threading.Barrier(4)

    def worker():
        start.wait()
        found.append(local_copy(uri))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(found)) == 1 and len(fetches) == 1, (found, fetches)
    cached = found[0]
    assert sorted(p.name for p in cached.iterdir()) == sorted(p.name for p in (tmp_path / "fashion").iterdir())
    assert [p.name for p in cached.parent.iterdir() if not p.name.endswith(".lock")] == [cached.name], \
        "no half-fetched folder is left beside the copy"
    splits = load_dataset("fashion_mnist", uri, image_size=8, val_fraction=0.1)
    assert len(splits.train) + len(splits.val) == n_train and len(fetches) == 1, "the second load reads the cache"


def test_a_missing_folder_in_a_bucket_is_named(s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv(locations.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="nothing found at .*/missing"):
        load_dataset("kmnist", s3_bucket.uri("missing"))
    assert all(p.name.endswith(".lock") for p in (tmp_path / "cache").iterdir()), "no empty copy is cached"


def test_parquet_shards_are_converted_into_and_read_from_a_bucket_uri_with_options(s3_bucket, tmp_path):
    for split, count in (("train", 5), ("val", 2)):
        for name in ("cat", "dog"):
            (tmp_path / "images" / split / name).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(np.full((9, 9, 3), i, np.uint8)).save(tmp_path / "images" / split / name / f"{i}.png")
    uri = s3_bucket.uri("parquet")
    assert convert_image_folder(tmp_path / "images", uri, rows_per_shard=4) == {"train": 10, "val": 4}
    assert {"classes.json", "train/part-00000.parquet", "train/part-00001.parquet", "train/part-00002.parquet",
            "val/part-00000.parquet"} == s3_bucket.files("parquet")
    loader = StreamingLoader(join(uri, "train"), image_size=8, batch_size=4)
    assert loader.num_rows == 10 and len(loader) == 3
