"""Fashion-MNIST and KMNIST as shipped: four idx files, gzipped or not, in either of two layouts.

The files are found in torchvision's layout (``<root>/FashionMNIST/raw/``, what ``edropout-ray
download`` writes) or directly in ``<root>`` (a flat folder, such as Debian's
``/usr/share/datasets/fashion-mnist``); each may be ``name`` or ``name.gz``. They are read here,
not by torchvision, whose classes want uncompressed files in their own layout and fail on a bad
file with a bare assertion.
"""

from __future__ import annotations

import functools
import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from .common import ArrayImages, DataSplits, Options, TensorImages, assemble, corrupt, not_found, transformed_once
from .transforms import small_image_transforms

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FOLDERS = {"fashion_mnist": "FashionMNIST", "kmnist": "KMNIST"}  # torchvision's class names
_PACKAGES = {"fashion_mnist": "Debian/Ubuntu: `apt-get install dataset-fashion-mnist`, then "
                              "data_dir: /usr/share/datasets/fashion-mnist"}
NUM_CLASSES = 10


def find_files(name: str, root: Path) -> dict[str, Path]:
    """file name -> path, from the first layout holding all four (uncompressed preferred to .gz)."""
    layouts = [root / FOLDERS[name] / "raw", root]
    wanted = [f for pair in FILES.values() for f in pair]
    found_in: list[dict[str, Path]] = []
    for folder in layouts:
        found = {}
        for file in wanted:
            present = [p for p in (folder / file, folder / f"{file}.gz") if p.is_file()]
            if present:
                found[file] = present[0]
        if len(found) == len(wanted):
            return found
        found_in.append(found)
    # Name what is missing where most was found (ties: torchvision's layout), and say where else we looked.
    best = max(range(len(layouts)), key=lambda i: len(found_in[i]))
    missing = [f"{layouts[best] / f}[.gz]" for f in wanted if f not in found_in[best]]
    hint = (f"Looked for the four files (each uncompressed or .gz) in {layouts[0]} (torchvision's layout) "
            f"and in {layouts[1]} (a flat folder).")
    if name in _PACKAGES:
        hint += f"\n{_PACKAGES[name]}"
    raise not_found(name, root, missing, hint)


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """A uint8 idx file (gzipped if its name ends in .gz) as an array, its header checked against its size."""
    gzipped = path.suffix == ".gz"
    try:
        if gzipped:
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:  # not gzip, truncated, damaged
        raise corrupt(path, f"{type(e).__name__}: {e}") from e
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise corrupt(path, "file shorter than its idx header")
    magic = int.from_bytes(data[:4], "big")
    if magic != 0x0800 + ndim:
        raise corrupt(path, f"idx magic number {magic:#010x}, expected {0x0800 + ndim:#010x}")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = header_size + int(np.prod(dims))
    if len(data) != expected:
        unpacked = " uncompressed" if gzipped else ""
        raise corrupt(path, f"{len(data)} bytes{unpacked}, header {dims} implies {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(dims)


def _read_split(images_path: Path, labels_path: Path) -> ArrayImages:
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if len(images) != len(labels):
        raise corrupt(labels_path, f"{len(labels)} labels for {len(images)} images in {images_path.name}")
    if len(labels) and int(labels.max()) >= NUM_CLASSES:
        raise corrupt(labels_path, f"label {int(labels.max())}, expected 0..{NUM_CLASSES - 1}")
    return ArrayImages(images, labels.astype(np.int64))


def load_mnist_like(name: str, root: Path, opts: Options) -> DataSplits:
    """The four files as splits. Their transform has no randomness (no augmentation, as in the paper), so
    it is applied once to every image, and the result kept for the process's next run of the same files
    and size (a Ray worker runs one `compare` task after another): the per-sample PIL work was a quarter
    of a small model's run."""
    files = find_files(name, root)
    stamps = tuple((file, str(path), path.stat().st_mtime_ns, path.stat().st_size)
                   for file, path in sorted(files.items()))
    pool, test = _transformed_splits(name, stamps, opts.size, opts.channels, torch.get_default_dtype())
    return assemble(pool, test, None, None, NUM_CLASSES, opts)


@functools.lru_cache(maxsize=2)
def _transformed_splits(name: str, stamps: tuple, size: int, channels: int,
                        dtype: torch.dtype) -> tuple[TensorImages, TensorImages]:
    """(train pool, test) transformed; keyed by the files' paths, times and sizes (a changed file is read
    again) and the default float type (`dtype`, what ToTensor returns)."""
    files = {file: Path(path) for file, path, _, _ in stamps}
    transform, _ = small_image_transforms(name, Options(size=size, channels=channels, seed=0, val_fraction=0.0,
                                                        augment=False))
    return tuple(transformed_once(_read_split(files[images], files[labels]), transform)
                 for images, labels in FILES.values())
