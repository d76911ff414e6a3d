"""Deployment files agree with Ray, with pyproject.toml and with each other (no network, no Docker).

clusters/{aws,gcp}.yaml go through the config preparation and validation that `ray up` runs before
it contacts the cloud (Ray's own schema); the KubeRay manifests, docker/Dockerfile and .dockerignore
are read as files and checked against pyproject.toml and the repository.
"""

from __future__ import annotations

import copy
import fnmatch
import posixpath
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
LAUNCHER_CONFIGS = [ROOT / "clusters" / "aws.yaml", ROOT / "clusters" / "gcp.yaml"]
RAYCLUSTER = ROOT / "clusters" / "kuberay" / "raycluster.yaml"
RAYJOB = ROOT / "clusters" / "kuberay" / "rayjob.yaml"
GPU = "nvidia.com/gpu"
GPU_PINS = "docker/requirements-gpu.txt"  # torch and torchvision's CUDA build (tests/deploy/test_gpu_image.py)


# ---------------------------------------------------------------- readers


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def ray_pin() -> str:
    """The X of pyproject's `ray[...]==X` dependency."""
    for text in pyproject()["project"]["dependencies"]:
        requirement = Requirement(text)
        if requirement.name == "ray":
            pins = [s.version for s in requirement.specifier if s.operator == "=="]
            assert len(pins) == 1, f"ray must be pinned with == in pyproject.toml, got {text!r}"
            return pins[0]
    raise AssertionError("pyproject.toml does not depend on ray")


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, args = (pending + line).strip().partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "Dockerfile ends in a line continuation"
    return instructions


def base_image() -> str:
    froms = [args.split() for keyword, args in dockerfile() if keyword == "FROM"]
    assert len(froms) == 1, "expected a single-stage Dockerfile"
    return [word for word in froms[0] if not word.startswith("--")][0]


def base_image_versions() -> tuple[str, str]:
    """(Ray version, Python version) from a `rayproject/ray:<ray>-py<XY>-<gpu|cuXYZ>` tag."""
    repository, _, tag = base_image().partition(":")
    assert repository == "rayproject/ray", f"the base image must be Ray's official image, got {repository}"
    match = re.fullmatch(r"(\d+\.\d+\.\d+)-py(\d)(\d+)-(gpu|cu\d+)", tag)
    assert match, f"expected a tag like <ray version>-py311-gpu (a GPU image for the GPU workers), got {tag!r}"
    return match[1], f"{match[2]}.{match[3]}"


def project_image_name() -> str:
    """The repository name the image is published under: the Dockerfile's OCI title label."""
    for keyword, args in dockerfile():
        if keyword == "LABEL":
            labels = dict(item.partition("=")[::2] for item in shlex.split(args))
            if "org.opencontainers.image.title" in labels:
                return labels["org.opencontainers.image.title"]
    raise AssertionError("docker/Dockerfile has no org.opencontainers.image.title label")


def image_repository_name(image: str) -> str:
    """`registry/path/name:tag` -> name (pushing to any registry keeps the name)."""
    without_digest = image.split("@")[0]
    last = without_digest.rsplit("/", 1)[-1]
    return last.split(":")[0]


def copies() -> list[tuple[str, str, str]]:
    """(source in the build context, destination in the image, working dir then) for every COPY/ADD."""
    workdir, result = "/", []
    for keyword, args in dockerfile():
        if keyword == "WORKDIR":
            workdir = posixpath.join(workdir, args)
        elif keyword in ("COPY", "ADD"):
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            *sources, destination = words
            absolute = posixpath.join(workdir, destination)
            into_directory = destination.endswith("/") or len(sources) > 1
            for source in sources:
                target = posixpath.join(absolute, posixpath.basename(source)) if into_directory else absolute
                result.append((source, posixpath.normpath(target), workdir))
    return result


def image_path_to_repo(path: str) -> Path | None:
    """The repository file a path inside the image comes from, or None if no COPY puts it there."""
    path = posixpath.normpath(path)
    for source, target, _ in copies():
        if path == target or path.startswith(target + "/"):
            return ROOT / source / posixpath.relpath(path, target) if path != target else ROOT / source
    return None


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    assert not any(p.startswith("!") for p in patterns), "exceptions (!) are not handled by this test"
    return [p.strip("/") for p in patterns]


