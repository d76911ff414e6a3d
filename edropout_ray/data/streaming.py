"""ImageNet-scale input: image folders converted once to Parquet shards, streamed with Ray Data.

A map-style ``DataLoader`` over a million JPEG files needs them all on one machine's disk; Parquet
shards of the original encoded bytes can live on S3, are read a block at a time and decoded by Ray
Data tasks anywhere in the cluster, so no node ever holds the data set whole.

* :func:`convert_image_folder` writes ``DEST/<split>/part-NNNNN.parquet`` (``image``: the file's
  encoded bytes, ``label``: int32) and ``DEST/classes.json``.
* :class:`StreamingLoader` is what the training loop needs from a loader: ``len()``, ``iter()``
  yielding ``(x float32 [B, C, H, W], y int64 [B])`` and a ``generator`` whose state at the start
  of an epoch fixes that epoch's order (checkpoint/resume replays it).
* :func:`load_streaming` builds the train/val/test loaders of a converted folder.

Images are resized (shorter side to ``size * 256 / 224``) and center-cropped to ``size``, as the
``imagefolder`` evaluation transform in :mod:`edropout_ray.data`; there is no augmentation.
"""

from __future__ import annotations

import io
import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from .common import IMAGENET_MEAN, IMAGENET_STD
from .locations import resolve, join

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SCHEMA = pa.schema([("image", pa.binary()), ("label", pa.int32())])


# --------------------------------------------------------------------------- conversion


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(class_dir: Path) -> list[Path]:
    return sorted(p for p in class_dir.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)


def _write_split(items: list[tuple[Path, int]], filesystem: pafs.FileSystem, out_dir: str, rows_per_shard: int) -> None:
    """Read and write one shard at a time, so memory holds at most ``rows_per_shard`` files."""
    filesystem.create_dir(out_dir, recursive=True)
    for stale in filesystem.get_file_info(pafs.FileSelector(out_dir)):  # a previous conversion's extra shards
        if stale.base_name.startswith("part-") and stale.base_name.endswith(".parquet"):
            filesystem.delete_file(stale.path)
    for shard, start in enumerate(range(0, len(items), rows_per_shard)):
        chunk = items[start:start + rows_per_shard]
        table = pa.table({"image": [path.read_bytes() for path, _ in chunk],
                          "label": [label for _, label in chunk]}, schema=SCHEMA)
        pq.write_table(table, f"{out_dir}/part-{shard:05d}.parquet", filesystem=filesystem)


def convert_image_folder(source: str | os.PathLike, destination: str | os.PathLike, *,
                         rows_per_shard: int = 1000, seed: int = 0) -> dict[str, int]:
    """Convert ``SOURCE/<split>/<class>/<image>`` to Parquet shards in ``destination`` (a local folder or a
    pyarrow.fs URI such as s3://bucket/imagenet); return the row count per split.

    Labels are indices into the sorted class names of ``train/``, and every other split must have
    the same classes. Train rows are written in a ``seed``-ed random order, because a streaming
    reader only shuffles locally (block order plus a buffer): class-sorted shards would give
    single-class batches. val/test keep sorted (class, file name) order.
    """
    if isinstance(rows_per_shard, bool) or not isinstance(rows_per_shard, int) or rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be a positive int, got {rows_per_shard!r}")
    src = Path(source).expanduser()
    if not src.is_dir():
        raise ValueError(f"image folder {src} does not exist or is not a folder")
    train_dir = src / "train"
    if not train_dir.is_dir():
        raise ValueError(f"{train_dir} not found; expected {src}/train/<class>/<image> "
                         f"(plus {src}/val/<class>/<image>, optionally test/)")
    classes = _class_dirs(train_dir)
    if not classes:
        raise ValueError(f"{train_dir} has no class folders")
    splits = [s for s in SPLITS if (src / s).is_dir()]
    plans: dict[str, list[tuple[Path, int]]] = {}
    for split in splits:  # validate every split before writing anything
        split_dir = src / split
        found = _class_dirs(split_dir)
        if found != classes:
            raise ValueError(
                f"class folders of {split_dir} differ from those of {train_dir}; labels would not match. "
                f"Only in {split}: {sorted(set(found) - set(classes))[:10]}, "
                f"only in train: {sorted(set(classes) - set(found))[:10]}")
        items = [(path, label) for label, name in enumerate(classes) for path in _image_files(split_dir / name)]
        if not items:
            raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {split_dir}/<class>/")
        if split == "train":
            random.Random(seed).shuffle(items)
        plans[split] = items
    filesystem, dest = resolve(destination)  # a local folder, or a bucket (s3://...) the cluster reads
    filesystem.create_dir(dest, recursive=True)
    for split, items in plans.items():
        _write_split(items, filesystem, f"{dest}/{split}", rows_per_shard)
    with filesystem.open_output_stream(f"{dest}/classes.json") as stream:
        stream.write((json.dumps(classes, indent=1) + "\n").encode())
    return {split: len(items) for split, items in plans.items()}


