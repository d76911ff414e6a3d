"""Oxford Flowers-102 as shipped: a folder of JPEGs and two MATLAB files (labels, split ids)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .common import DataSplits, Options, TransformedSubset, corrupt, require
from .transforms import large_image_transforms


class ImageFiles(Dataset):
    """Image files opened lazily as RGB PIL images."""

    def __init__(self, paths: Sequence[Path], labels: np.ndarray):
        self.paths = list(paths)
        self.labels = labels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        with Image.open(self.paths[i]) as image:
            return image.convert("RGB"), int(self.labels[i])


def _read_mat_ints(path: Path, key: str) -> np.ndarray:
    from scipy.io import loadmat

    try:
        return np.asarray(loadmat(path)[key], dtype=np.int64).reshape(-1)
    except Exception as e:  # scipy raises many unrelated types for a damaged file
        raise corrupt(path, f"{type(e).__name__}: {e}") from e


def load_flowers(name: str, root: Path, opts: Options) -> DataSplits:
    base = root / "flowers-102"
    labels_mat, setid_mat = base / "imagelabels.mat", base / "setid.mat"
    require(name, root, [base / "jpg", labels_mat, setid_mat])
    # Read the .mat files ourselves: torchvision's Flowers102 insists on the official MD5 sums.
    labels = _read_mat_ints(labels_mat, "labels") - 1
    ids = {key: _read_mat_ints(setid_mat, key) - 1 for key in ("trnid", "valid", "tstid")}
    for key, idx in ids.items():
        if idx.size and (idx.min() < 0 or idx.max() >= len(labels)):
            raise corrupt(setid_mat, f"{key} has image ids outside 1..{len(labels)}")
    paths = [base / "jpg" / f"image_{i:05d}.jpg" for i in range(1, len(labels) + 1)]
    require(name, root, [paths[i] for idx in ids.values() for i in idx])
    files = ImageFiles(paths, labels)
    train_tf, eval_tf = large_image_transforms(opts)
    # The paper validates and tests on 10 images per class and trains on the rest, i.e. it
    # trains on the official (large) "tstid" set and tests on the official "trnid" set.
    return DataSplits(
        train=TransformedSubset(files, ids["tstid"], train_tf),
        val=TransformedSubset(files, ids["valid"], eval_tf),
        test=TransformedSubset(files, ids["trnid"], eval_tf),
        num_classes=102,
        in_channels=opts.channels,
        image_size=opts.size,
    )
