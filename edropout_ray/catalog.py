"""What can be pruned: the architectures the tests check, and a check of any model by name.

`edropout-ray models` prints the lists; `edropout-ray models --check NAME` builds one model and
its pruning space and says what would be pruned and whether the exported model matches.
"""

from __future__ import annotations

import contextlib
import logging

import torch

# Every model listed as tested is pruned exactly by tests/unit/test_model_coverage.py (invariants 1 and 2,
# random init), which takes its lists from here and fails (never skips) when one is not prunable.
TORCHVISION_TESTED = ("resnet18", "resnet50", "alexnet", "squeezenet1_1", "vgg11_bn", "mobilenet_v2",
                      "resnext50_32x4d", "regnet_x_400mf", "convnext_tiny")

# The project's own models (models.py); small_cnn, mlp and resnet20 are among tests/conftest.py's MODELS.
BUILT_IN = ("small_cnn", "mlp", "lenet5", "resnet20", "small_vit")

# One small variant per timm family, checked the same way.
TIMM_FAMILIES = {
    "ResNet-T": "resnet10t",
    "ResNet-D": "resnet18d",
    "RegNetX": "regnetx_002",
    "RegNetY": "regnety_002",
    "EfficientNet": "efficientnet_b0",
    "TinyNet": "tinynet_e",
    "MobileNetV2": "mobilenetv2_050",
    "MobileNetV3": "mobilenetv3_small_050",
    "MobileNetV4": "mobilenetv4_conv_small_050",
    "MNASNet": "mnasnet_small",
    "FBNet": "fbnetc_100",
    "MixNet": "mixnet_s",
    "LCNet": "lcnet_050",
    "ConvNeXt": "convnext_atto",
    "GhostNet": "ghostnet_050",
    "RepGhostNet": "repghostnet_050",
    "RepVGG": "repvgg_a0",
    "MobileOne": "mobileone_s0",
    "DLA": "dla46_c",
    "CSPNet": "cspresnet50",
    "Darknet": "darknet17",
    "GENet": "gernet_s",
    "HGNetV2": "hgnetv2_b0",
    "DenseNet": "densenet121",
    "DPN": "dpn48b",
    "SelecSLS": "selecsls42b",
    "ResNeXt": "resnext26ts",
    "SKNet": "skresnet18",
    "ResNeSt": "resnest14d",
    "VoVNet": "ese_vovnet19b_slim_dw",
    "InceptionNeXt": "inception_next_atto",
}

# Vision transformers: attention heads and MLP neurons are units (pruning/heads.py). Each family is checked in a
# small configuration by tests/unit/test_transformers.py (its SMALL, keyed like this dict); the names here are
# the full-size models to --check.
TRANSFORMER_FAMILIES = {
    "vit": ("ViT (timm)", "timm:vit_tiny_patch16_224"),
    "deit": ("DeiT (timm)", "timm:deit_small_patch16_224"),
    "swin": ("Swin (timm)", "timm:swin_tiny_patch4_window7_224"),
    "torchvision_vit": ("ViT (torchvision)", "vit_b_16"),
    "torchvision_swin": ("Swin (torchvision)", "swin_t"),
}

# Refused with a clear error (tests/unit/test_model_coverage.py checks that they are): name -> why.
UNSUPPORTED = {
    "shufflenet_v2_x0_5": "Torch-Pruning cannot trace its channel shuffle",
    "timm:cs3darknet_s": "CSP-Darknet (CS3): Torch-Pruning cannot trace it",
    "swin_v2_t": "torchvision's Swin V2: Torch-Pruning's group search over its F.linear projections does not end",
}


def listing() -> str:
    lines = ["torchvision classifiers (model: <name>; any name of torchvision.models.list_models()); tested:",
             "  " + ", ".join(TORCHVISION_TESTED),
             "timm models (model: timm:<name>; pip install 'edropout_ray[timm]'); one model per family tested:"]
    lines += [f"  {family:<20} timm:{name}" for family, name in TIMM_FAMILIES.items()]
    lines += ["not supported (refused with an error):"]
    lines += [f"  {name:<20} {why}" for name, why in UNSUPPORTED.items()]
    lines += ["vision transformers (attention heads, MLP neurons and, in timm ViT/DeiT, the embedding width as "
              "units); one model per family tested:"]
    lines += [f"  {family:<20} {name}" for family, name in TRANSFORMER_FAMILIES.values()]
    lines += ["built in (model: edropout_ray.models:<name>): " + ", ".join(BUILT_IN),
              "your own: model: package.module:callable returning an nn.Module",
              "check any of them: edropout-ray models --check NAME [--image-size 64]"]
    return "\n".join(lines)


def check(spec: str, image_size: int = 64, in_channels: int = 3, num_classes: int = 10,
          keep_layers: tuple[str, ...] = ()) -> str:
    """Build `spec`, its pruning space, and the export of a random state; say what was found."""
    with _quiet("edropout_ray.pruning.space"):  # the skips are listed in what this returns
        return _check(spec, image_size, in_channels, num_classes, keep_layers)


@contextlib.contextmanager
def _quiet(name: str):
    """Only errors from logger `name` while the block runs; its level is restored after (a caller's
    own logging, or a later test's, is left as it was)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check(spec: str, image_size: int, in_channels: int, num_classes: int, keep_layers: tuple[str, ...]) -> str:
    from .artifacts.pruned_model import count_parameters
    from .models import build_model
    from .evolution.population import repair_empty_groups
    from .pruning.space import PruningSpace

    torch.manual_seed(0)
    model = build_model(spec, num_classes, in_channels, image_size).double().eval()
    for module in model.modules():  # torchvision's ViT starts with a zero classifier: outputs 0 would hide a mismatch
        if isinstance(module, torch.nn.Linear) and not module.weight.any():
            torch.nn.init.normal_(module.weight, std=0.02)
    x = torch.randn(2, in_channels, image_size, image_size, dtype=torch.float64)
    space = PruningSpace(model, x, keep_layers=keep_layers)
    generator = torch.Generator().manual_seed(0)
    state = repair_empty_groups(torch.rand(1, space.num_units, generator=generator) < 0.5, space.group_sizes,
                                generator)[0]
    exported = space.export(state)
    with torch.no_grad():
        masked = space.masked_forward(state, x)
        difference = float((exported(x) - masked).abs().max() / masked.abs().max().clamp(min=1e-30))
    verdict = "prunable" if difference < 1e-6 else "NOT exact: please report it"
    return "\n".join([
        f"{spec}: {verdict}",
        space.describe(),
        f"a random state keeping half the units: {count_parameters(exported):,} of {count_parameters(model):,} "
        f"parameters; masked vs exported outputs differ by {difference:.1e} (relative)",
    ])
