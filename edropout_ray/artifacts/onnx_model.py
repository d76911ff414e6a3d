"""The pruned model as an ONNX file, checked by ONNX Runtime: the format most deployments take.

Optional (`pip install 'edropout_ray[onnx]'`): onnx, onnxscript (torch's exporter) and onnxruntime.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError

ONNX_FILE = "pruned_model.onnx"
_NEEDED = ("onnx", "onnxscript", "onnxruntime")


def require_onnx() -> None:
    """Fail before a run, not after it, when the ONNX packages are missing."""
    missing = [name for name in _NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"export_formats includes onnx, which needs {', '.join(missing)}: "
                          "pip install 'edropout_ray[onnx]'")


def save_onnx(model: nn.Module, example_inputs: torch.Tensor, folder: Path) -> Path:
    """Export in eval mode with a dynamic batch dimension, weights inside the one file."""
    require_onnx()
    model = copy.deepcopy(model).eval().cpu()
    inputs = example_inputs[:2].detach().clone().cpu()
    path = Path(folder) / ONNX_FILE
    batch = torch.export.Dim("batch", min=1, max=65536)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # the exporter narrates every pass
    torch.onnx.export(model, (inputs,), str(path), dynamo=True, external_data=False,
                      input_names=["images"], output_names=["logits"], dynamic_shapes=({0: batch},))
    return path


class OnnxRunner:
    """An ONNX Runtime session on the CPU, called like a model on a torch tensor."""

    def __init__(self, path: str | Path):
        require_onnx()
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        feed = {self.input_name: x.detach().cpu().numpy().astype(np.float32)}
        return torch.from_numpy(self.session.run(None, feed)[0])
