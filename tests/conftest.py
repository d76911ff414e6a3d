"""Shared fixtures: real models (torchvision and the built-in small ones) with their pruning spaces."""

from __future__ import annotations

import functools

import pytest
import torch
import torchvision

from edropout_ray.models import mlp, resnet20, small_cnn
from edropout_ray.evolution.population import repair_empty_groups
from edropout_ray.pruning.space import PruningSpace

# name -> (factory, input shape): smallest inputs each architecture accepts, to keep tests fast
MODELS = {
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), (3, 32, 32)),
    "resnet50": (lambda: torchvision.models.resnet50(num_classes=10), (3, 32, 32)),
    "alexnet": (lambda: torchvision.models.alexnet(num_classes=10), (3, 64, 64)),
    "squeezenet1_1": (lambda: torchvision.models.squeezenet1_1(num_classes=10), (3, 64, 64)),
    "vgg11_bn": (lambda: torchvision.models.vgg11_bn(num_classes=10), (3, 32, 32)),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(num_classes=10), (3, 32, 32)),
    "small_cnn": (lambda: small_cnn(num_classes=10, in_channels=1), (1, 8, 8)),
    "mlp": (lambda: mlp(num_classes=10, in_channels=1, image_size=8), (1, 8, 8)),
    "resnet20": (lambda: resnet20(num_classes=10, in_channels=1), (1, 28, 28)),  # residual, 28x28 gray
}


@functools.lru_cache(maxsize=None)
def _space(name: str, dtype: torch.dtype) -> PruningSpace:
    factory, shape = MODELS[name]
    torch.manual_seed(0)
    model = factory().to(dtype).eval()
    _randomize_norm_statistics(model)
    return PruningSpace(model, torch.randn(2, *shape, dtype=dtype))


def _randomize_norm_statistics(model: torch.nn.Module) -> None:
    """Fresh models have identity normalization; random statistics make mismatches visible."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)


@pytest.fixture(params=list(MODELS))
def model_name(request) -> str:
    return request.param


def space_of(name: str, dtype: torch.dtype = torch.float32) -> PruningSpace:
    """Built once per session; float64 spaces serve exactness checks free of float32 noise."""
    return _space(name, dtype)


def inputs_of(name: str, batch: int = 4, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(batch, *MODELS[name][1], generator=torch.Generator().manual_seed(seed), dtype=dtype)


def random_states(space: PruningSpace, count: int, p_keep: float = 0.6, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    states = torch.rand(count, space.num_units, generator=generator) < p_keep
    return repair_empty_groups(states, space.group_sizes, generator)


def assert_close_outputs(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Float tolerance scaled to the outputs' magnitude (some random-init models output ~1e-6)."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5 * scale + 1e-8)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    """A real `ray start --head` on 127.0.0.1 with token authentication (its token in a private HOME)
    and the job server; yields (gcs address, dashboard url, env) and stops the head afterwards."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    ray = str(Path(sys.executable).with_name("ray"))
    env = {**os.environ, "HOME": str(tmp_path), "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # the venv, activated
    env.pop("RAY_ADDRESS", None)
    port, dashboard = _free_port(), _free_port()
    subprocess.run([ray, "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=60)
    subprocess.run([ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=3",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--disable-usage-stats"],
                   env=env, check=True, capture_output=True, timeout=180)
    try:
        yield f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}", env
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)
