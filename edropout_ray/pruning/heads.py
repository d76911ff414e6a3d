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
take the head count from `num_heads` (and `attn_dim`) and nothing else from the width; torch's
`nn.MultiheadAttention` (torchvision's ViT) and torchvision's Swin `ShiftedWindowAttention`, whose
forwards tie the head size to the width, so a module with fewer heads runs `SelfAttentionOfHeads`
or `WindowAttentionOfHeads` (window_attention.py) instead.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2

from .window_attention import WindowAttentionOfHeads

PER_HEAD_TABLES = ("relative_position_bias_table",)  # [positions, heads]: a head is a column


@dataclass(frozen=True)
class HeadedAttention:
    """One attention module whose heads are units; tensor names are relative to the module."""

    name: str
    num_heads: int
    head_dim: int
    qkv: str  # [3 * heads * head_dim, width]: q, k, v one after the other, heads in order within each
    proj: str  # [width, heads * head_dim]

    def tensor_slices(self, module: nn.Module, start: int) -> list[tuple[str, int, list[int], list[int], bool]]:
        """(tensor name, dim, indices, unit of each index, is_buffer) for heads numbered from `start`."""
        width = self.num_heads * self.head_dim
        heads = [start + channel // self.head_dim for channel in range(width)]
        rows = [section * width + channel for section in range(3) for channel in range(width)]
        found = [(f"{self.name}.{self.qkv}", 0, rows, heads * 3, False),
                 (f"{self.name}.{self.proj}", 1, list(range(width)), heads, False)]
        qkv_bias = _qkv_bias_name(module)
        if getattr(module.get_submodule(qkv_bias.rpartition(".")[0]), qkv_bias.rpartition(".")[2]) is not None:
            found.append((f"{self.name}.{qkv_bias}", 0, rows, heads * 3, False))
        for table in PER_HEAD_TABLES:
            if isinstance(getattr(module, table, None), nn.Parameter):
                found.append((f"{self.name}.{table}", 1, list(range(self.num_heads)),
                              [start + h for h in range(self.num_heads)], False))
        return found


class SelfAttentionOfHeads(nn.MultiheadAttention):
    """torch's nn.MultiheadAttention for self-attention, with `num_heads` heads of its original head size.

    torch's own forward takes the head size from the embedding width (embed_dim // num_heads), so
    fewer heads would shrink every head; this forward takes it from the packed q, k, v weight. Used
    for exported models and while a state runs at its own size or folded (it calls `out_proj` as a
    module, so hooks on it see the heads' outputs). Without masks, as torchvision's ViT calls it.
    """

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if key is not query or value is not query or key_padding_mask is not None or attn_mask is not None:
            raise NotImplementedError("a pruned nn.MultiheadAttention runs self-attention without masks only")
        x = query if self.batch_first else query.transpose(0, 1)
        batch, tokens = x.shape[:2]
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        out = self.out_proj(out.transpose(1, 2).reshape(batch, tokens, -1))
        return (out if self.batch_first else out.transpose(0, 1)), None


def _timm_classes() -> tuple[type, ...]:
    try:
        from timm.layers.attention import Attention
        from timm.models.swin_transformer import WindowAttention
    except ImportError:
        return ()
    return Attention, WindowAttention


# torch/torchvision modules whose own forward cannot run fewer heads -> the subclass that runs any head count
OF_HEADS = {nn.MultiheadAttention: SelfAttentionOfHeads, ShiftedWindowAttention: WindowAttentionOfHeads}


def _plain_class(module: nn.Module) -> type:
    cls = type(module)
    return cls.__bases__[0] if cls in OF_HEADS.values() else cls


def _is_torch_attention(module: nn.Module) -> bool:
    return _plain_class(module) is nn.MultiheadAttention


def _runs_heads_by_width(module: nn.Module) -> bool:
    """torch's attention or torchvision's Swin V1 window attention (exact classes: Swin V2 is a subclass)."""
    return _plain_class(module) in OF_HEADS


def _width(module: nn.Module) -> int:
    return module.embed_dim if _is_torch_attention(module) else module.qkv.in_features


def _qkv_bias_name(module: nn.Module) -> str:
    return "in_proj_bias" if _is_torch_attention(module) else "qkv.bias"


def _qkv_weight(module: nn.Module) -> torch.Tensor:
    return module.in_proj_weight if _is_torch_attention(module) else module.qkv.weight


def find_attentions(model: nn.Module) -> tuple[list[HeadedAttention], list[tuple[str, str]]]:
    """The attention modules whose heads can be units, and (name, reason) for those that cannot."""
    timm_classes = _timm_classes()
    found, refused = [], []
    for name, module in model.named_modules():
        if _is_torch_attention(module):
            if not module._qkv_same_embed_dim or module.bias_k is not None or module.add_zero_attn:
                refused.append((name, "nn.MultiheadAttention with separate k/v widths, bias_k/bias_v or "
                                      "add_zero_attn"))
            else:
                found.append(HeadedAttention(name, module.num_heads, module.head_dim, "in_proj_weight",
                                             "out_proj.weight"))
        elif _runs_heads_by_width(module) or timm_classes and type(module) in timm_classes:
            if not isinstance(getattr(module, "norm", nn.Identity()), nn.Identity):
                refused.append((f"{name}.qkv", "a normalization over every head's output (scale_norm)"))
            elif getattr(module, "gate", None) is not None:
                refused.append((f"{name}.qkv", "a gate projection over every head's output"))
            else:
                head_dim = module.qkv.out_features // (3 * module.num_heads)
                found.append(HeadedAttention(name, module.num_heads, head_dim, "qkv.weight", "proj.weight"))
    return found, refused


def untraceable_attention(model: nn.Module) -> str | None:
    """Why Torch-Pruning cannot trace `model`'s attention (its group search would not end), or None."""
    for name, module in model.named_modules():
        if type(module) is ShiftedWindowAttentionV2:
            return (f"{name} is torchvision's Swin V2 window attention, which calls its projections with F.linear "
                    "on their weights, and Torch-Pruning's group search over them does not finish (Swin V1, "
                    "swin_t, is supported)")
    return None


def is_headed(module: nn.Module) -> bool:
    timm_classes = _timm_classes()
    return _runs_heads_by_width(module) or bool(timm_classes) and type(module) in timm_classes


def qkv_weight_name(name: str, module: nn.Module) -> str:
    return f"{name}.in_proj_weight" if _is_torch_attention(module) else f"{name}.qkv.weight"


def _head_dim(module: nn.Module) -> int:
    return _qkv_weight(module).shape[0] // (3 * module.num_heads)


def _set_heads(module: nn.Module, heads: int, head_dim: int) -> None:
    """Give `module` `heads` heads of `head_dim` channels (what its forward reads)."""
    module.num_heads = heads
    if hasattr(module, "attn_dim"):
        module.attn_dim = heads * head_dim
    if _runs_heads_by_width(module):
        plain = _plain_class(module)
        module.__class__ = OF_HEADS[plain] if heads * head_dim != _width(module) else plain


@contextlib.contextmanager
def heads_for(module: nn.Module, qkv_rows: int):
    """While active, `module` runs with the heads its compact q, k, v weight of `qkv_rows` rows holds."""
    head_dim, original, cls = _head_dim(module), module.num_heads, type(module)
    _set_heads(module, qkv_rows // (3 * head_dim), head_dim)
    if _runs_heads_by_width(module):
        module.__class__ = OF_HEADS[_plain_class(module)]
    try:
        yield
    finally:
        _set_heads(module, original, head_dim)
        module.__class__ = cls


@contextlib.contextmanager
def heads_called_as_modules(model: nn.Module):
    """While active, torch's attention and torchvision's Swin window attention call their projections as
    modules: folded scoring hooks them, and Torch-Pruning's tracer sees only module calls (on torchvision's
    Swin, traced with its F.linear calls, its group search did not end)."""
    swapped = [m for m in model.modules()
               if type(m) is ShiftedWindowAttention or type(m) is nn.MultiheadAttention and m._qkv_same_embed_dim
               and m.bias_k is None and not m.add_zero_attn]
    for module in swapped:
        module.__class__ = OF_HEADS[type(module)]
    try:
        yield
    finally:
        for module in swapped:
            module.__class__ = _plain_class(module)


@torch.no_grad()
def remove_heads(module: nn.Module, pruned: list[int]) -> None:
    """Remove the heads `pruned` from `module` in place: its tensors, widths and head count."""
    head_dim = _head_dim(module)
    kept = [h for h in range(module.num_heads) if h not in set(pruned)]
    width = module.num_heads * head_dim
    columns = torch.tensor([h * head_dim + j for h in kept for j in range(head_dim)])
    rows = torch.cat([columns + section * width for section in range(3)])
    if _is_torch_attention(module):
        module.in_proj_weight = nn.Parameter(module.in_proj_weight[rows].clone())
        if module.in_proj_bias is not None:
            module.in_proj_bias = nn.Parameter(module.in_proj_bias[rows].clone())
        proj = module.out_proj
    else:
        module.qkv.weight = nn.Parameter(module.qkv.weight[rows].clone())
        if module.qkv.bias is not None:
            module.qkv.bias = nn.Parameter(module.qkv.bias[rows].clone())
        module.qkv.out_features = len(rows)
        proj = module.proj
    proj.weight = nn.Parameter(proj.weight[:, columns].clone())
    proj.in_features = len(columns)
    for table in PER_HEAD_TABLES:
        if isinstance(getattr(module, table, None), nn.Parameter):
            setattr(module, table, nn.Parameter(getattr(module, table)[:, torch.tensor(kept)].clone()))
    _set_heads(module, len(kept), head_dim)
