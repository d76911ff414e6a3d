"""Models by name: a torchvision architecture, `timm:<name>`, or any `package.module:callable`.

Also small built-in architectures: for the embedded digits data set, for tests, and ResNet-20 for
small images.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass

import torch
import torchvision
from torch import nn

from .choices import TIMM_PREFIX
from .errors import ConfigError
from .imports import import_object


def small_cnn(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """Three conv blocks and a two-layer head; the demo's default on 8x8 digits."""
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    return nn.Sequential(
        *block(in_channels, 32), *block(32, 64), nn.MaxPool2d(2),
        *block(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(128, 128), nn.ReLU(inplace=True), nn.Linear(128, num_classes),
    )


def mlp(num_classes: int = 10, in_channels: int = 1, image_size: int = 8, hidden: int = 128) -> nn.Module:
    """Two hidden layers over the flattened image."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(in_channels * image_size * image_size, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes),
    )


def lenet5(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    """LeNet-5 as in Caffe's MNIST example (20-50-500 units), with BatchNorm after each conv.

    The classic structured-pruning benchmark for 28x28 gray images: cheap to train on a CPU
    (2.3M multiply-accumulates per image), and most of its 431k weights sit in one wide layer.
    """
    side = ((image_size - 4) // 2 - 4) // 2  # two 5x5 valid convs, each followed by 2x2 pooling
    if side < 1:
        raise ConfigError(f"lenet5 needs images of at least 16x16 pixels, got image_size {image_size}")
    return nn.Sequential(
        nn.Conv2d(in_channels, 20, 5, bias=False), nn.BatchNorm2d(20), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5, bias=False), nn.BatchNorm2d(50), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(50 * side * side, 500), nn.ReLU(inplace=True), nn.Linear(500, num_classes),
    )


class _BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm; a 1x1 conv and BatchNorm on the shortcut where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR-style ResNet-20 (He et al. 2016, section 4.2): a 3x3 stem, 3 stages of 3 basic blocks
    of widths 16/32/64 (the last two halving the resolution), global average pooling, a linear head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, blocks: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        stages, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            stages.append(nn.Sequential(*[_BasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                                          for i in range(blocks)]))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet20(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """ResNet-20 for small images (32x32 CIFAR, 28x28 MNIST-like: 28 -> 14 -> 7 before pooling),
    with option-B shortcuts (1x1 projections where the width or resolution changes); 0.27M parameters."""
    return ResNet20(num_classes=num_classes, in_channels=in_channels)



def small_vit(num_classes: int = 10, in_channels: int = 1, image_size: int = 28, patch_size: int = 7) -> nn.Module:
    """A four-block ViT for small gray images (timm's `VisionTransformer`: width 64, 4 heads of 16, MLP 128).

    With 28x28 images and patches of 7, 16 patch tokens and a class token; 0.14M parameters. Small
    enough to train on a CPU in minutes, so transformer pruning can be compared on real data.
    """
    if image_size % patch_size:
        raise ConfigError(f"small_vit needs image_size divisible by its patch size {patch_size}, got {image_size}")
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:
        raise ConfigError("model small_vit needs timm: pip install 'edropout_ray[timm]'") from None
    return VisionTransformer(img_size=image_size, patch_size=patch_size, in_chans=in_channels, num_classes=num_classes,
                             embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0)


def is_torchvision_name(spec: str) -> bool:
    return ":" not in spec


def build_timm(name: str, num_classes: int, in_channels: int) -> nn.Module:
    """A timm architecture with random weights; timm adapts its stem to `in_channels`."""
    try:
        import timm
    except ImportError:
        raise ConfigError(f"model 'timm:{name}' needs timm: pip install 'edropout_ray[timm]'") from None
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"unknown timm model {name!r}{hint}; `edropout-ray models` lists what can be pruned")
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels)


def build_model(spec: str, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """Build with random weights (nothing is downloaded)."""
    if spec.startswith(TIMM_PREFIX):
        return build_timm(spec[len(TIMM_PREFIX):], num_classes, in_channels)
    if is_torchvision_name(spec):
        available = torchvision.models.list_models(module=torchvision.models)
        if spec not in available:
            raise ConfigError(
                f"unknown torchvision model {spec!r}; pick a classifier from torchvision.models "
                f"(e.g. resnet18, resnet50, alexnet, squeezenet1_1, vgg11_bn, mobilenet_v2), a timm model as "
                "'timm:<name>', or 'package.module:callable'"
            )
        return torchvision.models.get_model(spec, weights=None, num_classes=num_classes)
    factory = import_object(spec, what="model")
    offered = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    try:
        accepted = inspect.signature(factory).parameters
        kwargs = {k: v for k, v in offered.items() if k in accepted}
    except (TypeError, ValueError):
        kwargs = {}
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model factory {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


@dataclass(frozen=True)
class ModelRecipe:
    """Everything needed to build the same architecture with the same initial weights anywhere
    (the driver, the learner actor, every shard)."""

    spec: str
    num_classes: int
    in_channels: int
    image_size: int
    seed: int

    def build(self) -> nn.Module:
        torch.manual_seed(self.seed)
        return build_model(self.spec, self.num_classes, self.in_channels, self.image_size)
