"""The cluster image's PyTorch build runs on every GPU and VM image that clusters/ names (no GPU, no network).

docker/requirements-gpu.txt pins torch and torchvision with their CUDA variant. The tables below say
what such a build runs on and what each instance type and VM image is; a pin, instance type or VM
image they do not know fails here, saying what to add.
"""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PINS = ROOT / "docker" / "requirements-gpu.txt"
CLUSTER_FILES = sorted((ROOT / "clusters").rglob("*.yaml"))

# The compute capabilities compiled into a PyTorch CUDA wheel: torch.cuda.get_arch_list() of that wheel.
# 2.14.1+cu130: read from the wheel itself (the tests' environment; test_the_arch_table_is_the_installed_
# wheels_own checks it whenever that wheel is installed), and PyTorch's RELEASE.md support matrix for
# CUDA 13.0 since 2.11: Turing 7.5, Ampere 8.0/8.6, Hopper 9.0, Blackwell 10.0/12.0. 2.14.1+cu126 (the
# "legacy" build, the last with Volta; 2.15 drops it, pytorch/pytorch#190385): Maxwell 5.0 to Hopper 9.0.
BUILD_ARCHES = {
    "2.14.1+cu130": ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"],
    "2.14.1+cu126": ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"],
}
# The oldest Linux driver branch that runs each CUDA major release (NVIDIA's CUDA Toolkit release notes,
# "CUDA Toolkit and Corresponding Driver Versions", minor-version compatibility: 12.x from 525, 13.x from 580).
MIN_DRIVER_BRANCH = {12: 525, 13: 580}
# Compute capability of each GPU (NVIDIA's "CUDA GPUs" list).
CAPABILITY = {"V100": (7, 0), "T4": (7, 5), "A100": (8, 0), "A10G": (8, 6), "L4": (8, 9), "L40S": (8, 9),
              "H100": (9, 0), "H200": (9, 0), "B200": (10, 0)}
# The GPU of each AWS instance family and GCP machine series or accelerator type (the clouds' instance pages).
GPU_OF = {
    "p3": "V100", "p3dn": "V100", "g4dn": "T4", "g5": "A10G", "g6": "L4", "g6e": "L40S", "p4d": "A100",
    "p4de": "A100", "p5": "H100", "p5e": "H200", "p5en": "H200", "p6-b200": "B200",
    "a2-highgpu": "A100", "a2-megagpu": "A100", "a2-ultragpu": "A100", "a3-highgpu": "H100", "a3-megagpu": "H100",
    "g2-standard": "L4",
    "nvidia-tesla-v100": "V100", "nvidia-tesla-t4": "T4", "nvidia-tesla-a100": "A100", "nvidia-a100-80gb": "A100",
    "nvidia-l4": "L4", "nvidia-h100-80gb": "H100",
}
# A GPU node on a VM image whose name does not say its driver branch (AWS's DLAMI "latest") must check
# the branch in its initialization_commands with this query; the test runs that check.
DRIVER_QUERY = "nvidia-smi --query-gpu=driver_version"
AWS_TYPE = re.compile(r"\b([a-z]+\d+[a-z]*(?:-[a-z0-9]+)?)\.(?:\d*x?large|metal)\b")  # p4d.24xlarge -> p4d
GCP_TYPE = re.compile(r"\b((?:a\d|g\d)-(?:highgpu|megagpu|ultragpu|standard))-\d+g?\b")  # a2-highgpu-8g -> a2-highgpu


def pins() -> tuple[list[str], dict[str, Version]]:
    """(index URLs, {package: pinned version}) of docker/requirements-gpu.txt."""
    indexes, versions = [], {}
    for line in PINS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith(("--extra-index-url", "--index-url")):
            indexes.append(line.split()[-1])
        elif line:
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", f"{PINS.name}: pin {requirement.name} with ==, got {line!r}"
            versions[requirement.name] = Version(specifier.version)
    return indexes, versions


def torch_build() -> str:
    return str(pins()[1]["torch"])


def cuda_major(build: str) -> int:
    variant = Version(build).local  # "cu130"
    assert variant and re.fullmatch(r"cu\d{3}", variant), f"{build}: pin a CUDA build (+cuXYZ), not {variant!r}"
    return int(variant[2:-1])


def named_gpu_types() -> dict[str, str]:
    """{instance family, machine series or accelerator type: file} for every GPU type clusters/ names, in
    settings or in comments (what a reader would pick)."""
    found = {}
    for path in CLUSTER_FILES:
        text = path.read_text()
        families = [m[1] for m in AWS_TYPE.finditer(text) if m[1][0] in "pg"]  # AWS GPU families: p*, g*
        families += [m[1] for m in GCP_TYPE.finditer(text)]
        families += re.findall(r"acceleratorType:\s*['\"]?([\w-]+)", text)
        found |= {family: path.name for family in families}
    return found


def node_types() -> list[tuple[str, str, dict]]:
    """(file, name, node type) for every node type of the Ray cluster launcher files in clusters/."""
    found = []
    for path in CLUSTER_FILES:
        for document in yaml.safe_load_all(path.read_text()):
            if isinstance(document, dict):
                found += [(path.name, name, node) for name, node in document.get("available_node_types", {}).items()]
    return found


def vm_images(node: dict) -> list[str]:
    """Every VM image a node type boots (AWS ImageId, GCP sourceImage)."""
    images = []

    def walk(value):
        if isinstance(value, dict):
            images.extend(v for k, v in value.items() if k in ("ImageId", "sourceImage") and isinstance(v, str))
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(node.get("node_config", {}))
    return images