# --------------------------------------------------------------------------- reading


def _shards(path: str) -> tuple[pafs.FileSystem, list[str], int]:
    """The sorted Parquet files under ``path`` and their total rows, from footers only."""
    fs, root = resolve(path)
    info = fs.get_file_info(root)
    if info.type != pafs.FileType.Directory:
        raise ValueError(f"{path} is not a folder of Parquet shards (convert images with `edropout-ray convert`)")
    files = sorted(f.path for f in fs.get_file_info(pafs.FileSelector(root, recursive=True))
                   if f.type == pafs.FileType.File and f.path.endswith(".parquet"))
    if not files:
        raise ValueError(f"no .parquet files in {path}")
    rows = sum(pq.read_metadata(f, filesystem=fs).num_rows for f in files)
    return fs, files, rows


def _decode_batch(batch: dict, *, image_size: int, channels: int) -> dict:
    """Encoded bytes -> normalized float32 [B, C, H, W]; runs in Ray Data tasks."""
    from PIL import Image

    resize_to = int(image_size * 256 / 224)
    mean = np.asarray(IMAGENET_MEAN if channels == 3 else [sum(IMAGENET_MEAN) / 3], np.float32)
    std = np.asarray(IMAGENET_STD if channels == 3 else [sum(IMAGENET_STD) / 3], np.float32)
    out = np.empty((len(batch["image"]), channels, image_size, image_size), np.float32)
    for i, data in enumerate(batch["image"]):
        with Image.open(io.BytesIO(data)) as image:
            image = image.convert("RGB" if channels == 3 else "L")
        w, h = image.size
        scale = resize_to / min(w, h)
        w, h = max(image_size, round(w * scale)), max(image_size, round(h * scale))
        image = image.resize((w, h), Image.BILINEAR)
        left, top = (w - image_size) // 2, (h - image_size) // 2
        image = image.crop((left, top, left + image_size, top + image_size))
        pixels = np.asarray(image, np.float32).reshape(image_size, image_size, channels) / 255.0
        out[i] = ((pixels - mean) / std).transpose(2, 0, 1)
    return {"x": out, "y": np.asarray(batch["label"], np.int64)}


def _pipeline(fs, files: list[str], *, image_size: int, channels: int, block_seed: int | None):
    """The Ray Data pipeline of one epoch: read shards (one block each), maybe shuffle blocks, decode.

    ``preserve_order`` makes the order deterministic: file order without a seed, the seeded block
    permutation with one (otherwise blocks arrive in whatever order tasks finish).
    """
    import ray

    ds = ray.data.read_parquet(files, filesystem=fs, override_num_blocks=len(files))
    ds.context.execution_options.preserve_order = True
    ds.context.enable_progress_bars = False
    if block_seed is not None:
        ds = ds.randomize_block_order(seed=block_seed)
    return ds.map_batches(_decode_batch, fn_kwargs={"image_size": image_size, "channels": channels},
                          batch_format="numpy", batch_size=64)


