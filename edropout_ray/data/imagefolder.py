"""Your own images, ImageNet-style: train/<class>/<image>, val/<class>/..., optionally test/<class>/..."""

from __future__ import annotations

from pathlib import Path

from torchvision import datasets as tv_datasets

from .common import DatasetNotFoundError, DataSplits, Options, assemble
from .transforms import large_image_transforms


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


def load_imagefolder(name: str, root: Path, opts: Options) -> DataSplits:
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
    train_tf, eval_tf = large_image_transforms(opts)
    return assemble(pool, test, train_tf, eval_tf, len(pool.classes), opts, val=val)
