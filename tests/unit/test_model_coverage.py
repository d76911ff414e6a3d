"""The models practitioners bring: timm families and the torchvision models with grouped convolutions,
LayerNorm and channel shuffles. Each is pruned exactly (invariant 1: masked == exported, and the
export is smaller) and scored consistently in every scoring mode (invariant 2; folded also with
batch statistics). The models `edropout-ray models` calls tested come from the lists in catalog.py, checked here (or, for helpers.MODELS, in test_space.py): one
that is no longer prunable fails instead of being skipped; the unsupported ones must be refused.

Random init, 32x32 inputs (64x64 where a model needs them), float64 so that a real mismatch cannot
hide behind float32 noise.
"""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision
from torch import nn

from helpers import MODELS
from edropout_ray.catalog import TIMM_FAMILIES, TORCHVISION_TESTED, UNSUPPORTED, listing
from edropout_ray.errors import EDropoutError
from edropout_ray.models import build_model
from edropout_ray.evolution.population import repair_empty_groups
from edropout_ray.pruning.space import PruningSpace

INPUT_SIZE = {"timm:inception_next_atto": 64, "timm:dpn48b": 64, "timm:selecsls42b": 64,
              "shufflenet_v2_x0_5": 64}
GROUPED = ("regnet_x_400mf", "convnext_tiny")  # test_grouped_convs_and_layernorm_are_pruned_not_skipped
RESNEXT = "resnext50_32x4d"  # test_resnext_grouped_convs_keep_equal_groups


def _space(spec: str, size: int) -> PruningSpace:
    """A model listed as tested must be prunable: an error here fails the test, it is not skipped."""
    torch.manual_seed(0)
    model = build_model(spec, num_classes=10, in_channels=3, image_size=size).double().eval()
    return PruningSpace(model, torch.randn(2, 3, size, size, dtype=torch.float64))


def check_invariants(spec: str, size: int = 32) -> PruningSpace:
    space = _space(spec, size)
    print(space.describe())  # the reasons of anything kept unpruned, in the test log
    generator = torch.Generator().manual_seed(0)
    states = repair_empty_groups(torch.rand(3, space.num_units, generator=generator) < 0.6, space.group_sizes,
                                 generator)
    x = torch.randn(3, 3, size, size, dtype=torch.float64, generator=generator)
    exported = space.export(states[0])
    with torch.no_grad():
        masked = space.masked_forward(states[0], x)
        pruned = exported(x)
    torch.testing.assert_close(pruned, masked, rtol=1e-9, atol=1e-9 * masked.abs().max().item())
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert params(exported) < params(space.model), "the export must be smaller"
    y = torch.arange(len(x)) % 10
    one_by_one = torch.cat([space.score(s.unsqueeze(0), x, y) for s in states])
    for scoring in ("loop", "vmap", "folded"):
        space.scoring = scoring
        torch.testing.assert_close(space.score(states, x, y), one_by_one, rtol=1e-9, atol=1e-9)
    assert space.folded_supported, "folded scoring must not fall back to masked on a listed model"
    check_folded_with_batch_statistics(space, states, x, y)
    return space


def check_folded_with_batch_statistics(space: PruningSpace, states: torch.Tensor, x: torch.Tensor,
                                       y: torch.Tensor) -> None:
    """Train mode: folded batch norms take each state's statistics over its own samples, as masked ones do.

    Functional dropout in the model's code (timm's GhostNet: F.dropout(x, self.drop_rate, self.training))
    is not a module that scoring turns off: it draws differently per call, so it is set to 0 here."""
    dropping = [(m, key) for m in space.model.modules() for key in ("drop_rate", "p")
                if isinstance(getattr(m, key, None), float) and getattr(m, key) and not isinstance(m, nn.Dropout)]
    rates = [getattr(m, key) for m, key in dropping]
    for module, key in dropping:  # also torchvision's StochasticDepth (p), which draws per call in train mode
        setattr(module, key, 0.0)
    space.model.train()
    try:
        space.scoring = "loop"
        masked = space.score(states, x, y)
        space.scoring = "folded"
        # looser than eval mode: late RegNet stages are 1x1 maps here, so a batch norm's variance over 3
        # samples is near zero and amplifies rounding differences between torch's batch_norm and the
        # per-state statistics (with every unit kept they differ too: 6e-10 at 4 samples); a wrong unit
        # or statistic moves energies by far more
        torch.testing.assert_close(space.score(states, x, y), masked, rtol=1e-5, atol=1e-5)
    finally:
        space.scoring = "auto"
        space.model.eval()
        for (module, key), rate in zip(dropping, rates):
            setattr(module, key, rate)


