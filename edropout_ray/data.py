"""Datasets of the EDropout experiments, read from their official on-disk formats.

Every dataset comes back as train/val/test splits whose items are
``(float32 image tensor [C, H, W], int label)``. As in the paper, the validation
set is carved out of the training files and always uses evaluation transforms,
so validation scores are not blurred by augmentation. Nothing here touches the
network except :func:`download_dataset`, which users call explicitly.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets as tv_datasets
from torchvision import transforms as T

DATASETS: tuple[str, ...] = (
    "digits",
    "fashion_mnist",
    "kmnist",
    "cifar10",
    "cifar100",
    "flowers102",
    "imagefolder",
)

# name -> (native image size, native channels)
_NATIVE: dict[str, tuple[int, int]] = {
    "digits": (8, 1),
    "fashion_mnist": (28, 1),
    "kmnist": (28, 1),
    "cifar10": (32, 3),
    "cifar100": (32, 3),
    "flowers102": (224, 3),
    "imagefolder": (224, 3),
}

_OFFICIAL_PAGES = {
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
class _Options:
    size: int
    channels: int
    seed: int
    val_fraction: float
    augment: bool


# --------------------------------------------------------------------------- datasets


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


class _TensorImages(Dataset):
    """Images already in memory as one float tensor [N, C, H, W]."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


