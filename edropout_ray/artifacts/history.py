"""Per-step and per-epoch history as Parquet, and the one plot of a run."""

from __future__ import annotations

import math
from dataclasses import asdict, is_dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .plotting import png_figure

HISTORY_FILE = "history.parquet"
EPOCHS_FILE = "epochs.parquet"
PLOT_FILE = "training.png"


def write_rows(rows: list, path: Path) -> None:
    dicts = [asdict(r) if is_dataclass(r) else dict(r) for r in rows]
    pq.write_table(pa.Table.from_pylist(dicts), path)


def read_rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def plot_history(steps: list[dict], epochs: list[dict], path: Path, dense_epochs: list[dict] | None = None) -> None:
    """Energy, kept fraction and diversity over steps; validation top-1 per epoch (and the dense baseline's)."""
    with png_figure(path, 1, 3, figsize=(15, 4)) as (_, (ax_energy, ax_kept, ax_acc)):
        if steps:
            x = [r["step"] for r in steps]
            # a gap while nothing is scored yet (the dense warm-up: the energies are inf there)
            ax_energy.plot(x, [_finite(r["best_energy"]) for r in steps], label="best")
            ax_energy.plot(x, [_finite(r["mean_energy"]) for r in steps], label="population mean", alpha=0.7)
            ax_energy.legend()
            ax_kept.plot(x, [r["kept_fraction"] for r in steps], color="tab:green", label="best state's units kept")
            ax_kept.plot(x, [r["diversity"] for r in steps], color="tab:purple", label="population diversity")
            ax_kept.legend()
            ax_kept.set(xlabel="step", title="Kept units and diversity")
        else:  # a baseline pruner: no energies, kept units per epoch
            ax_energy.text(0.5, 0.5, "no energies for this method", ha="center", va="center")
            ax_kept.plot(range(len(epochs)), [r["kept_fraction"] for r in epochs], color="tab:green", marker=".")
            ax_kept.set(xlabel="training epoch (all cycles)", title="Kept units")
        ax_energy.set(xlabel="step", ylabel="energy", title="Energy (lower is better)")
        ax_kept.set(ylabel="fraction of units", ylim=(0, 1.05))
        ax_acc.plot(range(len(epochs)), [r["val_top1"] for r in epochs], marker="o", label="pruned network")
        if dense_epochs:
            ax_acc.plot(range(len(dense_epochs)), [r["val_top1"] for r in dense_epochs], marker="s",
                        label="dense baseline")
        ax_acc.set(xlabel="epoch", ylabel="validation top-1 (%)", title="Accuracy per epoch")
        ax_acc.legend()


def _finite(value: float) -> float:
    return value if math.isfinite(value) else math.nan
