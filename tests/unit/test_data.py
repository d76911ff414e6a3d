"""Tests for edropout_ray.data on tiny datasets written in each dataset's real on-disk format."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from torchvision import datasets as tv_datasets
from torchvision import transforms as T

from edropout_ray.data import (
    DATASETS,
    DatasetNotFoundError,
    DataSplits,
    download_dataset,
    load_dataset,
    make_loader,
)

from helpers import write_idx

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------- writers


def write_idx_set(folder: Path, gz: bool = False, n_train: int = 60, n_test: int = 10) -> dict[str, np.ndarray]:
    """The four MNIST-format files in `folder`; returns what was written, by file name."""
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        arrays[f"{prefix}-images-idx3-ubyte"] = RNG.integers(0, 256, (n, 28, 28))
        arrays[f"{prefix}-labels-idx1-ubyte"] = np.arange(n) % 10
    for name, array in arrays.items():
        write_idx(folder / name, array, gz)
    return arrays


def write_mnist_like(root: Path, folder: str, n_train: int = 60, n_test: int = 10) -> Path:
    raw = root / folder / "raw"
    write_idx_set(raw, n_train=n_train, n_test=n_test)
    return raw


def write_cifar(root: Path, name: str, per_file: int = 10) -> Path:
    if name == "cifar10":
        base, label_key, classes = root / "cifar-10-batches-py", "labels", 10
        files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        meta = ("batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    else:
        base, label_key, classes = root / "cifar-100-python", "fine_labels", 100
        files = ["train", "test"]
        meta = ("meta", {"fine_label_names": [f"c{i}" for i in range(100)]})
    base.mkdir(parents=True, exist_ok=True)
    for f in files:
        batch = {
            "data": RNG.integers(0, 256, (per_file, 3072), dtype=np.uint8),
            label_key: list(RNG.integers(0, classes, per_file)),
        }
        (base / f).write_bytes(pickle.dumps(batch, protocol=2))
    (base / meta[0]).write_bytes(pickle.dumps(meta[1], protocol=2))
    return base


def write_image(path: Path, size: tuple[int, int] = (40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def write_flowers(root: Path, classes: int = 3, per_split: int = 2) -> dict[str, np.ndarray]:
    """Images 1..N with per_split images of each class in trnid and valid, the rest in tstid."""
    base = root / "flowers-102"
    per_class = 2 * per_split + 2
    labels = np.repeat(np.arange(1, classes + 1), per_class)
    ids = np.arange(1, len(labels) + 1).reshape(classes, per_class)
    setid = {
        "trnid": ids[:, :per_split].ravel(),
        "valid": ids[:, per_split: 2 * per_split].ravel(),
        "tstid": ids[:, 2 * per_split:].ravel(),
    }
    for i in range(1, len(labels) + 1):
        write_image(base / "jpg" / f"image_{i:05d}.jpg")
    scipy.io.savemat(base / "imagelabels.mat", {"labels": labels[None, :].astype(np.uint8)})
    scipy.io.savemat(base / "setid.mat", {k: v[None, :].astype(np.uint16) for k, v in setid.items()})
    return setid


def write_imagefolder(root: Path, counts: dict[str, int], classes=("cat", "dog")) -> Path:
    for split, n in counts.items():
        for c in classes:
            for i in range(n):
                write_image(root / split / c / f"{i}.png", size=(20, 24))
    return root


WRITERS = {
    "fashion_mnist": lambda root: write_mnist_like(root, "FashionMNIST"),
    "kmnist": lambda root: write_mnist_like(root, "KMNIST"),
    "cifar10": lambda root: write_cifar(root, "cifar10"),
    "cifar100": lambda root: write_cifar(root, "cifar100"),
    "flowers102": write_flowers,
    "imagefolder": lambda root: write_imagefolder(root, {"train": 10, "val": 3}),
}


# --------------------------------------------------------------------------- checks


def check_items(dataset, channels: int, size: int, num_classes: int, count: int = 3) -> None:
    for i in range(min(count, len(dataset))):
        image, label = dataset[i]
        assert image.dtype == torch.float32
        assert tuple(image.shape) == (channels, size, size)
        assert isinstance(label, int) and 0 <= label < num_classes


def check_splits(splits: DataSplits, channels: int, size: int, num_classes: int) -> None:
    assert (splits.in_channels, splits.image_size, splits.num_classes) == (channels, size, num_classes)
    for part in (splits.train, splits.val, splits.test):
        assert len(part) > 0
        check_items(part, channels, size, num_classes)


def same_twice(dataset, i: int = 0) -> bool:
    return torch.equal(dataset[i][0], dataset[i][0])


# --------------------------------------------------------------------------- arguments


def test_unknown_name_lists_datasets(tmp_path):
    for call in (lambda: load_dataset("mnist", tmp_path), lambda: download_dataset("mnist", tmp_path)):
        with pytest.raises(ValueError, match="cifar10") as info:
            call()
        assert all(name in str(info.value) for name in DATASETS)


@pytest.mark.parametrize("kwargs", [{"channels": 2}, {"channels": 0}, {"image_size": 0},
                                    {"image_size": 8.5}, {"val_fraction": 1.0}])
def test_bad_arguments_raise(kwargs, tmp_path):
    with pytest.raises(ValueError):
        load_dataset("digits", tmp_path, **kwargs)


def test_download_imagefolder_is_refused(tmp_path):
    with pytest.raises(ValueError, match="cannot be downloaded"):
        download_dataset("imagefolder", tmp_path)


# --------------------------------------------------------------------------- digits


def test_digits_sizes_range_and_stratified_test(tmp_path):
    splits = load_dataset("digits", tmp_path / "ignored")
    assert len(splits.train) + len(splits.val) + len(splits.test) == 1797
    assert len(splits.test) == 360
    assert len(splits.val) == round(0.1 * 1437)
    check_splits(splits, channels=1, size=8, num_classes=10)
    images = torch.stack([splits.train[i][0] for i in range(len(splits.train))])
    assert images.min() >= 0 and images.max() <= 1 and images.max() > 0.9
    test_counts = np.bincount([y for _, y in splits.test], minlength=10)
    assert test_counts.min() >= 34 and test_counts.max() <= 38  # ~20% of each ~180-image class


def test_digits_resize_and_rgb(tmp_path):
    splits = load_dataset("digits", tmp_path, image_size=32, channels=3)
    check_splits(splits, channels=3, size=32, num_classes=10)
    image = splits.val[0][0]
    assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])
    assert 0 <= image.min() and image.max() <= 1


# --------------------------------------------------------------------------- MNIST-likes


@pytest.mark.parametrize("name", ["fashion_mnist", "kmnist"])
def test_mnist_like_native(name, tmp_path):
    WRITERS[name](tmp_path)
    splits = load_dataset(name, tmp_path)
    check_splits(splits, channels=1, size=28, num_classes=10)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (54, 6, 10)
    image = splits.train[0][0]
    assert 0 <= image.min() and image.max() <= 1
    assert same_twice(splits.train)  # the paper uses no augmentation here


def test_mnist_like_rgb_resized(tmp_path):
    write_mnist_like(tmp_path, "KMNIST")
    splits = load_dataset("kmnist", tmp_path, image_size=32, channels=3)
    check_splits(splits, channels=3, size=32, num_classes=10)
    image = splits.test[0][0]
    assert torch.equal(image[0], image[2])


def test_truncated_idx_file_is_named(tmp_path):
    raw = write_mnist_like(tmp_path, "FashionMNIST")
    bad = raw / "train-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:1000])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte"):
        load_dataset("fashion_mnist", tmp_path)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("layout", ["torchvision", "flat"])
@pytest.mark.parametrize("name, folder", [("fashion_mnist", "FashionMNIST"), ("kmnist", "KMNIST")])
def test_mnist_like_reads_plain_and_gzipped_files_in_both_layouts(name, folder, layout, gz, tmp_path):
    written = write_idx_set(tmp_path / folder / "raw" if layout == "torchvision" else tmp_path, gz=gz)
    splits = load_dataset(name, tmp_path)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (54, 6, 10)
    for i in (0, 9):  # the test split is the t10k files, in order, pixels scaled to [0, 1]
        image, label = splits.test[i]
        expected = torch.from_numpy(written["t10k-images-idx3-ubyte"][i]).float() / 255
        assert torch.allclose(image[0], expected) and label == written["t10k-labels-idx1-ubyte"][i]
    index = splits.train.indices[0]
    assert splits.train[0][1] == written["train-labels-idx1-ubyte"][index]


def test_mnist_like_files_are_transformed_once_a_process_and_again_when_they_change(tmp_path, monkeypatch):
    """A Ray worker runs one compare task after another: the second load of the same files and size reuses
    the transformed images (each load still draws its own split); a changed file is read and transformed again."""
    from edropout_ray.data import idx

    transformed = []
    real = idx.transformed_once
    monkeypatch.setattr(idx, "transformed_once", lambda *args: transformed.append(1) or real(*args))
    idx._transformed_splits.cache_clear()
    written = write_idx_set(tmp_path)
    first = load_dataset("fashion_mnist", tmp_path, seed=1)
    second = load_dataset("fashion_mnist", tmp_path, seed=2)
    assert len(transformed) == 2, "the train pool and the test set, once each"
    assert first.train.indices != second.train.indices
    assert all(torch.equal(first.test[i][0], second.test[i][0]) for i in range(len(first.test)))
    changed = 255 - np.concatenate([written["t10k-images-idx3-ubyte"], written["t10k-images-idx3-ubyte"][:1]])
    write_idx(tmp_path / "t10k-images-idx3-ubyte", changed)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(11) % 10)
    third = load_dataset("fashion_mnist", tmp_path)
    assert len(transformed) == 4 and len(third.test) == 11
    assert torch.equal(third.test[0][0][0], torch.from_numpy(changed[0]).float() / 255)


def test_flat_gzipped_folder_gives_the_same_data_as_torchvision_layout(tmp_path):
    written = write_idx_set(tmp_path / "tv" / "FashionMNIST" / "raw")
    for file, array in written.items():
        write_idx(tmp_path / "flat" / file, array, gz=True)
    plain, flat = (load_dataset("fashion_mnist", tmp_path / d, seed=3) for d in ("tv", "flat"))
    assert plain.train.indices == flat.train.indices
    for a, b in ((plain.train, flat.train), (plain.val, flat.val), (plain.test, flat.test)):
        assert all(torch.equal(a[i][0], b[i][0]) and a[i][1] == b[i][1] for i in range(len(a)))


def test_idx_files_read_as_torchvision_reads_them(tmp_path):
    write_mnist_like(tmp_path, "KMNIST")
    ours = load_dataset("kmnist", tmp_path, image_size=32, channels=3, val_fraction=0.0)
    theirs = tv_datasets.KMNIST(str(tmp_path), train=True)
    for i in (0, 17, 59):
        image, label = theirs[i]
        expected = T.Compose([T.Grayscale(3), T.Resize((32, 32)), T.ToTensor()])(image)
        assert torch.equal(ours.train[i][0], expected) and ours.train[i][1] == label


def damage(path: Path, how: str) -> None:
    content = path.read_bytes()
    if how == "truncated gzip stream":
        path.write_bytes(content[: len(content) // 2])
    elif how == "not gzip at all":
        path.write_bytes(b"this is not a gzip file, just text")
    else:  # a valid gzip stream of a truncated idx file
        path.write_bytes(gzip.compress(gzip.decompress(content)[:1000]))


@pytest.mark.parametrize("how", ["truncated gzip stream", "not gzip at all", "truncated idx inside"])
def test_damaged_gz_idx_file_is_named(how, tmp_path):
    write_idx_set(tmp_path, gz=True)
    damage(tmp_path / "train-images-idx3-ubyte.gz", how)
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz is corrupt"):
        load_dataset("fashion_mnist", tmp_path)


@pytest.mark.parametrize("labels, reason", [(np.arange(9) % 10, "9 labels for 10 images"),
                                            (np.full(10, 12), "label 12")])
def test_labels_that_do_not_fit_are_named(labels, reason, tmp_path):
    write_idx_set(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels)
    with pytest.raises(ValueError, match=f"t10k-labels-idx1-ubyte is corrupt.*{reason}"):
        load_dataset("kmnist", tmp_path)


def test_missing_file_of_a_flat_folder_is_named_with_both_layouts(tmp_path):
    write_idx_set(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion_mnist", tmp_path)
    message = str(info.value)
    assert f"{tmp_path / 't10k-labels-idx1-ubyte'}[.gz]" in message
    assert "train-images" not in message  # only what is missing
    assert str(tmp_path / "FashionMNIST" / "raw") in message and "download" in message


# --------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("name,num_classes,n_train", [("cifar10", 10, 50), ("cifar100", 100, 10)])
def test_cifar_native(name, num_classes, n_train, tmp_path):
    write_cifar(tmp_path, name)
    splits = load_dataset(name, tmp_path)
    check_splits(splits, channels=3, size=32, num_classes=num_classes)
    assert len(splits.train) + len(splits.val) == n_train
    assert len(splits.val) == round(0.1 * n_train)
    assert len(splits.test) == 10


def test_cifar_pixels_are_row_major_rgb_and_normalized(tmp_path):
    base = write_cifar(tmp_path, "cifar10")
    with open(base / "test_batch", "rb") as f:
        raw = pickle.load(f)["data"][0].reshape(3, 32, 32)
    image = load_dataset("cifar10", tmp_path).test[0][0]
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    assert torch.allclose(image * std + mean, torch.from_numpy(raw).float() / 255, atol=1e-5)


def test_cifar_gray_resized(tmp_path):
    write_cifar(tmp_path, "cifar10")
    check_splits(load_dataset("cifar10", tmp_path, channels=1, image_size=16), channels=1, size=16, num_classes=10)


def test_cifar_train_augments_val_does_not(tmp_path):
    write_cifar(tmp_path, "cifar10")
    torch.manual_seed(0)
    splits = load_dataset("cifar10", tmp_path)
    assert same_twice(splits.val) and same_twice(splits.test)
    assert not all(same_twice(splits.train, i) for i in range(5))
    plain = load_dataset("cifar10", tmp_path, augment=False)
    assert same_twice(plain.train)


def test_corrupt_cifar_pickle_is_named(tmp_path):
    base = write_cifar(tmp_path, "cifar10")
    bad = base / "data_batch_3"
    bad.write_bytes(bad.read_bytes()[:500])
    with pytest.raises(ValueError, match="data_batch_3"):
        load_dataset("cifar10", tmp_path)


# --------------------------------------------------------------------------- Flowers-102


def test_flowers_uses_paper_split(tmp_path):
    setid = write_flowers(tmp_path)
    torch.manual_seed(0)
    splits = load_dataset("flowers102", tmp_path, image_size=32)
    check_splits(splits, channels=3, size=32, num_classes=102)
    # train on the official test ids, test on the official train ids
    assert splits.train.indices == list(setid["tstid"] - 1)
    assert splits.val.indices == list(setid["valid"] - 1)
    assert splits.test.indices == list(setid["trnid"] - 1)
    assert sorted({y for _, y in splits.test}) == [0, 1, 2]
    assert same_twice(splits.val) and same_twice(splits.test)
    assert not all(same_twice(splits.train, i) for i in range(len(splits.train)))


def test_flowers_gray(tmp_path):
    write_flowers(tmp_path, classes=1)
    splits = load_dataset("flowers102", tmp_path, image_size=24, channels=1, augment=False)
    check_splits(splits, channels=1, size=24, num_classes=102)


def test_flowers_missing_image_is_named(tmp_path):
    write_flowers(tmp_path)
    (tmp_path / "flowers-102" / "jpg" / "image_00004.jpg").unlink()
    with pytest.raises(DatasetNotFoundError, match="image_00004.jpg"):
        load_dataset("flowers102", tmp_path)


# --------------------------------------------------------------------------- ImageFolder


def test_imagefolder_val_dir_is_test_without_test_dir(tmp_path):
    write_imagefolder(tmp_path, {"train": 10, "val": 3})
    splits = load_dataset("imagefolder", tmp_path, image_size=16)
    check_splits(splits, channels=3, size=16, num_classes=2)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (18, 2, 6)


def test_imagefolder_with_test_dir_keeps_val_dir(tmp_path):
    write_imagefolder(tmp_path, {"train": 5, "val": 2, "test": 3}, classes=("a", "b", "c"))
    splits = load_dataset("imagefolder", tmp_path, image_size=16, channels=1)
    check_splits(splits, channels=1, size=16, num_classes=3)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (15, 6, 9)
    assert same_twice(splits.val)


def test_imagefolder_mismatched_classes(tmp_path):
    write_imagefolder(tmp_path, {"train": 2}, classes=("a", "b"))
    write_imagefolder(tmp_path, {"val": 2}, classes=("a", "c"))
    with pytest.raises(ValueError, match="differ"):
        load_dataset("imagefolder", tmp_path)


# --------------------------------------------------------------------------- shared behaviour


@pytest.mark.parametrize("name", ["digits", "fashion_mnist", "cifar10", "imagefolder"])
def test_val_split_is_seeded_disjoint_tenth(name, tmp_path):
    if name in WRITERS:
        WRITERS[name](tmp_path)

    def split(seed):
        s = load_dataset(name, tmp_path, seed=seed, image_size=16)
        return s.train.indices, s.val.indices

    train, val = split(0)
    n = len(train) + len(val)
    assert len(val) == round(0.1 * n)
    assert sorted(train + val) == list(range(n))
    assert split(0) == (train, val)
    assert split(1)[1] != val


@pytest.mark.parametrize("name", [n for n in DATASETS if n != "digits"])
def test_missing_dataset_error(name, tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(name, tmp_path)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert str(tmp_path) in message and "download" in message


def test_make_loader_is_reproducible():
    data = torch.utils.data.TensorDataset(torch.arange(100))

    def order(seed, shuffle=True):
        return [b[0].tolist() for b in make_loader(data, 16, shuffle=shuffle, seed=seed)]

    assert order(3) == order(3)
    assert order(3) != order(4)
    assert sorted(sum(order(3), [])) == list(range(100))
    assert sum(order(3, shuffle=False), []) == list(range(100))
    assert len(list(make_loader(data, 16, shuffle=True, drop_last=True))) == 6


def test_make_loader_batches_a_split(tmp_path):
    splits = load_dataset("digits", tmp_path)
    images, labels = next(iter(make_loader(splits.train, 32, shuffle=True, seed=0)))
    assert images.shape == (32, 1, 8, 8) and labels.dtype == torch.int64
