"""MACs counted from masks: by hand on small layers, against the exported network, and as a size target."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
from torch import nn
from torchvision.models import VisionTransformer, resnet18

from edropout_ray.config import Config, ConfigError
from edropout_ray.models import lenet5
from edropout_ray.pruning.macs import positions_per_weight
from edropout_ray.pruning.sizing import counts_for_size, fit_states_to_size, fit_to_size, size_fraction, state_with_counts
from edropout_ray.pruning.space import PruningSpace


def tiny_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))


def test_macs_of_a_convolution_and_a_linear_layer_by_hand():
    space = PruningSpace(tiny_cnn(), torch.randn(2, 1, 8, 8))
    assert space.num_units == 4  # the convolution's channels; the classifier's outputs are not cut
    # conv: 4 channels x 1 x 3x3 at 6x6 outputs; linear: 10 x 144 at one position
    assert space.kept_macs(torch.ones(4, dtype=torch.bool)) == 4 * 9 * 36 + 10 * 144
    half = torch.tensor([True, False, True, False])
    assert space.kept_macs(half) == 2 * 9 * 36 + 10 * 72
    assert size_fraction(space, half, "macs") == pytest.approx(0.5)


def test_attention_projections_count_once_per_token():
    """nn.MultiheadAttention applies in_proj_weight and out_proj without calling a linear module."""
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32,
                            num_classes=10)
    positions = positions_per_weight(vit, torch.randn(2, 3, 32, 32))
    tokens = 16 + 1  # 4x4 patches and the class token
    assert positions["conv_proj.weight"] == 16
    for name in ("self_attention.in_proj_weight", "self_attention.out_proj.weight", "mlp.0.weight", "mlp.3.weight"):
        assert positions[f"encoder.layers.encoder_layer_0.{name}"] == tokens, name
    assert positions["heads.head.weight"] == 1  # the class token only


@pytest.mark.parametrize("model, shape", [(lenet5, (2, 1, 28, 28)), (lambda: resnet18(num_classes=10), (2, 3, 32, 32))])
def test_macs_counted_on_masks_are_the_exported_networks(model, shape):
    torch.manual_seed(0)
    space = PruningSpace(model(), torch.randn(*shape))
    state = torch.rand(space.num_units, generator=torch.Generator().manual_seed(1)) < 0.5
    exported = space.export(state)
    layers = {n: m for n, m in exported.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    positions = positions_per_weight(exported, space.example_inputs)
    physical = sum(int(layers[name[:-len(".weight")]].weight.numel() * count) for name, count in positions.items())
    assert space.kept_macs(state) == physical
    # Torch-Pruning's counter also counts normalizations and biases: a little more, never less
    theirs, _ = tp.utils.count_ops_and_params(exported, space.example_inputs[:1])
    assert 0.9 < space.kept_macs(state) / theirs <= 1.0


@pytest.fixture(scope="module")
def resnet_space():
    torch.manual_seed(0)
    return PruningSpace(resnet18(num_classes=10), torch.randn(2, 3, 32, 32))


def test_a_macs_target_is_not_a_parameter_target(resnet_space):
    """Early layers carry many MACs and few parameters: the same target keeps different states."""
    space = resnet_space
    order = torch.arange(space.num_units, dtype=torch.float32)  # later units first: late layers kept

    def keep_late(fraction):
        return order >= (1 - fraction) * space.num_units

    by_macs = fit_to_size(space, keep_late, 0.5, cost="macs")
    by_params = fit_to_size(space, keep_late, 0.5, cost="params")
    assert size_fraction(space, by_macs, "macs") == pytest.approx(0.5, abs=0.01)
    assert size_fraction(space, by_params, "params") == pytest.approx(0.5, abs=0.01)
    assert not torch.equal(by_macs, by_params)


@pytest.mark.parametrize("multiple", [1, 8])
def test_populations_and_uniform_widths_hold_a_macs_target(resnet_space, multiple):
    space = resnet_space
    generator = torch.Generator().manual_seed(0)
    states = torch.rand(6, space.num_units, generator=generator) < 0.7
    fitted = fit_states_to_size(space, states, 0.3, generator, multiple, cost="macs")
    for state in fitted:
        assert size_fraction(space, state, "macs") == pytest.approx(0.3, abs=0.01)
    counts = counts_for_size(space, 0.3, multiple, cost="macs")
    uniform = state_with_counts(space.group_sizes, counts)
    assert size_fraction(space, uniform, "macs") == pytest.approx(0.3, abs=0.02)


def test_a_run_is_held_to_one_size():
    with pytest.raises(ConfigError, match="are all set: a run is held to one size"):
        Config(prune_target_params=0.5, prune_target_macs=0.5)
    with pytest.raises(ConfigError, match="prune_target_macs"):
        Config(prune_target_macs=1.5)
    assert Config(prune_target_macs=0.25).size_target == ("macs", 0.25)
    assert Config().size_target is None
