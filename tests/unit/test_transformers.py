"""Vision transformers: attention heads are units (a head's q, k, v rows and projection columns together),
and the pruned model is exact. Small random-init configurations of timm's ViT, DeiT and Swin and of
torchvision's ViT and Swin, float64."""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision

from edropout_ray.evolution.population import repair_empty_groups
from edropout_ray.pruning.heads import find_attentions
from edropout_ray.pruning.space import PruningSpace

timm = pytest.importorskip("timm")

def _timm(name: str, **kwargs):
    return lambda: timm.create_model(name, pretrained=False, img_size=32, num_classes=10, **kwargs)


SMALL = {  # small configurations of each family, for a 32x32 input
    "vit": _timm("vit_tiny_patch16_224", patch_size=8, depth=2, embed_dim=32, num_heads=4),
    "deit": _timm("deit_tiny_patch16_224", patch_size=8, depth=2, embed_dim=48, num_heads=3),
    "swin": _timm("swin_tiny_patch4_window7_224", window_size=4, depths=(1, 1), num_heads=(2, 4), embed_dim=16),
    "torchvision_vit": lambda: _with_random_head(torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64, num_classes=10)),
    # two blocks a stage: the second's window is shifted (its own forward, window_attention.py)
    "torchvision_swin": lambda: torchvision.models.SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=[3, 3], num_classes=10),
}


def _with_random_head(model: torch.nn.Module) -> torch.nn.Module:
    """torchvision's ViT starts with a zero classifier: every output would be 0 and every comparison vacuous."""
    torch.nn.init.normal_(model.heads.head.weight)
    return model


def small_space(key: str) -> PruningSpace:
    torch.manual_seed(0)
    model = SMALL[key]().double().eval()
    return PruningSpace(model, torch.randn(2, 3, 32, 32, dtype=torch.float64))


