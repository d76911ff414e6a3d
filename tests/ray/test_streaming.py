"""Image folder -> Parquet shards -> Ray Data streaming loader, on a tiny generated ImageFolder."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import torch
from PIL import Image

from edropout_ray.data.streaming import StreamingLoader, convert_image_folder, load_streaming

CLASSES = ["cat", "dog", "emu"]
PER_CLASS = {"train": 7, "val": 3}


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _make_folder(root, splits=PER_CLASS):
    """PNG and JPEG, sizes from 20 to 47 px, one grayscale image; each image's colour encodes its class."""
    rng = np.random.default_rng(0)
    for split, count in splits.items():
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                w, h = 20 + int(rng.integers(0, 28)), 20 + int(rng.integers(0, 28))
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                image = Image.fromarray(pixels)
                if split == "train" and label == 0 and i == 0:
                    image = image.convert("L")
                image.save(folder / f"img{i}.{'png' if i % 2 else 'jpg'}")
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(source ImageFolder, converted folder, conversion counts), converted with 4 rows per shard."""
    base = tmp_path_factory.mktemp("streaming")
    source = _make_folder(base / "images")
    counts = convert_image_folder(source, base / "parquet", rows_per_shard=4)
    return source, base / "parquet", counts


def _epoch(loader):
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def _fingerprints(x):
    """One number per image, to compare row orders without labels (many rows share a label)."""
    return [round(v, 4) for v in x.flatten(1).sum(1).tolist()]


# --------------------------------------------------------------------------- conversion


def test_conversion_writes_shards_labels_and_classes(folders):
    _, dest, counts = folders
    assert counts == {"train": 21, "val": 9}
    assert json.loads((dest / "classes.json").read_text()) == CLASSES
    train_parts = sorted((dest / "train").glob("*.parquet"))
    assert [p.name for p in train_parts] == [f"part-{i:05d}.parquet" for i in range(6)]  # ceil(21 / 4)
    for split, n in counts.items():
        table = pq.read_table(dest / split)
        assert table.num_rows == n
        assert table.schema.field("label").type == "int32"
        assert table.schema.field("image").type == "binary"
        assert sorted(table["label"].to_pylist()) == sorted(l for l in range(3) for _ in range(PER_CLASS[split]))


def test_conversion_keeps_the_original_bytes(folders):
    source, dest, _ = folders
    for split in PER_CLASS:
        table = pq.read_table(dest / split)
        expected = {(f.read_bytes(), CLASSES.index(f.parent.name)) for f in (source / split).glob("*/*")}
        assert set(zip(table["image"].to_pylist(), table["label"].to_pylist())) == expected


def test_val_keeps_sorted_order_and_train_is_mixed(folders):
    _, dest, _ = folders
    assert pq.read_table(dest / "val")["label"].to_pylist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    train = pq.read_table(dest / "train")["label"].to_pylist()
    assert train != sorted(train)


def test_conversion_errors_name_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match="nowhere"):
        convert_image_folder(missing, tmp_path / "out")
    source = _make_folder(tmp_path / "images", {"train": 1, "val": 1})
    shutil.rmtree(source / "val" / "emu")
    with pytest.raises(ValueError, match=r"val.*differ.*only in train: \['emu'\]"):
        convert_image_folder(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written before validation passed
    (source / "val" / "emu").mkdir()
    for image in (source / "val").glob("*/*"):
        image.unlink()
    (source / "val" / "dog" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="no image files.*val"):
        convert_image_folder(source, tmp_path / "out")


def test_load_streaming_requires_ray(folders):
    assert not ray.is_initialized()  # runs before the first test that connects
    with pytest.raises(RuntimeError, match="connect first"):
        load_streaming(folders[1], image_size=8, channels=3, batch_size=4, seed=0)


# --------------------------------------------------------------------------- loading


def test_loader_yields_every_row_once_in_file_order(ray_local, folders):
    _, dest, _ = folders
    loader = StreamingLoader(dest / "val", image_size=16, channels=3, batch_size=4)
    batches = list(loader)
    assert len(loader) == len(batches) == 3  # ceil(9 / 4), last batch partial
    for x, y in batches:
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape[1:] == (3, 16, 16)
    _, y = _epoch(loader)
    assert y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert loader.generator.get_state().equal(torch.Generator().manual_seed(0).get_state())  # untouched


@pytest.mark.extended  # 22 s: make test-all (CI's 25 minutes)
def test_shuffled_epochs_cover_every_row_and_replay_from_generator_state(ray_local, folders):
    _, dest, _ = folders
    loader = StreamingLoader(dest / "train", image_size=8, channels=3, batch_size=3, shuffle=True, seed=5,
                             drop_last=True)
    reference = _fingerprints(_epoch(StreamingLoader(dest / "train", image_size=8, batch_size=21))[0])

    state = loader.generator.get_state()
    first = list(loader)
    assert len(first) == len(loader) == 7  # 21 rows, 3 per batch
    x1, y1 = torch.cat([x for x, _ in first]), torch.cat([y for _, y in first])
    assert sorted(_fingerprints(x1)) == sorted(reference)  # every row exactly once
    assert sorted(y1.tolist()) == sorted(l for l in range(3) for _ in range(7))

    x2, _ = _epoch(loader)
    assert sorted(_fingerprints(x2)) == sorted(reference)
    assert _fingerprints(x2) != _fingerprints(x1)  # the next epoch has another order

    loader.generator.set_state(state)  # what TrainLoop does on resume
    x1_again, y1_again = _epoch(loader)
    assert torch.equal(x1_again, x1) and torch.equal(y1_again, y1)

    same_seed = StreamingLoader(dest / "train", image_size=8, batch_size=3, shuffle=True, seed=5, drop_last=True)
    assert torch.equal(_epoch(same_seed)[0], x1)


def test_drop_last_drops_the_partial_batch(ray_local, folders):
    _, dest, _ = folders
    loader = StreamingLoader(dest / "train", image_size=8, batch_size=4, shuffle=True, drop_last=True)
    batches = list(loader)
    assert len(loader) == len(batches) == 5 and all(len(y) == 4 for _, y in batches)


def test_load_streaming_and_grayscale(ray_local, folders):
    _, dest, _ = folders
    data = load_streaming(dest, image_size=12, channels=1, batch_size=4, seed=0)
    assert (data.num_classes, data.in_channels, data.image_size) == (3, 1, 12)
    assert data.test.path == data.val.path  # no test/: test on val/, as the imagefolder data set
    assert len(data.train) == 5 and len(data.val) == 3
    x, y = next(iter(data.train))
    assert x.shape == (4, 1, 12, 12) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert set(_epoch(data.test)[1].tolist()) == {0, 1, 2}


def test_load_streaming_uses_test_split_and_rejects_unconverted_folders(ray_local, folders, tmp_path):
    source, _, _ = folders
    with_test = tmp_path / "with_test"
    shutil.copytree(source, tmp_path / "src")
    shutil.copytree(source / "val", tmp_path / "src" / "test")
    convert_image_folder(tmp_path / "src", with_test, rows_per_shard=100)
    data = load_streaming(with_test, image_size=8, channels=3, batch_size=4, seed=0)
    assert data.test.path.endswith("test") and data.test.num_rows == 9
    with pytest.raises(ValueError, match="not a converted folder"):
        load_streaming(tmp_path / "src", image_size=8, channels=3, batch_size=4, seed=0)


# --------------------------------------------------------------------------- end to end
@pytest.mark.slow
@pytest.mark.extended  # 100 s: make test-all (the loaders themselves are tested above, in make test)
def test_convert_then_train_streams_into_learner_and_shards(tmp_path):
    """`edropout-ray convert`, then a run with `dataset: parquet` on Ray: shards score streamed batches."""
    import subprocess
    import sys

    source = _make_folder(tmp_path / "images")
    command = [sys.executable, "-m", "edropout_ray"]
    done = subprocess.run([*command, "convert", str(source), str(tmp_path / "parquet"), "--rows-per-shard", "5"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "train: 21 images" in done.stdout
    output = tmp_path / "run"
    done = subprocess.run(
        [*command, "train", "--output", str(output), "--quiet", "--set", "dataset=parquet",
         "--set", f"data_dir={tmp_path / 'parquet'}", "--set", "image_size=16", "--set", "batch_size=8",
         "--set", "epochs=2", "--set", "shards=1", "--set", "population_size=4",
         "--set", "latency_batches=[]", "--set", "report_extra_masks=false"],  # not what this test is about
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((output / "report.json").read_text())
    assert report["dataset"] == "parquet" and report["shards"] == 1
    assert report["params_kept"] < report["params_total"] and report["export_max_abs_diff"] < 1e-4
    steps = pq.read_table(output / "history.parquet").to_pylist()
    assert len(steps) == 2 * (21 // 8), "every epoch streams the training shards once, whole batches only"
