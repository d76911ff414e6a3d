"""`edropout-ray compare` on digits: every method, three seeds, as parallel Ray tasks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from helpers import S3_ENV, S3Bucket

pytestmark = pytest.mark.slow
METHODS = {"edropout", "edropout_no_search", "fixed_random", "dropnet_min", "dropnet_min_layer", "random", "l1", "tp_group_norm", "tp_magnitude", "tp_taylor"}


@pytest.fixture(scope="module")
def comparison(tmp_path_factory, s3_endpoint):
    """The comparison written into a bucket (a local S3 endpoint), then copied here to be read as files."""
    bucket = S3Bucket.create(s3_endpoint)
    done = subprocess.run(
        [sys.executable, "-m", "edropout_ray", "compare", "--output", bucket.uri("compare"), "--seeds", "0,1,2",
         "--set", "epochs=3", "--set", "max_steps_per_epoch=3", "--set", "dense_baseline=true",
         "--set", "latency_batches=[]", "--set", "report_extra_masks=false"],  # 30 runs: only what this tests
        capture_output=True, text=True, timeout=900, env={**os.environ, **S3_ENV})
    assert done.returncode == 0, done.stderr[-3000:]
    output = tmp_path_factory.mktemp("compare")
    pafs.copy_files(f"{bucket.name}/compare", str(output), source_filesystem=bucket.filesystem)
    return output, done.stdout


def test_table_has_every_method_over_three_seeds(comparison):
    output, stdout = comparison
    runs = pq.read_table(output / "runs.parquet").to_pylist()
    assert {r["method"] for r in runs} == METHODS | {"dense"}
    assert all(sum(r["method"] == m for r in runs) == 3 for m in METHODS)
    summary = {row["method"]: row for row in pq.read_table(output / "summary.parquet").to_pylist()}
    for method in METHODS:
        assert summary[method]["seeds"] == 3 and summary[method]["params_kept_fraction_mean"] < 1
        assert 0 < summary[method]["method_seconds_mean"] < summary[method]["wall_seconds_mean"]
    # EDropout's dense reference is in its wall time, not in its own seconds
    for seed in (0, 1, 2):
        report = json.loads((output / "edropout" / f"seed{seed}" / "report.json").read_text())
        run = next(r for r in runs if r["method"] == "edropout" and r["seed"] == seed)
        assert "dense_top1" in report and run["method_seconds"] == pytest.approx(report["edropout_seconds"])
    for method in METHODS | {"dense"}:
        assert f"| {method} |" in stdout
    assert (output / "comparison.md").read_text() in stdout
    assert (output / "comparison.png").read_bytes()[:4] == b"\x89PNG"


def test_baselines_are_held_to_edropouts_parameters(comparison):
    """The same size in parameters, not only in units (issue 9): a wide layer's unit weighs more."""
    output, _ = comparison
    runs = pq.read_table(output / "runs.parquet").to_pylist()
    for seed in (0, 1, 2):
        target = next(r["params_kept_fraction"] for r in runs if r["method"] == "edropout" and r["seed"] == seed)
        for r in runs:
            if r["seed"] == seed and r["method"] in METHODS - {"edropout"}:
                assert abs(r["params_kept_fraction"] - target) < 0.03, r


def test_every_methods_exported_model_matches_its_masked_model(comparison):
    output, _ = comparison
    for method in METHODS:
        for seed in (0, 1, 2):
            report = json.loads((output / method / f"seed{seed}" / "report.json").read_text())
            assert report["export_max_abs_diff"] < 1e-4, (method, seed)
            assert report["params_kept"] < report["params_total"]


@pytest.mark.slow
@pytest.mark.extended  # 55 s: make test-all
def test_resume_reuses_finished_runs_and_runs_the_others(tmp_path):
    """`compare --resume DIR`: a (method, seed) whose report is written is not run again (its files untouched,
    the log says it is reused); one without runs; the tables hold every run."""
    output = tmp_path / "compare"
    quick = ["--set", "epochs=1", "max_steps_per_epoch=2", "latency_batches=[]", "report_extra_masks=false"]
    first = subprocess.run([sys.executable, "-m", "edropout_ray", "compare", "--output", str(output), "--seeds", "0,1",
                            "--methods", "random", *quick], capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    kept = output / "edropout" / "seed0" / "report.json"
    before = (kept.stat().st_mtime_ns, kept.read_bytes())
    lost = output / "random" / "seed1"
    for path in sorted(lost.rglob("*"), reverse=True):  # as if the comparison stopped before this run ended
        path.unlink() if path.is_file() else path.rmdir()
    lost.rmdir()
    again = subprocess.run([sys.executable, "-m", "edropout_ray", "compare", "--resume", str(output)],
                           capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    for name, seed in (("edropout", 0), ("edropout", 1), ("random", 0)):
        assert f"{name} seed {seed} finished earlier" in again.stderr
    assert "random seed 1 finished earlier" not in again.stderr
    assert (kept.stat().st_mtime_ns, kept.read_bytes()) == before
    assert (lost / "report.json").exists()
    runs = pq.read_table(output / "runs.parquet").to_pylist()
    assert sorted((r["method"], r["seed"]) for r in runs) == [("edropout", 0), ("edropout", 1), ("random", 0),
                                                              ("random", 1)]
    assert "| random |" in again.stdout