def some_states(space: PruningSpace, count: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return repair_empty_groups(torch.rand(count, space.num_units, generator=generator) < 0.5, space.group_sizes,
                               generator)


@pytest.mark.parametrize("key", list(SMALL))
def test_heads_are_units_and_the_export_carries_the_new_head_count(key, caplog):
    caplog.set_level(logging.ERROR)
    space = small_space(key)
    attentions, refused = find_attentions(space.model)
    assert attentions and not refused
    assert not [root for root, _ in space.skipped if root.endswith(".qkv")], space.describe()
    assert {a.name for a in attentions} <= {g.root for g in space.groups}
    groups = {g.root: g for g in space.groups}
    state = some_states(space)[0]
    exported = dict(space.export(state).named_modules())
    for attention in attentions:
        group = groups[attention.name]
        assert group.size == attention.num_heads
        kept = int(state[group.start:group.start + group.size].sum())
        module = exported[attention.name]
        assert module.num_heads == kept
        qkv = dict(module.named_parameters())[attention.qkv]
        assert qkv.shape[0] == 3 * kept * attention.head_dim, "the head dimension is unchanged"
        assert module.get_submodule(attention.proj.rpartition(".")[0]).in_features == kept * attention.head_dim
        table = getattr(module, "relative_position_bias_table", None)
        assert table is None or table.shape[1] == kept


@pytest.mark.parametrize("key", list(SMALL))
def test_masked_equals_exported_and_every_scoring_mode_agrees(key, caplog):
    caplog.set_level(logging.ERROR)
    space = small_space(key)
    states = some_states(space)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    exported = space.export(states[0])
    with torch.no_grad():
        masked = space.masked_forward(states[0], x)
        assert masked.abs().max() > 1e-3, "outputs that are all zero would hide any mismatch"
        torch.testing.assert_close(exported(x), masked, rtol=1e-9, atol=1e-9 * masked.abs().max().item())
    assert sum(p.numel() for p in exported.parameters()) == space.kept_parameters(states[0])
    y = torch.arange(len(x))
    one_by_one = torch.cat([space.score(s.unsqueeze(0), x, y) for s in states])
    modes = ["loop", "vmap", "folded"] + (["at_size"] if space.at_size_supported else [])
    for mode in modes:
        space.scoring = mode
        torch.testing.assert_close(space.score(states, x, y), one_by_one, rtol=1e-9, atol=1e-9)
    assert space.folded_supported


@pytest.mark.parametrize("key", ["vit", "deit", "swin", "torchvision_swin"])
def test_transformers_run_at_their_own_size_with_fewer_heads_and_a_narrower_width(key):
    """Heads, MLP neurons and the pruned widths (a ViT's embedding width, a Swin stage's) at their own
    size: the attention's head count and the LayerNorms' `normalized_shape` follow the compact tensors
    for the call, and the dense model keeps its own after it."""
    space = small_space(key)
    assert space.at_size_supported
    state = some_states(space)[0]
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    before = [(type(m), getattr(m, "num_heads", None), getattr(m, "normalized_shape", None))
              for m in space.model.modules()]
    with torch.no_grad():
        compact = space.at_size_forward(state, x)
        torch.testing.assert_close(compact, space.masked_forward(state, x), rtol=1e-9, atol=1e-12)
    assert [(type(m), getattr(m, "num_heads", None), getattr(m, "normalized_shape", None))
            for m in space.model.modules()] == before


@pytest.mark.parametrize("key", ["vit", "deit"])
def test_a_vits_embedding_width_is_one_group_cut_everywhere_in_the_export(key):
    """Patch embedding, class token, position embedding, every norm and residual: one group, cut along
    the tokens' last dim in the export, whose parameters the space counted."""
    space = small_space(key)
    tensors = {name for entry in space._slices for name in [entry.name] if entry.out_dim == 2}
    assert tensors == {"cls_token", "pos_embed"}
    width = next(g for g in space.groups if "patch_embed.proj" in g.layers)
    assert {"norm", "blocks.0.norm1", "blocks.1.norm2", "head"} <= set(width.layers)
    state = torch.ones(space.num_units, dtype=torch.bool)
    state[width.start:width.start + width.size // 2] = False
    exported = space.export(state)
    kept = width.size - width.size // 2
    assert exported.pos_embed.shape[-1] == exported.cls_token.shape[-1] == kept
    assert exported.patch_embed.proj.out_channels == kept and exported.norm.normalized_shape == (kept,)
    assert sum(p.numel() for p in exported.parameters()) == space.kept_parameters(state)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), space.masked_forward(state, x), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("key", ["vit", "torchvision_vit", pytest.param("swin", marks=pytest.mark.extended),
                                 pytest.param("torchvision_swin", marks=pytest.mark.extended)])
def test_onnx_export_of_a_pruned_transformer(key, tmp_path):
    pytest.importorskip("onnxruntime")
    from edropout_ray.artifacts.onnx_model import OnnxRunner, save_onnx

    space = small_space(key)
    state = some_states(space)[0]
    model = space.export(state).float()
    path = save_onnx(model, space.example_inputs.float(), tmp_path)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(torch.as_tensor(OnnxRunner(path)(x)), expected, rtol=1e-4, atol=1e-4)


def test_the_listing_names_the_transformer_families_tested_here():
    from edropout_ray.catalog import TRANSFORMER_FAMILIES, listing

    assert set(TRANSFORMER_FAMILIES) == set(SMALL)
    text = listing()
    for family, name in TRANSFORMER_FAMILIES.values():
        assert f"{family:<20} {name}" in text


@pytest.mark.parametrize("window, shift, height, width", [
    ([4, 4], [0, 0], 8, 8), ([4, 4], [2, 2], 7, 10), ([4, 4], [2, 2], 4, 9), ([3, 5], [1, 2], 9, 11)])
def test_the_window_attention_of_heads_computes_torchvisions_swin_attention(window, shift, height, width):
    """Padding, a cyclic shift with its mask, a shift dropped along an axis one window covers (4 x 9)."""
    from torchvision.models.swin_transformer import ShiftedWindowAttention

    from edropout_ray.pruning.window_attention import WindowAttentionOfHeads

    torch.manual_seed(0)
    module = ShiftedWindowAttention(16, window, shift, num_heads=4).double().eval()
    torch.nn.init.normal_(module.relative_position_bias_table)
    x = torch.randn(2, height, width, 16, dtype=torch.float64)
    with torch.no_grad():
        expected = module(x)
        module.__class__ = WindowAttentionOfHeads
        torch.testing.assert_close(module(x), expected, rtol=1e-12, atol=1e-12)


def test_a_vit_trains_at_its_own_size_as_masked():
    """The at-size learner gathers and writes back the position embedding and class token along their
    last dim: same loss and weights as the masked learner, across a change of state."""
    import copy

    from edropout_ray.config import Config
    from edropout_ray.training.learner import Learner

    spaces = [small_space("vit"), small_space("vit")]
    config = Config(optimizer="adam", lr=1e-3, weight_decay=1e-2)
    at_size, masked = Learner(spaces[0], config.replace(train_at_size=True)), \
        Learner(spaces[1], config.replace(train_at_size=False))
    assert at_size.at_size and not masked.at_size
    states = some_states(spaces[0], 2)
    x, y = torch.randn(6, 3, 32, 32, dtype=torch.float64), torch.arange(6) % 10
    before = copy.deepcopy(spaces[0].model.pos_embed.detach())
    for state in (states[0], states[1], states[0]):
        a, b = at_size.step(state, x, y), masked.step(state, x, y)
        assert a.loss == pytest.approx(b.loss, rel=1e-9)
        for (name, got), expected in zip(at_size.state_dict()["model"].items(), masked.state_dict()["model"].values()):
            torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-10, msg=lambda m, name=name: f"{name}: {m}")
        masked.load_state_dict(at_size.state_dict())
    assert not torch.equal(spaces[0].model.pos_embed.detach(), before), "the position embedding trained"
