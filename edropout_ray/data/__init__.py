"""Datasets of the EDropout experiments, read from their official on-disk formats.

Every dataset comes back as train/val/test splits whose items are
``(float32 image tensor [C, H, W], int label)``. As in the paper, the validation
set is carved out of the training files and always uses evaluation transforms,
so validation scores are not blurred by augmentation. Nothing here touches the
network except :func:`download_dataset`, which users call explicitly.

One module per on-disk format (``digits``, ``idx``, ``cifar``, ``flowers``,
``imagefolder``), what they share in ``common`` and ``transforms``, and the
entry points in ``loaders``.
"""

from .common import DATASETS, IMAGENET_MEAN, IMAGENET_STD, DatasetNotFoundError, DataSplits, TransformedSubset
from .loaders import download_dataset, load_dataset, make_loader

__all__ = ["DATASETS", "IMAGENET_MEAN", "IMAGENET_STD", "DataSplits", "DatasetNotFoundError", "TransformedSubset",
           "download_dataset", "load_dataset", "make_loader"]
