"""One way to draw a figure to a PNG without a screen (history, comparison and sweep plots)."""

from __future__ import annotations

import contextlib
from pathlib import Path


@contextlib.contextmanager
def png_figure(path: Path, *subplots, figsize: tuple[float, float] = (7, 5)):
    """Yield (figure, axes) from `plt.subplots(*subplots)`; lay out, save at 100 dpi and close on exit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(*subplots, figsize=figsize)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
