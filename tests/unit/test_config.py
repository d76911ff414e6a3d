"""Config validation at the edge: every field checked, errors that name the fix."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from edropout_ray.config import Config, load_config, parse_override
from edropout_ray.errors import ConfigError


def test_defaults_are_valid_and_follow_the_paper_in_the_evolution():
    config = Config()
    assert (config.population_size, config.p_init, config.mutation_factor, config.crossover_rate, config.kappa) == \
        (8, 0.5, 0.9, 0.9, 10.0)
    assert config.energy == "margin"
    # measured on Fashion-MNIST (docs/quality.md): the reference's stale parent energies
    # stall selection, and Adadelta at lr 1 with a step schedule trains unstably in short budgets
    assert (config.selection, config.optimizer, config.lr_schedule) == ("paired", "sgd", "cosine")


@pytest.mark.parametrize("converge_after, epochs, first_epoch", [
    (None, 10, None), (0, 10, 0), (4, 10, 4), (0.5, 10, 5), (0.5, 3, 1), (0.25, 30, 7),
    (1, 10, 1), (1.0, 10, 1), (15.0, 30, 15), (0.0, 10, 0)])
def test_converge_after_is_an_epoch_or_a_fraction_of_the_epochs(converge_after, epochs, first_epoch):
    assert Config(converge_after=converge_after, epochs=epochs).converge_epoch == first_epoch


def test_exponent_numbers_read_as_floats(tmp_path):
    """YAML 1.1 reads 5e-4 (no dot) as a string; a float key takes it as the number it means."""
    path = tmp_path / "run.yaml"
    path.write_text("weight_decay: 5e-4\n")
    assert load_config(path, ["lr=1e-2"]).weight_decay == 5e-4
    assert load_config(None, ["lr=1e-2"]).lr == 0.01
    with pytest.raises(ConfigError, match="lr must be float"):
        load_config(None, ["lr=fast"])


def test_yaml_file_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("epochs: 3\ntemperature: 0.5\nconverge_after: 1\n")
    config = load_config(path, ["temperature=2", "converge_after=null", "dense_baseline=true"])
    assert config.epochs == 3 and config.temperature == 2.0 and config.converge_after is None
    assert config.dense_baseline is True


@pytest.mark.parametrize("override, words", [
    ("population_size=3", "population_size must be >= 4"),
    ("p_init=1.5", "p_init must be in [0, 1]"),
    ("temperature=-1", "temperature must be >= 0"),
    ("epochs=two", "epochs must be int"),
    ("optimizer=rmsprop", "optimizer must be one of adadelta, sgd, adam"),
    ("dense_baseline=maybe", "dense_baseline must be bool"),
    ("lr=0", "lr must be a positive number"),
    ("converge_after=-2", "converge_after must be a whole epoch index"),
    ("converge_after=1.5", "a fraction of the epochs in (0, 1) such as 0.5"),
    ("converge_after=-0.5", "converge_after must be a whole epoch index"),
    ("converge_after=.inf", "converge_after must be a whole epoch index"),
    ("selection=stale", "selection must be one of paired, rescore, reference"),
    ("converge_diversity=1", "converge_diversity (fraction of units) must be in [0, 1)"),
    ("score_batch=0", "score_batch (samples per state scored) must be >= 1 or null"),
    ("score_channels_last=yes please", "score_channels_last must be bool"),
])
def test_invalid_values_are_named(override, words):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    assert words in str(error.value)


def test_a_whole_float_converge_after_is_the_same_epoch_index_as_the_int():
    assert Config(converge_after=1.0) == Config(converge_after=1)
    assert isinstance(load_config(None, ["converge_after=15.0"]).converge_after, int)
    assert load_config(None, ["converge_after=0.5"]).converge_after == 0.5


@pytest.mark.parametrize("override, words", [
    ("energy=margn", "got 'margn' (did you mean 'margin'?)"),
    ("energy=crossentropy", "did you mean 'cross_entropy'?"),
    ("energy=my module:fn", "energy must be one of margin, cross_entropy or 'package.module:function'"),
    ("model=resnet81", "unknown torchvision model 'resnet81' (did you mean 'resnet18'?)"),
    ("model=mobilenetv2", "did you mean 'mobilenet_v2'?"),
    ("model='timm:'", "must look like 'timm:<name>'"),
    ("model='my.module:'", "must look like 'package.module:callable'"),
    ("dataset=cifar1O", "dataset must be one of digits"),
    ("dataset=fashion-mnist", "did you mean 'fashion_mnist'?"),
    ("dataset=parqet", "did you mean 'parquet'?"),
    ("optimizer=adamw", "did you mean 'adam'?"),
    ("score_precision=bf16", "score_precision must be one of float32, bfloat16, float16"),
    ("score_precision=bfloat", "did you mean 'bfloat16'?"),
    ("scoring=fold", "did you mean 'folded'?"),
    ("export_formats=[pt2, onx]", "did you mean 'onnx'?"),
])
def test_names_are_checked_at_load_with_the_closest_valid_one(override, words):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    assert words in str(error.value)


def test_names_checked_by_syntax_need_nothing_imported():
    """Neither timm (installed here) nor the user's module, nor torch, is imported to load the config: only the
    run builds the model. In a fresh interpreter, as this one may have imported them for other tests."""
    overrides = ["energy=cross_entropy", "energy=my_package.energies:flat", "model=timm:convnext_atto",
                 "model=timm:resnet50.a1_in1k", "model=some.module:build", "dataset=parquet", "dataset=imagefolder"]
    script = ("import sys; from edropout_ray.config import load_config\n"
              f"for override in {overrides!r}: load_config(None, [override])\n"
              "print(sorted(m for m in ('timm', 'my_package', 'some', 'torch') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"imported while loading configs: {done.stdout}"


def test_a_torchvision_name_is_checked_against_torchvision():
    assert load_config(None, ["model=resnet18"]).model == "resnet18"


@pytest.mark.parametrize("settings, idle", [
    (["epochs=30", "converge_after=15"], "converge_after 15 has no effect: its epoch 15 comes at or after the "
                                         "freeze_by deadline (0.3 of 30 epochs: epoch 9)"),
    (["epochs=90", "converge_after=0.5"], "its epoch 45 comes at or after the freeze_by deadline (0.3 of 90 epochs"),
    (["epochs=30", "converge_after=8"], None),
    (["epochs=30", "converge_after=15", "freeze_by=null"], None),
    (["epochs=30", "converge_after=15", "freeze_by=0.6"], None),
    (["epochs=30", "converge_after=15", "method=l1"], None),
])
def test_converge_after_that_the_freeze_by_deadline_precedes_is_warned(settings, idle, caplog):
    """The deadline is checked first at every step: a converge_after at or after it never acts."""
    with caplog.at_level(logging.WARNING, logger="edropout_ray.config"):
        load_config(None, settings)
    warned = [r.getMessage() for r in caplog.records]
    if idle is None:
        assert warned == []
    else:
        assert len(warned) == 1 and idle in warned[0] and "set freeze_by: null" in warned[0]


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match="did you mean 'population_size'"):
        load_config(None, ["populaton_size=8"])


def test_override_syntax_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("epochs")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_choice_lists_are_declared_once():
    """The layers above import the config's choices, so a new name is added in one place."""
    from edropout_ray import choices, data
    from edropout_ray.baselines import pruners
    from edropout_ray.evolution import energies
    from edropout_ray.pruning import space

    from edropout_ray.pruning import scoring_options

    assert space.SCORING_MODES is choices.SCORING_MODES and data.DATASETS is choices.DATASETS
    assert scoring_options.SCORE_PRECISIONS is choices.SCORE_PRECISIONS
    assert energies.BUILTIN_ENERGIES is choices.ENERGIES
    assert pruners.STRATEGIES is choices.DROPNET_STRATEGIES


def test_shipped_run_configs_set_no_converge_after_that_cannot_act():
    from pathlib import Path

    jobs = Path(__file__).parents[2] / "jobs"
    configs = [p for p in sorted(jobs.rglob("*.yaml")) if not p.name.startswith(("sweep", "runtime_env"))]
    assert configs
    idle = {p.name: why for p in configs if (why := load_config(p).idle_converge_after())}
    assert not idle, idle