def ignored_by_docker(relative: str) -> bool:
    """Whether .dockerignore leaves `relative` (or a folder holding it) out of the build context."""
    parts = Path(relative).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in dockerignore_patterns():
        variants = {pattern, pattern[3:]} if pattern.startswith("**/") else {pattern}
        if any(fnmatch.fnmatchcase(prefix, v) for prefix in prefixes for v in variants):
            return True
    return False


def launcher_config(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def kuberay_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kuberay_cluster_specs() -> list[tuple[str, dict]]:
    (cluster,) = kuberay_documents(RAYCLUSTER)
    (job,) = kuberay_documents(RAYJOB)
    return [("raycluster.yaml", cluster["spec"]), ("rayjob.yaml", job["spec"]["rayClusterSpec"])]


def containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def gpu_limit(container: dict) -> int:
    resources = container.get("resources", {})
    return int(resources.get("limits", {}).get(GPU, resources.get("requests", {}).get(GPU, 0)))


def deployment_images() -> list[tuple[str, str]]:
    images = [(p.name, launcher_config(p)["docker"]["image"]) for p in LAUNCHER_CONFIGS]
    for name, spec in kuberay_cluster_specs():
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            images += [(name, c["image"]) for c in containers(group)]
    return images


# ---------------------------------------------------------------- cluster launcher (`ray up`)


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_config_passes_rays_own_validation(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = launcher_config(path)
    assert raw["provider"]["type"] == path.stem
    prepared = prepare_config(copy.deepcopy(raw))  # defaults merged, docker and min/max filled, as `ray up` does
    validate_config(prepared)  # ray/autoscaler/ray-schema.json plus Ray's cross-field checks


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_gpu_workers_scale_from_zero_and_head_has_no_gpu(path):
    from ray.autoscaler._private.util import prepare_config

    raw = launcher_config(path)
    config = prepare_config(copy.deepcopy(raw))
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head must not offer GPUs"
    assert not head["node_config"].get("guestAccelerators"), "GCP head with attached GPUs"
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    gpu_workers = {name: t for name, t in workers.items() if t["resources"].get("GPU", 0) >= 1}
    assert gpu_workers, "no worker type declares a GPU resource (actors with shard_gpus: 1 would never run)"
    for name, node_type in workers.items():
        assert node_type["min_workers"] == 0, f"{name} must start at zero nodes"
        assert 1 <= node_type["max_workers"] <= config["max_workers"], f"{name}: max_workers"
    assert "idle_timeout_minutes" in raw, "set the idle timeout explicitly"
    assert not raw.get("file_mounts"), "the image carries the project; no file mounts"


# ---------------------------------------------------------------- KubeRay


def test_kuberay_manifests_kinds_and_versions():
    (cluster,) = kuberay_documents(RAYCLUSTER)
    (job,) = kuberay_documents(RAYJOB)
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["shutdownAfterJobFinishes"] is True


@pytest.mark.parametrize("name, spec", kuberay_cluster_specs(), ids=["raycluster", "rayjob"])
def test_kuberay_gpu_workers_autoscale_from_zero(name, spec):
    assert spec["enableInTreeAutoscaling"] is True
    assert str(spec["rayVersion"]) == ray_pin(), f"{name}: rayVersion differs from pyproject's ray pin"
    assert all(gpu_limit(c) == 0 for c in containers(spec["headGroupSpec"])), f"{name}: the head must have no GPU"
    gpu_groups = [g for g in spec["workerGroupSpecs"] if any(gpu_limit(c) >= 1 for c in containers(g))]
    assert gpu_groups, f"{name}: no worker group requests {GPU}"
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] == 0, f"{name}: worker group {group['groupName']} must start at zero"
        assert group.get("replicas", 0) >= group["minReplicas"] and group["maxReplicas"] >= 1


def test_rayjob_uses_the_raycluster_spec():
    (cluster,) = kuberay_documents(RAYCLUSTER)
    (job,) = kuberay_documents(RAYJOB)
    assert job["spec"]["rayClusterSpec"] == cluster["spec"], "rayjob.yaml's rayClusterSpec drifted from raycluster.yaml"


def test_rayjob_entrypoint_runs_a_config_from_the_image():
    from edropout_ray.cli import _parser
    from edropout_ray.config import load_config

    (job,) = kuberay_documents(RAYJOB)
    argv = shlex.split(job["spec"]["entrypoint"])
    scripts = pyproject()["project"]["scripts"]
    if argv[0] in scripts:
        cli_args = argv[1:]
    else:
        assert re.fullmatch(r"python[\d.]*", argv[0]) and argv[1:3] == ["-m", "edropout_ray"], argv
        cli_args = argv[3:]
    args = _parser().parse_args(cli_args)  # the package's own CLI: unknown flags fail here
    assert args.command == "train" and args.config
    # absolute: the job's working directory is Ray's choice, not necessarily the image's WORKDIR
    assert posixpath.isabs(args.config), f"--config {args.config}: give the absolute path in the image"
    in_repo = image_path_to_repo(args.config)
    assert in_repo is not None, f"{args.config} is not copied into the image by docker/Dockerfile"
    assert in_repo.is_file() and in_repo.relative_to(ROOT).parts[0] == "jobs", in_repo
    config = load_config(in_repo, args.overrides)  # every key and --set validated as the run would
    if config.shards:
        worker_gpus = max(gpu_limit(c) for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"] for c in containers(g))
        assert config.shard_gpus <= worker_gpus and config.learner_gpus <= worker_gpus


def test_every_deployment_runs_the_project_image():
    name = project_image_name()
    for where, image in deployment_images():
        assert image_repository_name(image) == name, f"{where} runs {image}, not the {name} image"
    for where in {where for where, _ in deployment_images()}:  # head and workers: one image, one Ray
        assert len({image for w, image in deployment_images() if w == where}) == 1, f"{where}: mixed images"


# ---------------------------------------------------------------- Dockerfile against pyproject.toml


def test_base_image_ray_version_is_pyprojects_pin():
    ray_version, _ = base_image_versions()
    assert ray_version == ray_pin(), f"docker/Dockerfile's base image has Ray {ray_version}, pyproject pins {ray_pin()}"


def test_base_image_python_satisfies_requires_python():
    _, python = base_image_versions()
    requires = pyproject()["project"]["requires-python"]
    assert SpecifierSet(requires).contains(python), f"image Python {python} outside requires-python {requires}"


def test_dockerfile_pip_installs_the_copied_project_and_nothing_else():
    workdir, installs = "/", []
    for keyword, args in dockerfile():
        if keyword == "WORKDIR":
            workdir = posixpath.join(workdir, args)
        elif keyword == "RUN" and re.search(r"\bpip\b", args):
            installs.append((workdir, args))
    assert len(installs) == 1, f"expected one pip install, got {installs}"
    workdir, command = installs[0]
    words = shlex.split(command)
    start = words.index("install")
    assert words[start - 1] == "pip" or words[start - 2:start] == ["-m", "pip"], command
    rest = words[start + 1:]
    pins = [rest[i + 1] for i, w in enumerate(rest) if w in ("-r", "--requirement")]
    assert pins == [GPU_PINS], f"pip must take torch's CUDA build from {GPU_PINS} (and nothing else), got {pins}"
    assert image_path_to_repo(posixpath.join(workdir, GPU_PINS)) == ROOT / GPU_PINS, f"{GPU_PINS} is not copied"
    rest = [w for i, w in enumerate(rest) if w not in ("-r", "--requirement") and (i == 0 or rest[i - 1] not in
                                                                                     ("-r", "--requirement"))]
    options = [w for w in rest if w.startswith("-")]
    targets = [w for w in rest if not w.startswith("-")]
    assert targets == ["."], f"pip must install only the project source (pyproject's dependencies), got {targets}"
    assert not {"-e", "--editable", "--no-deps"} & set(options), options
    # what setuptools needs to build the project must be in the image where pip runs
    project = pyproject()
    needed = ["pyproject.toml", project["project"].get("readme")]
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    from setuptools import find_packages

    needed += sorted({p.split(".")[0] for p in find_packages(ROOT, include=include)})
    for relative in filter(None, needed):
        assert image_path_to_repo(posixpath.join(workdir, relative)) == ROOT / relative, (
            f"{relative} is not copied to {workdir}, where pip install . runs")


def test_every_copied_path_exists_and_is_in_the_build_context():
    assert copies(), "docker/Dockerfile copies nothing"
    for source, _, _ in copies():
        assert (ROOT / source).exists(), f"COPY {source}: no such path in the repository"
        assert not ignored_by_docker(source), f"COPY {source}: excluded by .dockerignore"


def test_dockerignore_leaves_out_local_state():
    for path in [".venv", ".git", "runs", "data", "edropout_ray/__pycache__"]:
        assert ignored_by_docker(path), f".dockerignore does not exclude {path}"
