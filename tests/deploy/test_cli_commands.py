"""The commands' new syntax (sweep --set, compare --resume) and their refusals: one line on stderr, exit 2,
answered before torch or Ray is imported, and no --output folder left behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edropout_ray.cli import main

JOBS = Path(__file__).parents[2] / "jobs"

# every call in one fresh interpreter: which heavy modules each one imported, its exit code and stderr
LIGHT = """
import contextlib, io, json, sys
from edropout_ray.cli import main

results = []
for args in json.loads(sys.argv[1]):
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(args)
        except SystemExit as exit:
            code = exit.code
    results.append({"args": args, "code": code, "stderr": stderr.getvalue(),
                    "imported": sorted(m for m in ("torch", "ray", "torch_pruning") if m in sys.modules)})
print(json.dumps(results))
"""


def test_help_and_mistakes_are_answered_without_torch_or_ray(tmp_path):
    bad_grid = tmp_path / "bad_grid.yaml"
    bad_grid.write_text("base: {epochs: 2}\nsearch:\n  population_size: {grid: [8, 0]}\n")
    out = str(tmp_path / "out")
    calls = [
        ["--help"],
        ["train", "--help"],
        ["train", "--set", "epochs=0", "--output", out],
        ["train", "--set", "populaton_size=8", "--output", out],
        ["compare", "--set", "lr=-1", "--output", out],
        ["compare", "--seeds", "0,x", "--output", out],
        ["sweep", "--config", str(bad_grid), "--output", out],
        ["sweep", "--config", str(JOBS / "sweep_digits.yaml"), "--set", "epochs=0", "--output", out],
        ["sweep", "--config", str(JOBS / "sweep_digits.yaml"), "--set", "freeze_by=0.4", "--output", out],
    ]
    done = subprocess.run([sys.executable, "-c", LIGHT, json.dumps(calls)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert [r["code"] for r in results] == [0, 0] + [2] * (len(calls) - 2), results
    for result in results:
        assert result["imported"] == [], result
    for result in results[2:]:
        assert result["stderr"].startswith("edropout-ray: error: ") and result["stderr"].count("\n") == 1, result
    assert "sweep search: population_size = 0 is refused" in results[6]["stderr"]
    assert "--set freeze_by: the sweep file's search sweeps freeze_by" in results[8]["stderr"]
    assert not Path(out).exists()


def test_a_run_refused_while_it_is_set_up_leaves_no_output_folder(tmp_path, capsys):
    """The config loads (a module name is checked by its syntax); building the model fails."""
    output = tmp_path / "runs" / "r1"
    assert main(["train", "--set", "model=no_such_module:build", "epochs=1", "--output", str(output)]) == 2
    assert "cannot import module 'no_such_module'" in capsys.readouterr().err
    assert not output.exists()
    existing = tmp_path / "mine"
    existing.mkdir()
    assert main(["train", "--set", "model=no_such_module:build", "epochs=1", "--output", str(existing)]) == 2
    assert existing.is_dir(), "a folder the user made is the user's"


def test_compare_resume_refuses_what_it_cannot_continue(tmp_path, capsys):
    assert main(["compare", "--resume", str(tmp_path), "--seeds", "1", "--set", "epochs=2"]) == 2
    assert "drop --set, --seeds" in capsys.readouterr().err
    assert main(["compare", "--resume", str(tmp_path)]) == 2
    assert f"no comparison to resume in {tmp_path}: {tmp_path}/compare.json is missing" in capsys.readouterr().err
    assert main(["compare", "--resume", str(tmp_path), "--output", str(tmp_path)]) == 2
    assert "not both" in capsys.readouterr().err


@pytest.mark.parametrize("args, words", [
    (["sweep", "--resume", "DIR", "--set", "epochs=2"], "drop --config and --set"),
    (["sweep", "--resume", "DIR"], "no sweep to resume in DIR"),
    (["sweep", "--output", "DIR"], "a new sweep needs --config FILE"),
])
def test_sweep_refusals(args, words, tmp_path, capsys):
    args = [str(tmp_path / "s") if a == "DIR" else a for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert words.replace("DIR", str(tmp_path / "s")) in err and err.count("\n") == 1
