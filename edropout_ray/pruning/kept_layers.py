"""Layers whose output channels a user keeps (`keep_layers`), as Torch-Pruning's `ignored_layers` does.

The coupled group that cuts a named layer's outputs gets no units, so every layer of that group keeps
its width (a residual stream, a transformer's embedding width: naming `patch_embed.proj` keeps it);
the named layer's inputs may still be cut by the group before it. The space lists such groups as
kept, with the pattern. Patterns are fnmatch-style module names as `model.named_modules()` gives them
(`patch_embed.proj`, `layer4.*`, `blocks.0.attn.qkv` for a block's heads).
"""

from __future__ import annotations

import fnmatch

from ..errors import ConfigError


def kept_by(outputs: tuple[str, ...], patterns: tuple[str, ...]) -> str | None:
    """Why a group cutting the outputs of `outputs` (layer names) is kept: the first pattern matching one."""
    for pattern in patterns:
        if any(fnmatch.fnmatchcase(layer, pattern) for layer in outputs):
            return f"keep_layers {pattern!r}"
    return None


def check_every_pattern_used(patterns: tuple[str, ...], group_outputs: list[tuple[str, ...]]) -> None:
    """A pattern naming no layer whose outputs a group cuts is a typo or a layer never cut: said, not ignored."""
    names = [layer for outputs in group_outputs for layer in outputs]
    unused = [p for p in patterns if not any(fnmatch.fnmatchcase(name, p) for name in names)]
    if unused:
        examples = ", ".join(list(dict.fromkeys(names))[:6])
        raise ConfigError(f"keep_layers {unused!r} match no layer whose outputs are pruned (module names such as "
                          f"{examples}); fix the pattern, or drop it if the layer's outputs are never cut")
