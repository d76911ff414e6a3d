"""Attention heads as units: a head's rows of q, k and v and its columns of the output projection.

Torch-Pruning's graph cannot couple a qkv projection to its output projection (the reshape into
heads, the unbind of q, k, v and the attention products lie between them), so the pruning space
refuses those channels as a split. Its `num_heads` option prunes whole heads only inside its own
pruners, and leaves the attention module's head count to be fixed by hand. Here each head of an
attention module this file knows is one unit: masking its q, k and v rows zeroes its values, so
its output is zero and its columns of the projection read nothing, exactly as if it were removed;
the exported module gets the new head count with the head dimension unchanged. A per-head table
(Swin's relative position bias) loses the head's column.

Known modules: timm's `Attention` (ViT, DeiT, ...) and Swin's `WindowAttention`, whose forwards
take the head count from `num_heads` (and `attn_dim`) and nothing else from the width.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

PER_HEAD_TABLES = ("relative_position_bias_table",)  # [positions, heads]: a head is a column


@dataclass(frozen=True)
class HeadedAttention:
    """One attention module whose heads are units."""

    name: str
    num_heads: int
    head_dim: int

    def tensor_slices(self, module: nn.Module, start: int) -> list[tuple[str, int, list[int], list[int], bool]]:
        """(tensor name, dim, indices, unit of each index, is_buffer) for heads numbered from `start`."""
        width = self.num_heads * self.head_dim
        heads = [start + channel // self.head_dim for channel in range(width)]
        rows = [section * width + channel for section in range(3) for channel in range(width)]
        found = [(f"{self.name}.qkv.weight", 0, rows, heads * 3, False),
                 (f"{self.name}.proj.weight", 1, list(range(width)), heads, False)]
        if module.qkv.bias is not None:
            found.append((f"{self.name}.qkv.bias", 0, rows, heads * 3, False))
        for table in PER_HEAD_TABLES:
            if isinstance(getattr(module, table, None), nn.Parameter):
                found.append((f"{self.name}.{table}", 1, list(range(self.num_heads)),
                              [start + h for h in range(self.num_heads)], False))
        return found


def _known_classes() -> tuple[type, ...]:
    try:
        from timm.layers.attention import Attention
        from timm.models.swin_transformer import WindowAttention
    except ImportError:
        return ()
    return Attention, WindowAttention


def find_attentions(model: nn.Module) -> tuple[list[HeadedAttention], list[tuple[str, str]]]:
    """The attention modules whose heads can be units, and (name, reason) for those that cannot."""
    known = _known_classes()
    found, refused = [], []
    for name, module in model.named_modules():
        if not known or type(module) not in known:
            continue
        if not isinstance(getattr(module, "norm", nn.Identity()), nn.Identity):
            refused.append((f"{name}.qkv", "a normalization over every head's output (scale_norm)"))
        elif getattr(module, "gate", None) is not None:
            refused.append((f"{name}.qkv", "a gate projection over every head's output"))
        else:
            head_dim = module.qkv.out_features // (3 * module.num_heads)
            found.append(HeadedAttention(name, module.num_heads, head_dim))
    return found, refused


def set_heads(module: nn.Module, heads: int, head_dim: int) -> None:
    """Give `module` `heads` heads of `head_dim` channels (what its forward reads)."""
    module.num_heads = heads
    if hasattr(module, "attn_dim"):
        module.attn_dim = heads * head_dim


@contextlib.contextmanager
def heads_for(module: nn.Module, qkv_rows: int):
    """While active, `module` runs with the heads its compact qkv tensor of `qkv_rows` rows holds."""
    head_dim = module.qkv.out_features // (3 * module.num_heads)
    original = module.num_heads
    set_heads(module, qkv_rows // (3 * head_dim), head_dim)
    try:
        yield
    finally:
        set_heads(module, original, head_dim)


def is_headed(module: nn.Module) -> bool:
    known = _known_classes()
    return bool(known) and type(module) in known


@torch.no_grad()
def remove_heads(module: nn.Module, pruned: list[int]) -> None:
    """Remove the heads `pruned` from `module` in place: its tensors, widths and head count."""
    head_dim = module.qkv.weight.shape[0] // (3 * module.num_heads)
    kept = [h for h in range(module.num_heads) if h not in set(pruned)]
    width = module.num_heads * head_dim
    columns = torch.tensor([h * head_dim + j for h in kept for j in range(head_dim)])
    rows = torch.cat([columns + section * width for section in range(3)])
    module.qkv.weight = nn.Parameter(module.qkv.weight[rows].clone())
    if module.qkv.bias is not None:
        module.qkv.bias = nn.Parameter(module.qkv.bias[rows].clone())
    module.qkv.out_features = len(rows)
    module.proj.weight = nn.Parameter(module.proj.weight[:, columns].clone())
    module.proj.in_features = len(columns)
    for table in PER_HEAD_TABLES:
        if isinstance(getattr(module, table, None), nn.Parameter):
            setattr(module, table, nn.Parameter(getattr(module, table)[:, torch.tensor(kept)].clone()))
    set_heads(module, len(kept), head_dim)
