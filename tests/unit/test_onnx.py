"""ONNX export: the pruned model as an ONNX file that ONNX Runtime runs with the masked model's outputs."""

from __future__ import annotations

import pytest
import torch

from helpers import assert_close_outputs, inputs_of, random_states, space_of
from edropout_ray.config import Config
from edropout_ray.errors import ConfigError
from edropout_ray.artifacts.onnx_model import ONNX_FILE, OnnxRunner, save_onnx


@pytest.mark.parametrize("name", ["small_cnn", pytest.param("mobilenet_v2", marks=pytest.mark.extended)])  # 18 s
def test_onnx_file_matches_masked_model_in_onnx_runtime(name, tmp_path):
    space = space_of(name)
    state = random_states(space, 1, seed=11)[0]
    path = save_onnx(space.export(state), space.example_inputs, tmp_path)
    assert path.name == ONNX_FILE and len(list(tmp_path.iterdir())) == 1, "weights inside the one file"
    x = inputs_of(name, batch=5)  # another batch size than the export's example: the batch is dynamic
    with torch.no_grad():
        masked = space.masked_forward(state, x)
    assert_close_outputs(OnnxRunner(path)(x), masked)


def test_unknown_export_format_is_a_clear_error():
    with pytest.raises(ConfigError, match="export_formats must be a non-empty list of pt2, onnx"):
        Config(export_formats=["pt2", "tflite"])
    assert Config(export_formats="onnx").export_formats == ["onnx"]


def test_a_config_with_onnx_loads_without_onnx_and_the_run_stops_before_reading_data(monkeypatch, tmp_path):
    from edropout_ray import train
    from edropout_ray.artifacts import onnx_model

    monkeypatch.setattr(onnx_model, "_NEEDED", ("edropout_ray_no_such_package",))
    config = Config(export_formats=["pt2", "onnx"])  # loading never needs onnx

    def no_data(*args, **kwargs):
        raise AssertionError("the run read data before checking for onnx")

    monkeypatch.setattr(train, "prepare", no_data)
    with pytest.raises(ConfigError, match="needs edropout_ray_no_such_package: pip install 'edropout_ray\\[onnx\\]'"):
        train.run(config, tmp_path / "run", progress=False)