@pytest.mark.slow
@pytest.mark.parametrize("family", [pytest.param(f, marks=pytest.mark.extended) if f == "ResNeSt" else f  # 23 s
                                    for f in TIMM_FAMILIES])
def test_timm_family_is_pruned_exactly(family, caplog):
    caplog.set_level(logging.ERROR)
    spec = f"timm:{TIMM_FAMILIES[family]}"
    check_invariants(spec, INPUT_SIZE.get(spec, 32))


@pytest.mark.parametrize("name", GROUPED)
def test_grouped_convs_and_layernorm_are_pruned_not_skipped(name):
    """RegNet's grouped convs and ConvNeXt's LayerNorms used to keep their units unpruned."""
    space = check_invariants(name)
    assert not space.skipped, space.describe()


@pytest.mark.slow
def test_resnext_grouped_convs_keep_equal_groups():
    space = check_invariants(RESNEXT)
    assert not space.skipped, space.describe()
    state = torch.zeros(space.num_units, dtype=torch.bool)
    state[::2] = True
    conv = dict(space.export(state).named_modules())["layer1.0.conv2"]
    assert conv.groups == 32 and conv.in_channels % 32 == 0 and conv.out_channels % 32 == 0


@pytest.mark.slow
@pytest.mark.parametrize("spec", list(UNSUPPORTED))
def test_unsupported_models_are_refused_clearly(spec):
    """Torch-Pruning cannot trace ShuffleNet's channel shuffle nor CS3 (see the README): a clear error, no
    mis-mask."""
    with pytest.raises(EDropoutError, match="could not trace"):
        _space(spec, INPUT_SIZE.get(spec, 32))


def test_shufflenet_channel_shuffle_is_refused_clearly():
    with pytest.raises(EDropoutError, match="could not trace"):
        PruningSpace(torchvision.models.shufflenet_v2_x0_5(num_classes=10).eval(), torch.randn(2, 3, 64, 64))


def test_every_model_the_listing_calls_tested_is_covered():
    """`edropout-ray models` names as tested exactly the models these tests prune (and none they refuse)."""
    covered = set(MODELS) | set(GROUPED) | {RESNEXT}  # test_space.py checks invariants 1-4 on MODELS
    assert set(TORCHVISION_TESTED) <= covered, set(TORCHVISION_TESTED) - covered
    text = listing()
    tested_part, _, unsupported_part = text.partition("not supported")
    tested_torchvision = tested_part.splitlines()[1].strip().split(", ")
    assert tested_torchvision == list(TORCHVISION_TESTED)
    tested_timm = [word for word in tested_part.split() if word.startswith("timm:") and word != "timm:<name>;"]
    assert tested_timm == [f"timm:{name}" for name in TIMM_FAMILIES.values()]  # each a case of the family test
    for spec in UNSUPPORTED:
        assert spec not in tested_part and spec in unsupported_part
        assert spec not in covered and spec.removeprefix("timm:") not in TIMM_FAMILIES.values()


def test_unknown_timm_model_is_a_clear_error():
    with pytest.raises(EDropoutError, match="unknown timm model 'resnet18x'.*did you mean"):
        build_model("timm:resnet18x", 10, 3, 32)
