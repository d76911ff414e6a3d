"""The public entry points: load a data set by name, batch it, download it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets as tv_datasets

from .cifar import CIFAR, load_cifar
from .common import NATIVE, DataSplits, Options, unknown_dataset
from .digits import load_digits
from .flowers import load_flowers
from .idx import FOLDERS, load_mnist_like
from .imagefolder import load_imagefolder
from .locations import is_uri, local_copy

_LOADERS: dict[str, Callable[[str, Path, Options], DataSplits]] = {
    "digits": load_digits,
    "fashion_mnist": load_mnist_like,
    "kmnist": load_mnist_like,
    "cifar10": load_cifar,
    "cifar100": load_cifar,
    "flowers102": load_flowers,
    "imagefolder": load_imagefolder,
}


def load_dataset(
    name: str,
    data_dir: str | os.PathLike,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    augment: bool = True,
) -> DataSplits:
    """Load ``name`` from ``data_dir`` as train/val/test splits (see the package docstring).

    ``data_dir`` is a local folder or a pyarrow.fs URI (s3://bucket/fashion_mnist), whose folder is
    copied once per node into a local cache: point it at one data set's files, not a bucket of many.
    ``image_size``/``channels`` default to the dataset's native values; ``channels=3`` repeats
    a gray channel (torchvision models expect RGB), ``channels=1`` converts colour to gray.
    Validation is a ``seed``-ed random ``val_fraction`` of the training files, except for
    Flowers-102 and ImageFolder trees with ``test/``, which ship their own validation set.
    """
    if name not in _LOADERS:
        raise unknown_dataset(name)
    native_size, native_channels = NATIVE[name]
    size = native_size if image_size is None else image_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
    out_channels = native_channels if channels is None else channels
    if out_channels not in (1, 3) or isinstance(out_channels, bool):
        raise ValueError(f"channels must be None, 1 (grayscale) or 3 (RGB), got {channels!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    opts = Options(size=size, channels=out_channels, seed=seed, val_fraction=val_fraction, augment=augment)
    # digits needs no files; a URI's files are fetched once per node (locations.local_copy)
    root = Path(data_dir).expanduser() if name == "digits" or not is_uri(data_dir) else local_copy(data_dir)
    return _LOADERS[name](name, root, opts)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """Seeded (torch.Generator) so two runs with the same seed see the same batch order.

    With workers, the generator also seeds each worker, so augmentation repeats too;
    without workers, augmentation draws from the global torch RNG.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed),
        num_workers=num_workers,
        drop_last=drop_last,
    )


def download_dataset(name: str, data_dir: str | os.PathLike) -> Path:
    """Fetch a dataset with torchvision's download=True into data_dir; return its folder.

    digits ships with scikit-learn, so nothing is fetched and ``data_dir`` is returned.
    """
    if name not in _LOADERS:
        raise unknown_dataset(name)
    if is_uri(data_dir):
        raise ValueError(f"download into a local folder, then copy it to {data_dir} (aws s3 sync, gcloud storage "
                         "rsync, ...): --data-dir must be local")
    if name == "imagefolder":
        raise ValueError("imagefolder data cannot be downloaded; put your images in DIR/train/<class>/ "
                         "and DIR/val/<class>/ (optionally DIR/test/<class>/)")
    root = Path(data_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    if name == "digits":
        return root
    cls, folder = {
        "fashion_mnist": (tv_datasets.FashionMNIST, FOLDERS["fashion_mnist"]),
        "kmnist": (tv_datasets.KMNIST, FOLDERS["kmnist"]),
        "cifar10": (tv_datasets.CIFAR10, CIFAR["cifar10"][0]),
        "cifar100": (tv_datasets.CIFAR100, CIFAR["cifar100"][0]),
        "flowers102": (tv_datasets.Flowers102, "flowers-102"),
    }[name]
    cls(str(root), download=True)  # the default (train) split fetches every file
    return root / folder