class StreamingLoader:
    """Batches ``(x, y)`` streamed from the Parquet shards under ``path`` (local folder or s3://...).

    With ``shuffle``, each ``iter()`` draws two seeds from ``generator`` (block order and local
    shuffle buffer), so a generator state fixes an epoch's order and successive epochs differ.
    Without, rows come in file order and ``generator`` is not touched.
    """

    def __init__(self, path: str | os.PathLike, *, image_size: int, channels: int = 3, batch_size: int,
                 shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                 shuffle_buffer: int | None = None):
        if channels not in (1, 3) or isinstance(channels, bool):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        for name, value in (("image_size", image_size), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.path = str(path)
        self.image_size, self.channels, self.batch_size = image_size, channels, batch_size
        self.shuffle, self.drop_last = shuffle, drop_last
        # Decoded rows are big (224 px RGB: 600 KB), so the buffer is a few batches, not the data set.
        self.shuffle_buffer = shuffle_buffer or 4 * batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self._fs, self._files, self.num_rows = _shards(self.path)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_rows // self.batch_size
        return math.ceil(self.num_rows / self.batch_size)

    def __iter__(self):
        import ray

        if not ray.is_initialized():
            raise RuntimeError("StreamingLoader needs Ray: connect first (ray.init() or "
                               "edropout_ray.distributed.cluster.connect(config))")
        block_seed = buffer_seed = None
        if self.shuffle:
            block_seed, buffer_seed = torch.randint(0, 2**31 - 1, (2,), generator=self.generator).tolist()
        ds = _pipeline(self._fs, self._files, image_size=self.image_size, channels=self.channels,
                       block_seed=block_seed)
        batches = ds.iter_torch_batches(
            batch_size=self.batch_size, drop_last=self.drop_last,
            local_shuffle_buffer_size=self.shuffle_buffer if self.shuffle else None,
            local_shuffle_seed=buffer_seed)
        for batch in batches:
            yield batch["x"], batch["y"].long()


@dataclass(frozen=True)
class StreamingSplits:
    """Loaders of a converted folder plus what the model recipe needs (as :class:`data.DataSplits`)."""

    train: StreamingLoader
    val: StreamingLoader
    test: StreamingLoader
    num_classes: int
    in_channels: int
    image_size: int
    classes: tuple[str, ...]


def load_streaming(data_dir: str | os.PathLike, *, image_size: int, channels: int, batch_size: int,
                   seed: int, drop_last: bool = True, eval_batch_size: int | None = None) -> StreamingSplits:
    """Train (shuffled), val and test (in order) loaders of a folder written by convert_image_folder.

    ``test`` is ``test/`` when present, else ``val/`` (as the imagefolder dataset). Training drops
    the last partial batch only when the split holds more than one batch. Needs a connected Ray.
    """
    import ray

    if not ray.is_initialized():
        raise RuntimeError("load_streaming needs Ray: connect first (ray.init() or "
                           "edropout_ray.distributed.cluster.connect(config)) before building streaming loaders")
    root = str(data_dir).rstrip("/")
    fs, base = resolve(root)

    def exists(name: str, kind) -> bool:
        return fs.get_file_info(f"{base}/{name}").type == kind

    for name, kind in (("classes.json", pafs.FileType.File), ("train", pafs.FileType.Directory),
                       ("val", pafs.FileType.Directory)):
        if not exists(name, kind):
            raise ValueError(f"{root}/{name} not found: {root} is not a converted folder with train/ and val/ "
                             "(write one with `edropout-ray convert SOURCE DESTINATION`)")
    with fs.open_input_stream(f"{base}/classes.json") as f:
        classes = tuple(json.loads(f.read().decode()))
    common = {"image_size": image_size, "channels": channels}
    eval_batch = eval_batch_size or batch_size
    train = StreamingLoader(join(root, "train"), batch_size=batch_size, shuffle=True, seed=seed, **common)
    train.drop_last = drop_last and train.num_rows > batch_size
    val = StreamingLoader(join(root, "val"), batch_size=eval_batch, **common)
    test = StreamingLoader(join(root, "test"), batch_size=eval_batch, **common) \
        if exists("test", pafs.FileType.Directory) else val
    return StreamingSplits(train, val, test, len(classes), channels, image_size, classes)