class _ArrayImages(Dataset):
    """uint8 [N, H, W, 3] arrays served as PIL images, so they share the file-based transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[i]), int(self.labels[i])


class _ImageFiles(Dataset):
    """Image files opened lazily as RGB PIL images."""

    def __init__(self, paths: Sequence[Path], labels: np.ndarray):
        self.paths = list(paths)
        self.labels = labels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        with Image.open(self.paths[i]) as image:
            return image.convert("RGB"), int(self.labels[i])


# --------------------------------------------------------------------------- helpers


def _unknown_dataset(name: str) -> ValueError:
    return ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")


def _not_found(name: str, root: Path, missing: Sequence[Path]) -> DatasetNotFoundError:
    shown = "\n  ".join(str(p) for p in missing[:8])
    more = f"\n  ... and {len(missing) - 8} more" if len(missing) > 8 else ""
    return DatasetNotFoundError(
        f"{name} not found, missing:\n  {shown}{more}\n"
        f"Download it with `edropout-ray download {name} --data-dir {root}` "
        f"or get it from {_OFFICIAL_PAGES[name]}"
    )


def _require(name: str, root: Path, paths: Sequence[Path]) -> None:
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise _not_found(name, root, missing)


def _corrupt(path: Path, reason: object) -> ValueError:
    return ValueError(
        f"{path} is corrupt or not in the expected format ({reason}); "
        "delete it and download the dataset again"
    )


def _split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded random (train, val) partition of range(n) with round(n * val_fraction) in val."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = round(n * val_fraction)
    return sorted(perm[n_val:]), sorted(perm[:n_val])


def _assemble(pool: Dataset, test: Dataset, train_tf, eval_tf, num_classes: int, opts: _Options,
              val: Dataset | None = None) -> DataSplits:
    """Build the splits; without an explicit ``val``, validation is a random part of ``pool``."""
    if val is None:
        train_idx, val_idx = _split_indices(len(pool), opts.val_fraction, opts.seed)
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


# --------------------------------------------------------------------------- transforms


def _channel_ops(native: int, channels: int) -> list:
    # Grayscale(3) repeats a gray channel; Grayscale(1) converts colour to gray.
    return [] if channels == native else [T.Grayscale(num_output_channels=channels)]


def _normalize(channels: int) -> T.Normalize:
    if channels == 3:
        return T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    # Gray versions of colour datasets: one channel with the averaged ImageNet statistics.
    return T.Normalize((sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,))


def _cutout() -> T.RandomErasing:
    # Cutout implemented as torchvision's RandomErasing filling with 0, which after
    # normalization is the mean pixel, like Cutout's zero mask.
    return T.RandomErasing(value=0)


def _small_image_transforms(name: str, opts: _Options) -> tuple[Callable, Callable]:
    """MNIST-likes (no augmentation, no normalization, as in the paper) and CIFAR."""
    native_size, native_channels = _NATIVE[name]
    pre = _channel_ops(native_channels, opts.channels)
    if opts.size != native_size:
        pre.append(T.Resize((opts.size, opts.size)))
    if name in ("fashion_mnist", "kmnist"):
        tf = T.Compose([*pre, T.ToTensor()])
        return tf, tf
    post = [T.ToTensor(), _normalize(opts.channels)]
    eval_tf = T.Compose([*pre, *post])
    if not opts.augment:
        return eval_tf, eval_tf
    augment = [T.RandomHorizontalFlip(), T.RandomRotation(15)]
    return T.Compose([*pre, *augment, *post, _cutout()]), eval_tf


def _large_image_transforms(opts: _Options) -> tuple[Callable, Callable]:
    """Flowers / ImageFolder: ImageNet-style crops on top of the CIFAR augmentation."""
    pre = _channel_ops(3, opts.channels)
    post = [T.ToTensor(), _normalize(opts.channels)]
    eval_tf = T.Compose([*pre, T.Resize(int(opts.size * 256 / 224)), T.CenterCrop(opts.size), *post])
    if not opts.augment:
        return eval_tf, eval_tf
    augment = [T.RandomResizedCrop(opts.size), T.RandomHorizontalFlip(), T.RandomRotation(15)]
    return T.Compose([*pre, *augment, *post, _cutout()]), eval_tf


# --------------------------------------------------------------------------- loaders


def _load_digits(name: str, root: Path, opts: _Options) -> DataSplits:
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
    pool = _TensorImages(images[pool_idx], labels[pool_idx])
    test = _TensorImages(images[test_idx], labels[test_idx])
    return _assemble(pool, test, None, None, 10, opts)


_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _idx_length(path: Path, ndim: int) -> int:
    """Validate an uncompressed uint8 idx file's header against its size; return its item count."""
    header_size = 4 + 4 * ndim
    with open(path, "rb") as f:
        header = f.read(header_size)
    if len(header) < header_size:
        raise _corrupt(path, "file shorter than its idx header")
    magic = int.from_bytes(header[:4], "big")
    if magic != 0x0800 + ndim:
        raise _corrupt(path, f"idx magic number {magic:#010x}, expected {0x0800 + ndim:#010x}")
    dims = [int.from_bytes(header[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = header_size + int(np.prod(dims))
    actual = path.stat().st_size
    if actual != expected:
        raise _corrupt(path, f"{actual} bytes, header {dims} implies {expected}")
    return dims[0]


def _load_mnist_like(name: str, root: Path, opts: _Options) -> DataSplits:
    cls = tv_datasets.FashionMNIST if name == "fashion_mnist" else tv_datasets.KMNIST
    raw = root / cls.__name__ / "raw"
    _require(name, root, [raw / f for files in _IDX_FILES.values() for f in files])
    # Check headers ourselves: torchvision fails on bad files with a bare assertion.
    for image_file, label_file in _IDX_FILES.values():
        n_images = _idx_length(raw / image_file, ndim=3)
        n_labels = _idx_length(raw / label_file, ndim=1)
        if n_images != n_labels:
            raise _corrupt(raw / label_file, f"{n_labels} labels for {n_images} images in {image_file}")
    train_tf, eval_tf = _small_image_transforms(name, opts)
    pool = cls(str(root), train=True)
    test = cls(str(root), train=False)
    return _assemble(pool, test, train_tf, eval_tf, 10, opts)


# name -> (folder, train files, test files, label key, classes)
_CIFAR = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", 100),
}


def _read_cifar(paths: Sequence[Path], label_key: str) -> _ArrayImages:
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
            raise _corrupt(path, f"{type(e).__name__}: {e}") from e
        if len(data) != len(targets):
            raise _corrupt(path, f"{len(targets)} labels for {len(data)} images")
        images.append(data.transpose(0, 2, 3, 1))
        labels.append(targets)
    return _ArrayImages(np.concatenate(images), np.concatenate(labels))


def _load_cifar(name: str, root: Path, opts: _Options) -> DataSplits:
    folder, train_files, test_files, label_key, num_classes = _CIFAR[name]
    base = root / folder
    train_paths = [base / f for f in train_files]
    test_paths = [base / f for f in test_files]
    _require(name, root, train_paths + test_paths)
    # Read the pickles ourselves: torchvision's CIFAR classes insist on the official MD5 sums.
    pool = _read_cifar(train_paths, label_key)
    test = _read_cifar(test_paths, label_key)
    train_tf, eval_tf = _small_image_transforms(name, opts)
    return _assemble(pool, test, train_tf, eval_tf, num_classes, opts)


def _read_mat_ints(path: Path, key: str) -> np.ndarray:
    from scipy.io import loadmat

    try:
        return np.asarray(loadmat(path)[key], dtype=np.int64).reshape(-1)
    except Exception as e:  # scipy raises many unrelated types for a damaged file
        raise _corrupt(path, f"{type(e).__name__}: {e}") from e


def _load_flowers(name: str, root: Path, opts: _Options) -> DataSplits:
    base = root / "flowers-102"
    labels_mat, setid_mat = base / "imagelabels.mat", base / "setid.mat"
    _require(name, root, [base / "jpg", labels_mat, setid_mat])
    # Read the .mat files ourselves: torchvision's Flowers102 insists on the official MD5 sums.
    labels = _read_mat_ints(labels_mat, "labels") - 1
    ids = {key: _read_mat_ints(setid_mat, key) - 1 for key in ("trnid", "valid", "tstid")}
    for key, idx in ids.items():
        if idx.size and (idx.min() < 0 or idx.max() >= len(labels)):
            raise _corrupt(setid_mat, f"{key} has image ids outside 1..{len(labels)}")
    paths = [base / "jpg" / f"image_{i:05d}.jpg" for i in range(1, len(labels) + 1)]
    _require(name, root, [paths[i] for idx in ids.values() for i in idx])
    files = _ImageFiles(paths, labels)
    train_tf, eval_tf = _large_image_transforms(opts)
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


def _image_folder(path: Path, classes: list[str] | None, reference: Path | None) -> tv_datasets.ImageFolder:
    folder = tv_datasets.ImageFolder(str(path))
    if classes is not None and folder.classes != classes:
        raise ValueError(
            f"class folders of {path} ({len(folder.classes)}) differ from those of {reference} "
            f"({len(classes)}); labels would not match. "
            f"Only in {path.name}: {sorted(set(folder.classes) - set(classes))[:10]}, "
            f"only in {reference.name}: {sorted(set(classes) - set(folder.classes))[:10]}"
        )
    return folder


def _load_imagefolder(name: str, root: Path, opts: _Options) -> DataSplits:
    train_dir, val_dir, test_dir = root / "train", root / "val", root / "test"
    if not train_dir.is_dir() or not (val_dir.is_dir() or test_dir.is_dir()):
        raise DatasetNotFoundError(
            f"imagefolder data not found: looked for {train_dir} and {val_dir} (or {test_dir}).\n"
            "Expected layout (ImageNet-style, .jpg/.png files):\n"
            f"  {root}/train/<class>/<image>\n"
            f"  {root}/val/<class>/<image>    test set, or validation set if test/ exists\n"
            f"  {root}/test/<class>/<image>   optional test set\n"
            "imagefolder data cannot be downloaded; arrange your own images this way."
        )
    pool = _image_folder(train_dir, None, None)
    val = None
    if test_dir.is_dir():
        test = _image_folder(test_dir, pool.classes, train_dir)
        if val_dir.is_dir():
            val = _image_folder(val_dir, pool.classes, train_dir)
    else:
        test = _image_folder(val_dir, pool.classes, train_dir)
    train_tf, eval_tf = _large_image_transforms(opts)
    return _assemble(pool, test, train_tf, eval_tf, len(pool.classes), opts, val=val)


_LOADERS: dict[str, Callable[[str, Path, _Options], DataSplits]] = {
    "digits": _load_digits,
    "fashion_mnist": _load_mnist_like,
    "kmnist": _load_mnist_like,
    "cifar10": _load_cifar,
    "cifar100": _load_cifar,
    "flowers102": _load_flowers,
    "imagefolder": _load_imagefolder,
}


# --------------------------------------------------------------------------- public API


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
    """Load ``name`` from ``data_dir`` as train/val/test splits (see the module docstring).

    ``image_size``/``channels`` default to the dataset's native values; ``channels=3`` repeats
    a gray channel (torchvision models expect RGB), ``channels=1`` converts colour to gray.
    Validation is a ``seed``-ed random ``val_fraction`` of the training files, except for
    Flowers-102 and ImageFolder trees with ``test/``, which ship their own validation set.
    """
    if name not in _LOADERS:
        raise _unknown_dataset(name)
    native_size, native_channels = _NATIVE[name]
    size = native_size if image_size is None else image_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
    out_channels = native_channels if channels is None else channels
    if out_channels not in (1, 3) or isinstance(out_channels, bool):
        raise ValueError(f"channels must be None, 1 (grayscale) or 3 (RGB), got {channels!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    opts = _Options(size=size, channels=out_channels, seed=seed, val_fraction=val_fraction, augment=augment)
    return _LOADERS[name](name, Path(data_dir).expanduser(), opts)


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
        raise _unknown_dataset(name)
    if name == "imagefolder":
        raise ValueError("imagefolder data cannot be downloaded; put your images in DIR/train/<class>/ "
                         "and DIR/val/<class>/ (optionally DIR/test/<class>/)")
    root = Path(data_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    if name == "digits":
        return root
    cls, folder = {
        "fashion_mnist": (tv_datasets.FashionMNIST, "FashionMNIST"),
        "kmnist": (tv_datasets.KMNIST, "KMNIST"),
        "cifar10": (tv_datasets.CIFAR10, _CIFAR["cifar10"][0]),
        "cifar100": (tv_datasets.CIFAR100, _CIFAR["cifar100"][0]),
        "flowers102": (tv_datasets.Flowers102, "flowers-102"),
    }[name]
    cls(str(root), download=True)  # the default (train) split fetches every file
    return root / folder
