"""What every on-disk format shares: the splits returned, the errors raised, the train/val carving."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torch.utils.data import Dataset

from ..choices import DATASETS

# name -> (native image size, native channels)
NATIVE: dict[str, tuple[int, int]] = {
    "digits": (8, 1),
    "fashion_mnist": (28, 1),
    "kmnist": (28, 1),
    "cifar10": (32, 3),
    "cifar100": (32, 3),
    "flowers102": (224, 3),
    "imagefolder": (224, 3),
}

OFFICIAL_PAGES = {
    "fashion_mnist": "https://github.com/zalandoresearch/fashion-mnist",
    "kmnist": "https://github.com/rois-codh/kmnist",
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar.html",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar.html",
    "flowers102": "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/",
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DatasetNotFoundError(FileNotFoundError):
    """Raised when a dataset's files are not on disk; message says where it looked and how to get it."""


@dataclass(frozen=True)
class DataSplits:
    train: Dataset  # items are (image_tensor[C,H,W] float32, int label)
    val: Dataset
    test: Dataset
    num_classes: int
    in_channels: int  # channels of the returned tensors
    image_size: int  # H == W of the returned tensors


@dataclass(frozen=True)
class Options:
    size: int
    channels: int
    seed: int
    val_fraction: float
    augment: bool


class TransformedSubset(Dataset):
    """The items ``indices`` of ``dataset`` with ``transform`` applied to the image.

    Lets the train and validation splits share one set of training files while
    only the train split is augmented.
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int], transform: Callable | None = None):
        self.dataset = dataset
        self.indices = [int(i) for i in indices]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.dataset[self.indices[i]]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(label)


# --------------------------------------------------------------------------- errors


def unknown_dataset(name: str) -> ValueError:
    return ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")


def not_found(name: str, root: Path, missing: Sequence[Path | str], hint: str = "") -> DatasetNotFoundError:
    """`hint`: a line on where else the files were looked for, or another way to get them."""
    shown = "\n  ".join(str(p) for p in missing[:8])
    more = f"\n  ... and {len(missing) - 8} more" if len(missing) > 8 else ""
    return DatasetNotFoundError(
        f"{name} not found, missing:\n  {shown}{more}\n{hint + chr(10) if hint else ''}"
        f"Download it with `edropout-ray download {name} --data-dir {root}` "
        f"or get it from {OFFICIAL_PAGES[name]}"
    )


def require(name: str, root: Path, paths: Sequence[Path]) -> None:
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise not_found(name, root, missing)


def corrupt(path: Path, reason: object) -> ValueError:
    return ValueError(
        f"{path} is corrupt or not in the expected format ({reason}); "
        "delete it and download the dataset again"
    )


# --------------------------------------------------------------------------- splits


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded random (train, val) partition of range(n) with round(n * val_fraction) in val."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = round(n * val_fraction)
    return sorted(perm[n_val:]), sorted(perm[:n_val])


def assemble(pool: Dataset, test: Dataset, train_tf, eval_tf, num_classes: int, opts: Options,
             val: Dataset | None = None) -> DataSplits:
    """Build the splits; without an explicit ``val``, validation is a random part of ``pool``."""
    if val is None:
        train_idx, val_idx = split_indices(len(pool), opts.val_fraction, opts.seed)
        val_split = TransformedSubset(pool, val_idx, eval_tf)
    else:
        train_idx = range(len(pool))
        val_split = TransformedSubset(val, range(len(val)), eval_tf)
    return DataSplits(
        train=TransformedSubset(pool, train_idx, train_tf),
        val=val_split,
        test=TransformedSubset(test, range(len(test)), eval_tf),
        num_classes=num_classes,
        in_channels=opts.channels,
        image_size=opts.size,
    )


class ArrayImages(Dataset):
    """uint8 arrays, [N, H, W] gray or [N, H, W, 3] RGB, served as PIL images, so data read into
    memory (CIFAR's pickles, idx files) shares the transforms of image files."""

    def __init__(self, images, labels):
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return Image.fromarray(self.images[i]), int(self.labels[i])


class TensorImages(Dataset):
    """Images already transformed, [N, C, H, W] floats, with their labels: a deterministic transform
    applied once to the whole set instead of to every sample of every epoch of every run."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])


def transformed_once(dataset: ArrayImages, transform: Callable) -> TensorImages:
    """`dataset` with `transform` (no randomness in it) applied to each image now: the same tensors,
    bit for bit, as applying it per sample, the per-sample PIL work done once. A closing ToTensor of 8-bit
    images is done for all of them at once (what it does to each: channels first, the default float type,
    divided by 255)."""
    steps = list(transform.transforms) if isinstance(transform, T.Compose) else [transform]
    if isinstance(steps[-1], T.ToTensor):
        pil = T.Compose(steps[:-1])
        arrays = np.stack([np.asarray(pil(Image.fromarray(image))) for image in dataset.images])
        if arrays.dtype == np.uint8:
            channels_last = arrays[..., None] if arrays.ndim == 3 else arrays
            images = torch.from_numpy(channels_last).permute(0, 3, 1, 2).contiguous()
            images = images.to(torch.get_default_dtype()).div(255)
            return TensorImages(images, torch.as_tensor(dataset.labels))
    images = torch.stack([transform(Image.fromarray(image)) for image in dataset.images])
    return TensorImages(images, torch.as_tensor(dataset.labels))
