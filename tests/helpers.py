"""Shared test helpers: real models (torchvision and the built-in small ones) with their pruning spaces.

Plain functions imported by the tests (`from helpers import ...`, tests/ is on pytest's pythonpath);
fixtures stay in conftest.py files.
"""

from __future__ import annotations

import functools
import gzip
import os
import uuid
from dataclasses import dataclass

import numpy as np
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
    "resnet20": (lambda: resnet20(num_classes=10, in_channels=1), (1, 28, 28)),  # residual, 28x28 gray
    "mlp": (lambda: mlp(num_classes=10, in_channels=1, image_size=8), (1, 8, 8)),
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


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (read from /proc): for example the Ray instance a run started for itself."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        parent = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def ray_head_processes(port: int) -> list[int]:
    """The processes of the Ray head whose GCS listens on `port`, and every process below them: the GCS
    server names its port, the raylet and the dashboard its address (agents and workers are children)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                tokens = handle.read().decode(errors="replace").replace("\0", " ").split()
        except OSError:
            continue
        if any(token == f"--gcs_server_port={port}" or
               (token.startswith(("--gcs-address=", "--gcs_address=")) and token.endswith(f":{port}"))
               for token in tokens):
            found.append(int(entry))
    return sorted({pid for root in found for pid in [root, *descendants(root)]})


# what a node needs to reach the local S3 endpoint (moto takes any key; no instance metadata is asked)
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_EC2_METADATA_DISABLED": "true"}


@dataclass(frozen=True)
class S3Bucket:
    """A bucket on a local S3 endpoint, with the URIs the CLI takes and a pyarrow filesystem to look inside."""

    name: str
    endpoint: str

    @classmethod
    def create(cls, endpoint: str) -> "S3Bucket":
        bucket = cls(f"test-{uuid.uuid4().hex[:12]}", endpoint)
        bucket.filesystem.create_dir(bucket.name)
        return bucket

    @property
    def filesystem(self):
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(endpoint_override=self.endpoint, scheme="http", allow_bucket_creation=True,
                                 access_key=S3_ENV["AWS_ACCESS_KEY_ID"], secret_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
                                 region=S3_ENV["AWS_DEFAULT_REGION"])

    def uri(self, path: str) -> str:
        return f"s3://{self.name}/{path}?endpoint_override={self.endpoint}&scheme=http"

    def files(self, path: str = "") -> set[str]:
        """Every file under `path`, relative to it."""
        import pyarrow.fs as pafs

        root = f"{self.name}/{path}".rstrip("/")
        infos = self.filesystem.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        return {info.path[len(root) + 1:] for info in infos if info.type == pafs.FileType.File}

    def read(self, path: str) -> bytes:
        with self.filesystem.open_input_stream(f"{self.name}/{path}") as stream:
            return stream.read()


def write_idx(path, array: np.ndarray, gz: bool = False):
    """uint8 idx file: magic 0x0000 08 <ndim>, big-endian int32 dims, raw bytes; gzipped as `path`.gz if gz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (0x0800 + array.ndim).to_bytes(4, "big")
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    content = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(content))
    else:
        path.write_bytes(content)
    return path


def write_digits_as_fashion_mnist(folder) -> int:
    """scikit-learn's 8x8 digits as the four idx files of Fashion-MNIST (a flat folder), so a test reads a real
    file data set without a download; returns the number of training images."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * 255 / 16).round().astype(np.uint8)
    split = len(images) * 4 // 5
    for prefix, part in (("train", slice(None, split)), ("t10k", slice(split, None))):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images[part], gz=True)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", digits.target[part], gz=True)
    return split


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a Ray head, a dashboard, a node's agents)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def double_mlp(num_classes: int, in_channels: int, image_size: int) -> torch.nn.Module:
    """A float64 MLP (a `helpers:double_mlp` model spec): runs whose results are compared to 1e-10."""
    features = in_channels * image_size * image_size
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(features, 32), torch.nn.ReLU(),
                               torch.nn.Linear(32, 16), torch.nn.ReLU(), torch.nn.Linear(16, num_classes)).double()


def after_each_step(engine, action) -> None:
    """Call `action(engine)` after every step the engine takes (a kill at a given step, a record of state)."""
    step = engine.step

    def step_then_act(x, y, epoch):
        record = step(x, y, epoch)
        action(engine)
        return record

    engine.step = step_then_act
