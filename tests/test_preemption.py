"""Preemption-safe training: a signal mid-epoch saves last.ckpt and exits cleanly; resuming (also with
loader worker processes) trains exactly what the uninterrupted run trains: same batches, same
optimizer step count, same weights."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from tests.conftest import ROOT, TINY_CORPUS
from tests.helpers import RecordProgress
from tasks.train import train

COMMON = ["trainer.max_epochs=2", "data.batches_per_epoch=4", "callbacks.model_summary=null",
          "callbacks.progress_bar=null", "+callbacks.progress._target_=tests.helpers.RecordProgress"]


def _progress(objs) -> RecordProgress:
    return next(cb for cb in objs["trainer"].callbacks if isinstance(cb, RecordProgress))


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k].cpu(), a[k].cpu(), rtol=0, atol=1e-6, msg=lambda m: f"{k}: {m}")


def _opt_steps(trainer) -> set[int]:
    return {int(s["step"]) for s in trainer.optimizers[0].state_dict()["state"].values()}


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_at_an_epoch_boundary_continues_the_plan_with_loader_workers(train_cfg_factory, workers):
    common = [*COMMON, f"data.num_workers={workers}"]
    _, full = train(train_cfg_factory(*common, out="full"))
    killed = train_cfg_factory(*common, "+callbacks.stop._target_=tests.helpers.StopAfterEpoch", out="killed")
    train(killed)
    last = Path(killed.paths.output_dir) / "checkpoints" / "last.ckpt"
    _, resumed = train(train_cfg_factory(*common, f"ckpt_path={last}", out="resumed"))
    assert _progress(resumed).batches[1] == _progress(full).batches[1]
    assert resumed["trainer"].global_step == full["trainer"].global_step == 8
    _assert_same_weights(full["model"].state_dict(), resumed["model"].state_dict())


@pytest.mark.parametrize("workers", [0, 2])
def test_sigterm_mid_epoch_saves_and_the_resumed_run_matches_the_uninterrupted_one(train_cfg_factory, workers):
    common = [*COMMON, f"data.num_workers={workers}"]
    _, full = train(train_cfg_factory(*common, out="full"))
    killed = train_cfg_factory(*common, "+callbacks.kill._target_=tests.helpers.SignalAtStep",
                               "+callbacks.kill.step=6", out="killed")
    with pytest.raises(SIGTERMException):
        train(killed)
    last = Path(killed.paths.output_dir) / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    assert state["global_step"] == 6 and state["epoch"] == 1  # saved at the batch boundary, mid-epoch 1

    _, resumed = train(train_cfg_factory(*common, f"ckpt_path={last}", out="resumed"))
    progress, full_progress = _progress(resumed), _progress(full)
    assert progress.start_step == 6
    assert progress.batches[1] == full_progress.batches[1][2:]  # the two batches left of epoch 1, not a replay
    assert resumed["trainer"].global_step == full["trainer"].global_step == 8
    assert _opt_steps(resumed["trainer"]) == _opt_steps(full["trainer"]) == {8}
    _assert_same_weights(full["model"].state_dict(), resumed["model"].state_dict())


def _train_py(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="offline", PROJECT_ROOT=str(ROOT))
    env.pop("SER_RUN_DIR", None)
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True,
                          timeout=900, cwd=cwd, env=env)


def test_killed_train_py_exits_cleanly_and_ckpt_path_last_resumes_the_same_run(tmp_path):
    """End to end: SIGTERM mid-epoch -> exit 0 with last.ckpt; the same command + ckpt_path=last finds
    that run by itself (no run folder passed), continues in it (W&B run id kept) and ends where an
    uninterrupted run ends."""
    base = ["trainer.max_epochs=2", "data.batches_per_epoch=4", "callbacks.model_summary=null",
            "callbacks.progress_bar=null", *TINY_CORPUS, "logger=wandb",
            f"paths.log_dir={tmp_path}/logs", f"paths.data_dir={tmp_path}/data"]
    kill = ["+callbacks.kill._target_=tests.helpers.SignalAtStep", "+callbacks.kill.step=5"]
    first = _train_py(base + kill, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    runs = sorted((tmp_path / "logs" / "train" / "runs").iterdir())
    assert len(runs) == 1
    run = runs[0]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5
    run_id = (run / "wandb_run_id.txt").read_text().strip()

    second = _train_py(base + kill + ["ckpt_path=last"], tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert sorted((tmp_path / "logs" / "train" / "runs").iterdir()) == [run]  # continued in the same folder
    assert (run / "wandb_run_id.txt").read_text().strip() == run_id  # ... and the same W&B run
    resumed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)

    full = _train_py(base + [f"paths.log_dir={tmp_path}/full_logs"], tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]
    (full_run,) = (tmp_path / "full_logs" / "train" / "runs").iterdir()
    uninterrupted = torch.load(full_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == uninterrupted["global_step"] == 8
    _assert_same_weights(uninterrupted["state_dict"], resumed["state_dict"])


def test_ckpt_path_last_with_nothing_to_resume_is_a_clear_error_and_auto_starts_fresh(tmp_path):
    base = ["debug=fdr", *TINY_CORPUS, "callbacks.model_summary=null", f"paths.log_dir={tmp_path}/logs",
            f"paths.data_dir={tmp_path}/data"]
    proc = _train_py(base + ["ckpt_path=last"], tmp_path)
    assert proc.returncode == 2 and "no run of task" in proc.stderr and "ckpt_path=auto" in proc.stderr
    proc = _train_py(base + ["ckpt_path=auto"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
