"""The product end to end: `edropout-ray train` on the bundled digits, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow.parquet as pq
import pytest

from edropout_ray.cli import main


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    output = tmp_path_factory.mktemp("run")
    command = [sys.executable, "-m", "edropout_ray", "train", "--config", "jobs/demo.yaml", "--output", str(output),
               "--set", "epochs=2", "max_steps_per_epoch=3", "converge_after=1",  # several pairs after one --set
               "--set", "converge_patience=2", "--set", "export_formats=[pt2, onnx]",
               "--set", "prune_target_params=null", "prune_target_macs=0.3"]  # the demo's size, in MACs
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return output, done.stdout, done.stderr


@pytest.mark.slow
def test_train_prints_the_report_table(run_folder):
    _, stdout, stderr = run_folder
    for row in ("EDropout, final mask", "same weights, all units kept", "random mask, 50% units pruned",
                "dense baseline (no pruning)", "top-1 drop against the dense baseline"):
        assert row in stdout
    assert "epoch 2/2" in stderr, "per-epoch progress goes to stderr"


@pytest.mark.slow
def test_report_and_artifacts(run_folder):
    output, _, _ = run_folder
    report = json.loads((output / "report.json").read_text())
    assert 0 < report["params_kept"] < report["params_total"]
    assert report["macs_kept_fraction"] == pytest.approx(0.3, abs=0.02)  # held to the MACs target
    for key in ("top1", "top5", "dense_top1"):
        assert 0 <= report[key] <= 100, key
    assert report["top1"] <= report["top5"]
    assert 0 < report["test_loss"] < 20  # a finite cross-entropy: ln(10) = 2.3 for uniform guesses on 10 classes
    assert set(report["random_masks"]) == {"25", "50", "75"}
    assert report["export_max_abs_diff"] < 1e-4
    assert report["exported_onnx"] == "pruned_model.onnx" and report["onnx_max_abs_diff"] < 1e-4
    assert set(report["export_latency_ms"]) == {"batch", "pytorch", "pt2", "onnx"}
    mask = np.load(output / "final_mask.npy")
    assert mask.dtype == bool and mask.size == report["units_total"] and mask.sum() == report["units_kept"]
    steps = pq.read_table(output / "history.parquet").to_pylist()
    assert len(steps) == 6 and {"best_energy", "mean_energy", "kept_fraction", "loss", "accuracy"} <= set(steps[0])
    epochs = pq.read_table(output / "epochs.parquet").to_pylist()
    assert [e["epoch"] for e in epochs] == [0, 1]
    assert (output / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_exported_model_loads_without_this_project(run_folder, tmp_path):
    """A user with only torch installed: no edropout_ray import, run from an unrelated folder."""
    output, _, _ = run_folder
    report = json.loads((output / "report.json").read_text())
    script = textwrap.dedent(f"""
        import sys, torch
        model = torch.export.load({str(output / report['exported_model'])!r}).module()
        out = model(torch.rand(5, 1, 8, 8))
        params = sum(p.numel() for p in model.parameters())
        assert "edropout_ray" not in sys.modules
        print(tuple(out.shape), params)
    """)
    done = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, cwd=tmp_path,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["(5,", "10)", str(report["params_kept"])]


@pytest.mark.slow
def test_demo_onnx_file_runs_in_onnx_runtime_alone(run_folder, tmp_path):
    """The demo's pruned model in ONNX Runtime, without torch or this project, gives the report's top-1
    on the run's own test set (rebuilt from its saved config, handed over as plain arrays)."""
    from edropout_ray.artifacts.checkpoint import load_saved_config
    from edropout_ray.training.run_setup import prepare

    output, _, _ = run_folder
    report = json.loads((output / "report.json").read_text())
    batches = list(prepare(load_saved_config(output)).test_loader)
    images = np.concatenate([x.numpy() for x, _ in batches]).astype(np.float32)
    labels = np.concatenate([y.numpy() for _, y in batches])
    np.savez(tmp_path / "test_set.npz", images=images, labels=labels)
    script = textwrap.dedent(f"""
        import sys, numpy as np, onnxruntime
        data = np.load("test_set.npz")
        session = onnxruntime.InferenceSession({str(output / report['exported_onnx'])!r})
        logits = np.concatenate([session.run(None, {{"images": data["images"][i:i + 64]}})[0]
                                 for i in range(0, len(data["labels"]), 64)])
        assert "torch" not in sys.modules and "edropout_ray" not in sys.modules
        print(len(logits), 100.0 * np.mean(logits.argmax(axis=1) == data["labels"]))
    """)
    done = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, cwd=tmp_path,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    count, top1 = done.stdout.split()
    assert int(count) == len(labels) > 300  # digits holds out 20% of 1,797 images
    # the same network on the same images: at most one image may flip on a near-tie of two logits
    assert float(top1) == pytest.approx(report["top1"], abs=100 / len(labels) + 1e-9)


