"""How scoring forwards run, besides the scoring mode: precision, memory layout and samples per state.

These trade exactness of the energies for speed (docs/performance.md measures what they change in
selection); the defaults keep scoring exact: float32, the model's own layout, the whole batch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ..choices import SCORE_PRECISIONS

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ScoringOptions:
    precision: str = "float32"  # float32: no autocast; bfloat16 or float16: autocast for the scoring forwards
    channels_last: bool = False  # images go in channels-last (convolutions then run in that layout)
    batch: int | None = None  # samples per state scored: the batch's first `batch` (None: all of it)

    def __post_init__(self) -> None:
        if self.precision not in SCORE_PRECISIONS:
            raise ValueError(f"score precision must be one of {', '.join(SCORE_PRECISIONS)}, got {self.precision!r}")
        if self.batch is not None and self.batch < 1:
            raise ValueError(f"score batch must be >= 1 or None, got {self.batch}")

    @classmethod
    def of(cls, config) -> "ScoringOptions":
        """The options a run's config chose (score_precision, score_channels_last, score_batch)."""
        return cls(config.score_precision, config.score_channels_last, config.score_batch)

    def sub_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The samples each state is scored on (loaders shuffle, so the first ones are a random subset)."""
        if self.batch is None:
            return x, y
        return x[:self.batch], y[:self.batch]

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def autocast(self, device: torch.device):
        """Autocast to the chosen precision on `device`'s type; nothing for float32."""
        if self.precision == "float32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=_DTYPES[self.precision])
