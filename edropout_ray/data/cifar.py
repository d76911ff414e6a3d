"""CIFAR-10 and CIFAR-100 as shipped: python-pickle batches of uint8 rows."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Sequence

import numpy as np

from .common import ArrayImages, DataSplits, Options, assemble, corrupt, require
from .transforms import small_image_transforms

# name -> (folder, train files, test files, label key, classes)
CIFAR = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", 100),
}


def read_cifar(paths: Sequence[Path], label_key: str) -> ArrayImages:
    """Read CIFAR python-pickle batches (uint8 N x 3072, row-major RGB planes) into one dataset."""
    images, labels = [], []
    for path in paths:
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="latin1")
            batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
            data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            targets = np.asarray(batch[label_key], dtype=np.int64).reshape(-1)
        except (pickle.UnpicklingError, EOFError, AttributeError, KeyError, TypeError, ValueError) as e:
            raise corrupt(path, f"{type(e).__name__}: {e}") from e
        if len(data) != len(targets):
            raise corrupt(path, f"{len(targets)} labels for {len(data)} images")
        images.append(data.transpose(0, 2, 3, 1))
        labels.append(targets)
    return ArrayImages(np.concatenate(images), np.concatenate(labels))


def load_cifar(name: str, root: Path, opts: Options) -> DataSplits:
    folder, train_files, test_files, label_key, num_classes = CIFAR[name]
    base = root / folder
    train_paths = [base / f for f in train_files]
    test_paths = [base / f for f in test_files]
    require(name, root, train_paths + test_paths)
    # Read the pickles ourselves: torchvision's CIFAR classes insist on the official MD5 sums.
    pool = read_cifar(train_paths, label_key)
    test = read_cifar(test_paths, label_key)
    train_tf, eval_tf = small_image_transforms(name, opts)
    return assemble(pool, test, train_tf, eval_tf, num_classes, opts)