def driver_check(command: str, version: str | None, tmp_path: Path) -> subprocess.CompletedProcess:
    """`command` run by bash with a stand-in nvidia-smi that reports driver `version` (None: no driver)."""
    fake = tmp_path / "nvidia-smi"
    answer = f'echo "{version}"' if version else 'echo "NVIDIA-SMI has failed" >&2; exit 9'
    fake.write_text(f'#!/bin/sh\ncase "$*" in *--query-gpu=driver_version*) {answer};; *) exit 2;; esac\n')
    fake.chmod(0o755)
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"})


def runs_on(arches: list[str], capability: tuple[int, int]) -> bool:
    """A GPU runs a build's code compiled for its own major version and a minor no newer than its own
    (CUDA's binary compatibility: sm_86 code runs on an sm_89 GPU, sm_90 code not on sm_100)."""
    compiled = [(int(a[3:-1]), int(a[-1])) for a in arches]
    return any(major == capability[0] and minor <= capability[1] for major, minor in compiled)


def test_the_pins_are_one_cuda_build_within_pyprojects_ranges():
    indexes, versions = pins()
    assert set(versions) == {"torch", "torchvision"}, f"{PINS.name} pins exactly torch and torchvision"
    torch, vision = versions["torch"], versions["torchvision"]
    assert torch.local == vision.local, f"torch {torch} and torchvision {vision}: one CUDA variant for both"
    assert indexes == [f"https://download.pytorch.org/whl/{torch.local}"], f"PyTorch's {torch.local} wheel index"
    assert vision.minor == torch.minor + 15 and vision.major == 0, f"torchvision {vision} is not torch {torch}'s"
    dependencies = {Requirement(d).name: Requirement(d) for d in
                    tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    for name, version in versions.items():
        assert dependencies[name].specifier.contains(version), f"{name} {version} outside pyproject's {dependencies[name]}"


def test_the_arch_table_is_the_installed_wheels_own():
    torch = pytest.importorskip("torch")
    if torch.__version__ not in BUILD_ARCHES:
        pytest.skip(f"torch {torch.__version__} is not a build of the table")
    assert torch.cuda.get_arch_list() == BUILD_ARCHES[torch.__version__]


def test_the_pinned_build_runs_on_every_gpu_that_clusters_name():
    build = torch_build()
    assert build in BUILD_ARCHES, f"add torch.cuda.get_arch_list() of torch {build} to BUILD_ARCHES"
    named = named_gpu_types()
    assert {"p4d", "a2-highgpu"} <= set(named), named  # the GPU workers of aws.yaml and gcp.yaml
    for family, where in named.items():
        assert family in GPU_OF, f"{where} names {family}: add its GPU to GPU_OF"
        gpu = GPU_OF[family]
        assert runs_on(BUILD_ARCHES[build], CAPABILITY[gpu]), (
            f"{where} names {family} ({gpu}, sm_{''.join(map(str, CAPABILITY[gpu]))}), which torch {build} "
            f"(compiled for {', '.join(BUILD_ARCHES[build])}) cannot run: use another instance type")


def test_the_rule_refuses_what_the_build_lacks():
    cu130 = BUILD_ARCHES["2.14.1+cu130"]
    assert not runs_on(cu130, CAPABILITY["V100"]) and runs_on(BUILD_ARCHES["2.14.1+cu126"], CAPABILITY["V100"])
    assert runs_on(cu130, CAPABILITY["L4"]) and runs_on(cu130, CAPABILITY["A100"])
    assert not runs_on(["sm_90"], (10, 0))


def test_every_gpu_node_gets_a_driver_for_the_pinned_cuda(tmp_path):
    """An image that names its driver branch is checked here; one that does not must refuse, at node
    start, a driver older than the pinned CUDA needs: its check is run against stand-in drivers."""
    needed = MIN_DRIVER_BRANCH[cuda_major(torch_build())]
    nodes = node_types()
    assert {"gpu_worker"} <= {name for _, name, _ in nodes} and all(vm_images(node) for _, _, node in nodes)
    checked = 0
    for where, name, node in nodes:
        for image in vm_images(node):
            named = re.search(r"nvidia-(\d+)$", image)
            if named:
                assert int(named[1]) >= needed, f"{where}: {image} has driver {named[1]}; CUDA needs {needed}+"
                continue
            if not node.get("resources", {}).get("GPU"):
                continue  # no GPU, no CUDA: the head of aws.yaml
            checks = [c for c in node.get("initialization_commands", []) if DRIVER_QUERY in c]
            assert checks, (f"{where}: {name} boots {image}, whose driver branch is unknown: use an image that "
                            f"names it (e.g. ...-nvidia-{needed}) or check it in initialization_commands "
                            f"({DRIVER_QUERY})")
            (check,) = checks
            old, new = driver_check(check, f"{needed - 5}.51.03", tmp_path), driver_check(check, f"{needed}.95.05",
                                                                                           tmp_path)
            missing = driver_check(check, None, tmp_path)
            assert new.returncode == 0, f"{where}: {name}'s driver check refuses driver {needed}: {new.stderr}"
            for refused in (old, missing):
                assert refused.returncode != 0 and f"branch {needed} or newer" in refused.stderr, (
                    f"{where}: {name}'s driver check lets an unusable driver through: {refused.stderr!r}")
            checked += 1
    assert checked >= 1, "aws.yaml's GPU workers boot the DLAMI's latest, which must be checked"


def test_the_docs_name_the_images_python_for_ray_clients():
    tag = re.search(r"^FROM rayproject/ray:[\d.]+-py(\d)(\d+)", (ROOT / "docker" / "Dockerfile").read_text(), re.M)
    python = f"{tag[1]}.{tag[2]}"
    assert f"Python {python}" in (ROOT / "docs" / "cluster.md").read_text(), "docs/cluster.md: name the image's Python"
