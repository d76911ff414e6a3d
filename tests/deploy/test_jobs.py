"""Every shipped job and sweep config is valid: it loads, and its model and data set exist."""

from __future__ import annotations

from pathlib import Path

import pytest
import torchvision
import yaml

from edropout_ray.config import load_config
from edropout_ray.data import DATASETS
from edropout_ray.sweep import load_sweep

JOBS = Path(__file__).parents[2] / "jobs"
RUN_CONFIGS = sorted(p for p in JOBS.rglob("*.yaml") if not p.name.startswith(("sweep", "runtime_env")))
SWEEPS = sorted(JOBS.glob("sweep*.yaml"))


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.stem)
def test_run_config_is_valid(path):
    config = load_config(path)
    assert config.dataset in DATASETS
    assert ":" in config.model or config.model in torchvision.models.list_models(module=torchvision.models)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_config_is_valid(path):
    spec = load_sweep(path)
    assert spec.search, "a sweep searches something"


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_temperatures_are_on_the_energies_scale(path):
    """docs/quality.md: the margin energies (kappa 10) of a population differ by about 0.1 to 0.3, and at
    T = 1 nearly every child was accepted and the network stayed at chance. Above T = 0.1 a child worse
    by 0.1 is accepted more often than 1 time in 3."""
    spec = load_sweep(path)
    drawn = [spec.base.get("temperature", 0.0)]
    for section in (spec.search, spec.mutations):
        if "temperature" in section:
            drawn += next(iter(section["temperature"].values()))  # grid/choice values, or a range's bounds
    assert all(0 <= t <= 0.1 for t in drawn), f"{path.name} draws temperatures {drawn}"
    assert spec.base.get("energy", "margin") == "margin" and spec.base.get("kappa", 10.0) == 10.0, (
        "the bound holds for the margin energy at kappa 10; rescale it with the energy")


def test_paper_experiments_are_all_there():
    names = {p.stem for p in (JOBS / "paper").glob("*.yaml")}
    for dataset in ("fashion_mnist", "kmnist", "cifar10", "cifar100", "flowers102"):
        assert any(n.startswith(dataset + "_") for n in names), dataset
    for model in ("resnet18", "resnet34", "resnet50", "alexnet", "squeezenet1_1"):
        assert any(n.endswith("_" + model) for n in names), model


def test_runtime_env_ships_the_configs_but_not_local_state():
    env = yaml.safe_load((JOBS / "runtime_env.yaml").read_text())
    assert env["working_dir"] == "."
    assert {".venv", ".git", "/data"} <= set(env["excludes"])


def test_runtime_env_uploads_every_file_of_the_package():
    """Ray reads `excludes` as .gitignore lines: a bare `data` also dropped edropout_ray/data/, and the job then
    imported another copy of the package, or failed."""
    from ray._private.runtime_env.packaging import _get_excludes

    env = yaml.safe_load((JOBS / "runtime_env.yaml").read_text())
    root = JOBS.parent
    excluded = _get_excludes(root, env["excludes"])
    package = list((root / "edropout_ray").rglob("*.py"))
    assert package and not [p for p in package if excluded(p)]
    assert excluded(root / "data" / "x") and excluded(root / ".venv" / "x")
