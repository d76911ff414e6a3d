"""Latency that holds on a shared machine: models timed in turn, medians with spreads, and a speed-up
claimed only when the paired repeats agree."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edropout_ray.artifacts.latency import MIN_REPEATS, compare_latency, describe_speedup, time_interleaved
from edropout_ray.artifacts.report import format_table
from edropout_ray.config import Config
from edropout_ray.errors import ConfigError


def _recording(calls: list, name: str):
    def forward():
        calls.append(name)
    return forward


def test_callables_take_turns_within_every_repeat_and_the_first_place_rotates():
    calls: list[str] = []
    timed = time_interleaved({"dense": _recording(calls, "dense"), "pruned": _recording(calls, "pruned")},
                             repeats=8, warmup=2)
    assert timed["repeats"] == 8 and all(len(s) == 8 for s in timed["samples_ms"].values())
    warmup, repeats = calls[:4], calls[4:]
    assert sorted(warmup) == ["dense", "dense", "pruned", "pruned"]
    pairs = [tuple(repeats[i:i + 2]) for i in range(0, len(repeats), 2)]
    assert len(pairs) == 8 and all(set(pair) == {"dense", "pruned"} for pair in pairs), pairs
    assert [pair[0] for pair in pairs] == ["dense", "pruned"] * 4, "neither model always goes first"

    calls.clear()
    time_interleaved({name: _recording(calls, name) for name in "abc"}, repeats=6, warmup=0)
    rounds = [calls[i:i + 3] for i in range(0, len(calls), 3)]
    assert all(sorted(each) == ["a", "b", "c"] for each in rounds)
    assert {each[0] for each in rounds} == {"a", "b", "c"}


def test_threads_are_fixed_while_timing_and_restored_afterwards_even_on_failure():
    before = torch.get_num_threads()
    seen: list[tuple[int, bool]] = []
    try:
        torch.set_num_threads(2)
        def record():
            seen.append((torch.get_num_threads(), torch.is_inference_mode_enabled()))
        timed = time_interleaved({"f": record}, repeats=MIN_REPEATS, threads=1)
        assert timed["threads"] == 1 and set(seen) == {(1, True)}, "one thread, no autograd"
        assert torch.get_num_threads() == 2

        def failing():
            raise RuntimeError("forward failed")
        with pytest.raises(RuntimeError, match="forward failed"):
            time_interleaved({"f": failing}, repeats=MIN_REPEATS, threads=1)
        assert torch.get_num_threads() == 2
        assert time_interleaved({"f": lambda: None}, repeats=MIN_REPEATS)["threads"] == 2, "default: the current number"
    finally:
        torch.set_num_threads(before)


def test_a_spent_budget_stops_at_the_minimum_repeats_and_too_few_repeats_are_refused():
    assert time_interleaved({"f": lambda: None}, repeats=50, budget_s=0.0)["repeats"] == MIN_REPEATS
    with pytest.raises(ValueError, match=f"repeats must be >= {MIN_REPEATS}"):
        time_interleaved({"f": lambda: None}, repeats=3)
    with pytest.raises(ConfigError, match="latency_repeats >= 5"):
        Config(latency_repeats=3)


def _mlp(widths: list[int]) -> nn.Module:
    layers = [nn.Linear(a, b) for a, b in zip(widths, widths[1:])]
    return nn.Sequential(*[m for layer in layers for m in (layer, nn.ReLU())])


def test_the_same_model_against_itself_is_no_measurable_speed_up():
    torch.manual_seed(0)
    model = _mlp([256, 256, 256, 10])
    found = compare_latency(model, model, torch.zeros(1, 256), [1, 16], repeats=40)
    for batch in (1, 16):
        row = found[f"batch_{batch}"]
        low, high = row["speedup_interval"]
        assert low <= 1.0 <= high and row["significant"] is False, row
        assert describe_speedup(row).startswith("no measurable speed-up")
        assert row["batch"] == batch and row["repeats"] == 40 and row["threads"] == torch.get_num_threads()
        for name in ("dense", "pruned"):
            q1, q3 = row[f"{name}_ms_iqr"]
            assert 0 < q1 <= row[f"{name}_ms"] <= q3
    assert "no measurable speed-up" in format_table(_report_with(found))
    assert "faster" not in format_table(_report_with(found))


def test_a_much_smaller_model_is_a_significant_speed_up():
    torch.manual_seed(0)
    slow, fast = _mlp([1024, 1024, 1024, 1024, 1024, 10]), _mlp([1024, 10])  # about 400x fewer MACs
    found = compare_latency(slow, fast, torch.zeros(1, 1024), [32], repeats=10)
    row = found["batch_32"]
    assert row["significant"] is True and row["speedup_interval"][0] > 1.0, row
    assert row["speedup_interval"][0] <= row["speedup"] <= row["speedup_interval"][1]
    assert row["dense_ms"] > row["pruned_ms"]
    assert describe_speedup(row).startswith(f"{row['speedup']:.2f}x faster")
    assert f"{row['speedup']:.2f}x faster" in format_table(_report_with(found))

    backwards = compare_latency(fast, slow, torch.zeros(1, 1024), [32], repeats=10)["batch_32"]
    assert backwards["significant"] is True and backwards["speedup_interval"][1] < 1.0
    assert describe_speedup(backwards).startswith("measurably slower")


def _report_with(latency: dict) -> dict:
    """The fewest keys `format_table` reads, around a `latency` entry."""
    return {"method": "edropout", "top1": 90.0, "top5": 99.0, "test_loss": 0.3, "params_kept": 10,
            "params_kept_fraction": 1.0, "units_kept": 1, "units_total": 1, "macs_kept": 10, "macs_total": 10,
            "macs_kept_fraction": 1.0, "latency": latency | {"macs_reduction": 1.0}}
