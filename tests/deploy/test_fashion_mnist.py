"""The product on real data: EDropout prunes LeNet-5 on the paper's Fashion-MNIST, as shipped.

Debian's dataset-fashion-mnist puts the original gzipped idx files in a flat folder; CI installs
it (.ci/run). Where it is absent the test is skipped: test data is never downloaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

FASHION = Path("/usr/share/datasets/fashion-mnist")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
                                 reason=f"no Fashion-MNIST in {FASHION} (apt-get install dataset-fashion-mnist)")]


def test_edropout_prunes_lenet5_on_fashion_mnist(tmp_path):
    output = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "edropout_ray", "train", "--config", "jobs/compare_fashion.yaml", "--output", str(output),
         "--set", "epochs=2", "--set", "max_steps_per_epoch=60", "--set", "dense_baseline=false"],
        capture_output=True, text=True, timeout=900, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((output / "report.json").read_text())
    assert report["dataset"] == "fashion_mnist" and report["units_total"] == 570
    assert report["params_kept_fraction"] < 0.6, "a much smaller network"
    assert report["top1"] > 70, "120 steps of LeNet-5 on 10,000 test images: far above chance (10%)"
    assert report["converged_at_step"] is not None and report["freeze_reason"], "froze from the second epoch on"
    assert report["export_max_abs_diff"] < 1e-3
