"""scikit-learn's bundled 8x8 digits: no files, no download; the quick data set of the demo and tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .common import DataSplits, Options, assemble


class TensorImages(Dataset):
    """Images already in memory as one float tensor [N, C, H, W]."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


def load_digits(name: str, root: Path, opts: Options) -> DataSplits:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()  # bundled with scikit-learn, never downloaded
    images = torch.from_numpy(digits.images).float().div_(16.0).unsqueeze(1)
    if opts.size != 8:
        images = F.interpolate(images, size=(opts.size, opts.size), mode="bilinear", align_corners=False)
    if opts.channels == 3:
        images = images.repeat(1, 3, 1, 1)
    labels = torch.from_numpy(digits.target).long()
    # digits has no official test split: hold out a stratified 20%.
    pool_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=0.2, stratify=digits.target, random_state=opts.seed
    )
    pool = TensorImages(images[pool_idx], labels[pool_idx])
    test = TensorImages(images[test_idx], labels[test_idx])
    return assemble(pool, test, None, None, 10, opts)
