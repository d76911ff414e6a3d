"""The run's report: which test-set passes it makes and the table printed from it, for every method."""

from __future__ import annotations

import pytest
import torch

from edropout_ray.artifacts.report import build_report, format_table
from edropout_ray.config import Config
from edropout_ray.data import load_dataset
from edropout_ray.models import small_cnn
from edropout_ray.pruning.space import PruningSpace


@pytest.fixture(scope="module")
def digits_loader():
    data = load_dataset("digits", "unused")
    xs, ys = zip(*(data.test[i] for i in range(96)))
    x, y = torch.stack(xs), torch.tensor(ys)
    return [(x[:48], y[:48]), (x[48:], y[48:])]


@pytest.mark.parametrize("method, extra_masks", [("edropout", True), ("tp_taylor", False)])
def test_report_table_for_any_method_with_and_without_the_extra_masks(digits_loader, tmp_path, method, extra_masks):
    x = digits_loader[0][0]
    torch.manual_seed(0)
    space = PruningSpace(small_cnn(), x)
    state = torch.ones(space.num_units, dtype=torch.bool)
    state[::3] = False
    config = Config(method=method, kept_per_group=[1] * len(space.group_sizes), report_extra_masks=extra_masks,
                    latency_batches=[])
    report = build_report(space, state, config, digits_loader, torch.device("cpu"), tmp_path, dense=None,
                          converged_at_step=None, edropout_seconds=1.0)
    assert ("random_masks" in report) == extra_masks and ("all_units_kept" in report) == extra_masks
    assert report["units_kept"] == int(state.sum()) and 0 <= report["top1"] <= 100
    table = format_table(report)
    assert "final mask" in table and (method in table or "EDropout" in table)
    assert ("random mask, 50% units pruned" in table) == extra_masks
