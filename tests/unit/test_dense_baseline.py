"""The dense baseline's checkpoints: a restarted dense run (Ray's retry of its task, a --resume)
continues from its folder to the uninterrupted result, and never from another config's checkpoint."""

from __future__ import annotations

import logging

from edropout_ray.artifacts import checkpoint
from edropout_ray.artifacts.storage import open_folder
from edropout_ray.config import Config
from edropout_ray.training.dense import train_dense
from edropout_ray.training.run_setup import prepare

# 2 epochs of 3 steps, a checkpoint at step 4: a restart replays steps 5 and 6
CONFIG = Config(epochs=2, max_steps_per_epoch=3, checkpoint_every=4, batch_size=64, latency_batches=[])
CONTINUED = "the dense baseline continues from its checkpoint"


def _val(result: dict) -> list:
    return [(row["val_top1"], row["val_loss"]) for row in result["epochs"]]


def test_a_restarted_dense_baseline_continues_to_the_uninterrupted_result(tmp_path, caplog):
    plain = train_dense(prepare(CONFIG), progress=False)
    folder = open_folder(tmp_path / "dense")
    with caplog.at_level(logging.INFO, logger="edropout_ray.training.dense"):
        first = train_dense(prepare(CONFIG), False, folder)
        assert not any(CONTINUED in r.getMessage() for r in caplog.records), "nothing to continue from yet"
        saved = checkpoint.load_checkpoint(folder)
        assert (saved["epoch"], saved["step_in_epoch"]) == (1, 1), "the checkpoint of step 4"
        again = train_dense(prepare(CONFIG), False, folder)
    assert any(CONTINUED in r.getMessage() and "epoch 2, step 1" in r.getMessage() for r in caplog.records)
    assert first["test"] == plain["test"] == again["test"]
    assert _val(first) == _val(plain) == _val(again)


def test_a_checkpoint_of_another_config_is_not_continued_from(tmp_path, caplog):
    folder = open_folder(tmp_path / "dense")
    train_dense(prepare(CONFIG), False, folder)
    other = CONFIG.replace(seed=CONFIG.seed + 1)
    with caplog.at_level(logging.INFO, logger="edropout_ray.training.dense"):
        reused = train_dense(prepare(other), False, folder)
    assert not any(CONTINUED in r.getMessage() for r in caplog.records)
    assert reused["test"] == train_dense(prepare(other), progress=False)["test"]
    assert checkpoint.load_saved_config(folder).seed == other.seed, "the folder is the new config's now"

    (tmp_path / "dense" / "checkpoint.pt").write_bytes(b"not a checkpoint")  # unreadable: started over, said so
    with caplog.at_level(logging.WARNING, logger="edropout_ray.training.dense"):
        restarted = train_dense(prepare(other), False, folder)
    assert any("starts over" in r.getMessage() for r in caplog.records)
    assert restarted["test"] == reused["test"]
