"""The names a config may choose from, declared once at the bottom layer.

The config checks values against them when it is loaded; the layers above (data sets, energies,
scoring, baselines) import them from here, so a new choice is added in one place.
"""

from __future__ import annotations

import difflib
import re

METHODS = ("edropout", "dropnet", "l1", "random", "fixed_random", "tp_group_norm", "tp_magnitude", "tp_taylor")
LAYER_WIDTHS = ("uniform", "searched")
TRAIN_WHILE_SEARCHING = ("best", "dense")
LR_AFTER_FREEZE = ("continue", "restart")
DROPNET_STRATEGIES = ("min", "min_layer", "max", "random", "random_layer")
DROPNET_RESETS = ("initial", "random")
OPTIMIZERS = ("adadelta", "sgd", "adam")
SELECTIONS = ("paired", "rescore", "reference")
LR_SCHEDULES = ("cosine", "step")
SCORING_MODES = ("auto", "loop", "vmap", "at_size", "folded")
COSTS = ("params", "macs")  # what a size target counts: trainable parameters, or multiply-accumulates per sample
SCORE_PRECISIONS = ("float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")
EXPORT_FORMATS = ("pt2", "onnx")
ENERGIES = ("margin", "cross_entropy")
DATASETS = ("digits", "fashion_mnist", "kmnist", "cifar10", "cifar100", "flowers102", "imagefolder")
STREAMED_DATASET = "parquet"  # Parquet shards from `edropout-ray convert`, streamed by Ray Data
TIMM_PREFIX = "timm:"

_DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_OBJECT_SPEC = re.compile(rf"{_DOTTED}:[A-Za-z_]\w*")
_TIMM_NAME = re.compile(r"[A-Za-z0-9_][\w.\-]*")


def is_object_spec(text: str) -> bool:
    """'package.module:name' by syntax only: nothing is imported to check it."""
    return _OBJECT_SPEC.fullmatch(text) is not None


def is_timm_spec(text: str) -> bool:
    """'timm:<name>' by syntax only (timm is optional and not imported to check the name)."""
    return text.startswith(TIMM_PREFIX) and _TIMM_NAME.fullmatch(text[len(TIMM_PREFIX):]) is not None


def did_you_mean(value: object, names) -> str:
    """' (did you mean 'x'?)' for the closest name, or '' when none is close."""
    close = difflib.get_close_matches(str(value), list(names), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
