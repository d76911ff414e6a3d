"""torchvision's Swin window attention with any number of heads of the original head size.

torchvision's `shifted_window_attention` takes the head size from the block's width (C // num_heads)
and reshapes the heads' output back to that width, so a block that lost heads cannot call it. This
forward computes the same attention (windows, cyclic shift and its mask, the relative position bias
per head) with the head size read from the packed q, k, v weight, and calls `qkv` and `proj` as
modules, so hooks on them see the heads (folded scoring needs that).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F
from torchvision.models.swin_transformer import ShiftedWindowAttention

SHIFT_MASK = -100.0  # what torchvision adds between tokens from different regions of a shifted window


class WindowAttentionOfHeads(ShiftedWindowAttention):
    """ShiftedWindowAttention whose head count may be below its width's (a pruned Swin V1 block)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        window_h, window_w = self.window_size
        x = F.pad(x, (0, 0, 0, -width % window_w, 0, -height % window_h))
        full_h, full_w = x.shape[1:3]
        # no shift along an axis one window covers, as torchvision
        shift = [s if w < full else 0 for s, w, full in zip(self.shift_size, self.window_size, (full_h, full_w))]
        if any(shift):
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        windows = _to_windows(x, window_h, window_w)
        count, tokens = windows.shape[:2]
        qkv = self.qkv(windows)
        head_dim = qkv.shape[-1] // (3 * self.num_heads)
        q, k, v = qkv.view(count, tokens, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        logits = (q * head_dim ** -0.5).matmul(k.transpose(-2, -1)) + self.get_relative_position_bias()
        if any(shift):
            mask = _shift_mask(full_h, full_w, self.window_size, shift, logits)
            logits = (logits.view(batch, -1, self.num_heads, tokens, tokens) + mask[None, :, None]).view_as(logits)
        weights = F.dropout(logits.softmax(dim=-1), p=self.attention_dropout, training=self.training)
        out = weights.matmul(v).transpose(1, 2).reshape(count, tokens, self.num_heads * head_dim)
        out = F.dropout(self.proj(out), p=self.dropout, training=self.training)
        out = _from_windows(out, batch, full_h, full_w, window_h, window_w)
        if any(shift):
            out = torch.roll(out, shifts=(shift[0], shift[1]), dims=(1, 2))
        return out[:, :height, :width].contiguous()


def _to_windows(x: torch.Tensor, window_h: int, window_w: int) -> torch.Tensor:
    """[B, H, W, C] -> [B * windows, window_h * window_w, C], windows row by row."""
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window_h, window_h, width // window_w, window_w, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_h * window_w, channels)


def _from_windows(x: torch.Tensor, batch: int, height: int, width: int, window_h: int, window_w: int) -> torch.Tensor:
    x = x.view(batch, height // window_h, width // window_w, window_h, window_w, -1)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(batch, height, width, -1)


def _shift_mask(height: int, width: int, window: list[int], shift: list[int], like: torch.Tensor) -> torch.Tensor:
    """[windows, tokens, tokens]: SHIFT_MASK between tokens that the cyclic shift brought from different
    regions (along each shifted axis: the part before the last window, the last window's unshifted
    part, the shifted-in strip), else 0."""
    def regions(size: int, window_size: int, shift_size: int) -> torch.Tensor:
        index = torch.arange(size, device=like.device)
        if not shift_size:
            return torch.zeros_like(index)
        return (index >= size - window_size).long() + (index >= size - shift_size).long()

    labels = regions(height, window[0], shift[0])[:, None] * 3 + regions(width, window[1], shift[1])[None, :]
    labels = _to_windows(labels[None, :, :, None], *window).squeeze(-1)
    different = labels[:, None, :] != labels[:, :, None]
    return torch.zeros(different.shape, dtype=like.dtype, device=like.device).masked_fill(different, SHIFT_MASK)