def test_set_takes_several_pairs_and_repeats():
    from edropout_ray.cli import _parser

    args = _parser().parse_args(["train", "--set", "a=1", "b=2", "--output", "x", "--set", "c=[3, 4]"])
    assert args.overrides == ["a=1", "b=2", "c=[3, 4]"]


def test_models_lists_what_can_be_pruned(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "resnext50_32x4d" in out and "timm:convnext_atto" in out and "package.module:callable" in out
    assert "resnet20" in out


def test_models_check_builds_the_model_and_its_export(capsys):
    import logging

    space_log = logging.getLogger("edropout_ray.pruning.space")
    level = space_log.level
    assert main(["models", "--check", "timm:resnet10t", "--image-size", "32"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("timm:resnet10t: prunable") and "units in" in out and "differ by" in out
    assert space_log.level == level, "the check silences the space's warnings only while it runs"


@pytest.mark.parametrize("args, words", [
    (["--set", "population_size=2"], "population_size must be >= 4"),
    (["--set", "modle=resnet18"], "did you mean 'model'"),
    (["--set", "dataset=cifar10", "--set", "data_dir=/nonexistent/data"], "download"),
    (["--set", "model=resnet9000"], "unknown torchvision model"),
    (["--set", "model=edropout_ray.models:nothing_here"], "no attribute"),
    (["--set", "model=timm:convnext_atoo"], "did you mean convnext_atto"),
    (["--set", "export_formats=[pt2, tflite]"], "export_formats must be"),
])
def test_user_mistakes_are_one_clean_error(args, words, tmp_path, capsys):
    code = main(["train", "--output", str(tmp_path / "out"), "--quiet", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert words in err and "Traceback" not in err
    assert err.startswith("edropout-ray: error: ") and err.count("edropout-ray: error") == 1, err


@pytest.mark.parametrize("setting, closest", [("energy=margn", "'margin'"), ("model=resnet81", "'resnet18'"),
                                              ("dataset=fashionmnist", "'fashion_mnist'")])
def test_a_misspelt_name_fails_before_any_data_is_read(setting, closest, tmp_path, capsys, monkeypatch):
    from edropout_ray import train

    def no_data(*args, **kwargs):
        raise AssertionError("data was read before the config was checked")

    monkeypatch.setattr(train, "prepare", no_data)
    code = main(["train", "--output", str(tmp_path / "out"), "--quiet", "--set", setting])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("edropout-ray: error: "), err
    assert f"did you mean {closest}?" in err
    assert not (tmp_path / "out").exists()


def test_compare_refuses_an_unknown_method_before_any_work(tmp_path, capsys):
    code = main(["compare", "--output", str(tmp_path / "out"), "--methods", "l1,tp_taylr"])
    assert code == 2
    err = capsys.readouterr().err
    assert "tp_taylr" in err and "tp_taylor" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
