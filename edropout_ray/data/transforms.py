"""The paper's transforms per kind of data set: none for MNIST-likes, CIFAR's, ImageNet-style crops."""

from __future__ import annotations

from typing import Callable

from torchvision import transforms as T

from .common import IMAGENET_MEAN, IMAGENET_STD, NATIVE, Options


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


def small_image_transforms(name: str, opts: Options) -> tuple[Callable, Callable]:
    """MNIST-likes (no augmentation, no normalization, as in the paper) and CIFAR."""
    native_size, native_channels = NATIVE[name]
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


def large_image_transforms(opts: Options) -> tuple[Callable, Callable]:
    """Flowers / ImageFolder: ImageNet-style crops on top of the CIFAR augmentation."""
    pre = _channel_ops(3, opts.channels)
    post = [T.ToTensor(), _normalize(opts.channels)]
    eval_tf = T.Compose([*pre, T.Resize(int(opts.size * 256 / 224)), T.CenterCrop(opts.size), *post])
    if not opts.augment:
        return eval_tf, eval_tf
    augment = [T.RandomResizedCrop(opts.size), T.RandomHorizontalFlip(), T.RandomRotation(15)]
    return T.Compose([*pre, *augment, *post, _cutout()]), eval_tf
