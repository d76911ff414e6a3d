"""`keep_layers`: the outputs of named layers are never cut, in every process that builds the space."""

from __future__ import annotations

import pytest
import torch

from edropout_ray.config import Config, ConfigError
from edropout_ray.distributed.shard import ShardWorker
from edropout_ray.models import ModelRecipe, lenet5, small_vit
from edropout_ray.pruning.space import PruningSpace
from edropout_ray.training.run_setup import prepare


def lenet5_space(keep=()):
    torch.manual_seed(0)
    return PruningSpace(lenet5(), torch.randn(2, 1, 28, 28), keep_layers=keep)


def test_a_kept_layer_keeps_its_outputs_and_its_inputs_stay_prunable():
    full, kept = lenet5_space(), lenet5_space(("4",))  # LeNet-5's second convolution
    assert [g.root for g in full.groups] == ["0", "4", "9"]
    assert [g.root for g in kept.groups] == ["0", "9"]  # conv1's group still cuts conv2's inputs
    assert kept.num_units == full.num_units - 50
    assert ("4", "keep_layers '4'") in kept.skipped
    half = torch.arange(kept.num_units) % 2 == 0
    exported = kept.export(half)
    assert exported[4].out_channels == 50 and exported[4].in_channels == 10


def test_keeping_a_vits_patch_embedding_keeps_the_whole_embedding_width():
    torch.manual_seed(0)
    model, x = small_vit(), torch.randn(2, 1, 28, 28)
    full = PruningSpace(model, x)
    kept = PruningSpace(small_vit(), x, keep_layers=("patch_embed.proj",))
    width = [g for g in full.groups if "patch_embed.proj" in g.layers]
    assert len(width) == 1 and width[0].size == 64
    assert kept.num_units == full.num_units - 64
    assert all("patch_embed.proj" not in g.layers for g in kept.groups)  # heads and MLP neurons remain
    exported = kept.export(torch.arange(kept.num_units) % 2 == 0)
    assert exported.patch_embed.proj.out_channels == 64 and exported.pos_embed.shape[-1] == 64


@pytest.mark.parametrize("pattern", ["conv9", "11"])  # a typo; the classifier, whose outputs are never cut
def test_a_pattern_that_keeps_nothing_is_refused_by_name(pattern):
    with pytest.raises(ConfigError, match=f"keep_layers \\['{pattern}'\\] match no layer"):
        lenet5_space((pattern,))


def test_keep_layers_is_a_list_of_patterns_and_one_pattern_reads_as_one():
    assert Config(keep_layers="layer4.*").keep_layers == ["layer4.*"]  # --set keep_layers=layer4.*
    with pytest.raises(ConfigError, match="keep_layers must be a list of module-name patterns"):
        Config(keep_layers=["layer4.*", ""])


def test_the_run_and_its_shards_build_the_same_space():
    config = Config(model="edropout_ray.models:small_cnn", dataset="digits", keep_layers=["1*"])
    space = prepare(config).new_space()
    recipe = ModelRecipe(config.model, 10, 1, 8, config.seed)
    shard = ShardWorker(recipe, space.example_inputs.cpu(), "auto", "margin", 10.0, "cpu", None,
                        tuple(config.keep_layers))
    full = prepare(config.replace(keep_layers=[])).new_space()
    assert space.num_units == shard.num_units() < full.num_units


def test_models_check_takes_the_patterns_and_lists_the_kept_group():
    from edropout_ray.catalog import check

    said = check("edropout_ray.models:lenet5", 28, 1, keep_layers=("4",))
    assert "kept unpruned: 4 (keep_layers '4')" in said and "520 units in 2 coupled groups" in said
