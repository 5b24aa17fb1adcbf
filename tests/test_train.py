"""The lightning-hydra-template test matrix on the built-in synthetic corpus, all on CPU."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from tests.conftest import ROOT
from tests.helpers import QUIET, TINY_BACKBONE
from common.errors import ConfigError
from tasks.train import train

EXPERIMENTS = sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_fast_dev_run_every_experiment(train_cfg_factory, experiment):
    cfg = train_cfg_factory(f"experiment={experiment}", "debug=fdr")
    metrics, objs = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    if experiment == "contrastive_mtl_adversarial":  # the DANN ramp starts the reversal at 0
        assert 0 <= metrics["train/grl_scale"] < cfg.model.grl_scale


def test_bf16_mixed_on_cpu(train_cfg_factory):
    cfg = train_cfg_factory("debug=fdr", "trainer.precision=bf16-mixed")
    metrics, objs = train(cfg)
    assert objs["trainer"].precision == "bf16-mixed"
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))


def test_ddp_simulated_on_two_cpu_processes(train_cfg_factory, tmp_path):
    """Two CPU processes (gloo), the multi-task contrastive objective: each rank trains on its own batches
    (disjoint, equally many), the replicas end with identical weights, both ranks log the same validation
    metrics (checkpoint monitors are per rank), and the contrastive loss sees both ranks' clips."""
    import json

    ranks = tmp_path / "ranks"
    cfg = train_cfg_factory(TINY_BACKBONE, "model=contrastive_mtl", "callbacks=clustering", "trainer=ddp_sim",
                            "trainer.max_epochs=1", "data.batches_per_epoch=2", "data.n_speakers=2", "data.n_per_speaker=2",
                            "+callbacks.ranks._target_=tests.helpers.RankRecorder", f"+callbacks.ranks.out_dir={ranks}",
                            *QUIET, out="run")
    metrics, objs = train(cfg)
    assert objs["trainer"].world_size == 2
    assert (Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt").exists()
    r0, r1 = (json.loads((ranks / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["world_size"] == r1["world_size"] == 2
    assert len(r0["batches"]) == len(r1["batches"]) == 2
    assert not {tuple(b) for b in r0["batches"]} & {tuple(b) for b in r1["batches"]}
    assert r0["val"] == r1["val"] and {"val/eer", "val/probe_ua", "val/probe_wa"} <= set(r0["val"][-1])
    w0, w1 = (torch.load(ranks / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f"replicas differ in {k}"
    assert metrics["train/gathered_batch"] == 2 * (2 * 2 * 2)  # both ranks' P x C x K clips
    assert r0["batch_report"] == r1["batch_report"] == [2 * 2 * 2, 2 * 2 * 2 * 2]  # per process vs per step


def _callback(trainer, cls):
    return next(cb for cb in trainer.callbacks if isinstance(cb, cls))


def test_last_checkpoint_is_the_final_state_even_when_the_best_epoch_was_earlier(train_cfg_factory):
    # test/epoch with mode=min makes epoch 0 the best: Lightning's save_last would leave last.ckpt there.
    cfg = train_cfg_factory("trainer.max_epochs=3", "data.batches_per_epoch=2", "callbacks.model_summary=null",
                            "+callbacks.epoch_metric._target_=tests.helpers.EpochAsMetric",
                            "callbacks.model_checkpoint.monitor=test/epoch", "callbacks.model_checkpoint.mode=min")
    metrics, objs = train(cfg)
    ckpts = Path(cfg.paths.output_dir) / "checkpoints"
    assert Path(metrics["best_ckpt_path"]).name == "epoch_000.ckpt"
    last = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert last["epoch"] == 2 and last["global_step"] == objs["trainer"].global_step == 6
    assert torch.load(metrics["best_ckpt_path"], weights_only=True)["global_step"] == 2


def test_last_checkpoint_every_n_steps_keeps_the_newest_step(train_cfg_factory):
    cfg = train_cfg_factory("trainer.max_epochs=1", "data.batches_per_epoch=5", "callbacks.model_summary=null",
                            "callbacks.latest_checkpoint.every_n_train_steps=2")
    from callbacks.latest_checkpoint import LatestCheckpoint

    saved = []
    original = LatestCheckpoint.save
    LatestCheckpoint.save = lambda self, trainer: saved.append(trainer.global_step) or original(self, trainer)
    try:
        train(cfg)
    finally:
        LatestCheckpoint.save = original
    assert saved == [2, 4, 5]  # steps 2 and 4, then the epoch end
    assert torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5


def test_resume_from_last_checkpoint_continues_like_an_uninterrupted_run(train_cfg_factory):
    """Resuming means: the next epoch index, the optimizer step count and the final weights of the
    uninterrupted run (terms that hold across Lightning releases)."""
    from tests.helpers import RecordProgress

    common = ["trainer.max_epochs=2", "data.batches_per_epoch=3", "callbacks.model_summary=null",
              "callbacks.progress_bar=null", "+callbacks.progress._target_=tests.helpers.RecordProgress"]
    _, full = train(train_cfg_factory(*common, out="uninterrupted"))
    killed_cfg = train_cfg_factory(*common, "+callbacks.stop._target_=tests.helpers.StopAfterEpoch", out="killed")
    _, killed = train(killed_cfg)
    last = Path(killed_cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert _callback(killed["trainer"], RecordProgress).epochs == [0]
    assert torch.load(last, weights_only=True)["epoch"] == 0

    _, resumed = train(train_cfg_factory(*common, f"ckpt_path={last}", out="resumed"))
    progress, full_progress = _callback(resumed["trainer"], RecordProgress), _callback(full["trainer"], RecordProgress)
    assert progress.epochs == [1] and progress.start_step == 3
    assert full_progress.batches[0] != full_progress.batches[1]  # Lightning's loop reshuffles the P x K plan
    assert progress.batches[1] == full_progress.batches[1]  # ... and a resumed run continues the same plan
    assert resumed["trainer"].global_step == full["trainer"].global_step == 6
    opt_steps = lambda t: {int(s["step"]) for s in t.optimizers[0].state_dict()["state"].values()}  # noqa: E731
    assert opt_steps(resumed["trainer"]) == opt_steps(full["trainer"]) == {6}
    a, b = full["model"].state_dict(), resumed["model"].state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=lambda m: f"{k}: {m}")


def test_resumed_contrastive_run_keeps_the_pseudo_labels_and_batches(train_cfg_factory):
    """experiment=contrastive_mtl, re-clustering every 2 epochs, stopped after epoch 0: the uninterrupted
    run trains epoch 1 on the pseudo-labels clustered before epoch 0, so the resumed run must too (they
    are in the checkpoint), with the same batches and the same final weights. Best checkpoint by the
    emotion probe of the validation speakers."""
    from callbacks.intra_speaker_clustering import IntraSpeakerClustering
    from tests.helpers import RecordProgress

    common = ["experiment=contrastive_mtl", TINY_BACKBONE, "trainer.max_epochs=2", "data.batches_per_epoch=3",
              "callbacks.intra_speaker_clustering.every_n_epochs=2",
              "+callbacks.progress._target_=tests.helpers.RecordProgress", *QUIET]
    metrics, full = train(train_cfg_factory(*common, out="uninterrupted"))
    killed_cfg = train_cfg_factory(*common, "+callbacks.stop._target_=tests.helpers.StopAfterEpoch", out="killed")
    train(killed_cfg)
    last = Path(killed_cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    _, resumed = train(train_cfg_factory(*common, f"ckpt_path={last}", out="resumed"))

    clustering = lambda objs: _callback(objs["trainer"], IntraSpeakerClustering)  # noqa: E731
    assert [r.epoch for r in clustering(full).history] == [0]
    assert [r.epoch for r in clustering(resumed).history] == [0]  # restored, not re-clustered
    assert clustering(resumed).labels.tolist() == clustering(full).labels.tolist()
    progress, full_progress = _callback(resumed["trainer"], RecordProgress), _callback(full["trainer"], RecordProgress)
    assert progress.epochs == [1]
    assert progress.batches[1] == full_progress.batches[1]
    assert progress.clusters[1] == full_progress.clusters[1]
    a, b = full["model"].state_dict(), resumed["model"].state_dict()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=lambda m: f"{k}: {m}")

    selector = full["trainer"].checkpoint_callback
    assert selector.monitor == "val/probe_ua" and selector.mode == "max"
    probe = {e: v["val/probe_ua"] for e, v in full_progress.val.items()}
    assert set(probe) == {0, 1} and float(selector.best_model_score) == pytest.approx(max(probe.values()))
    assert metrics["best_ckpt_path"].endswith(f"epoch_{max(probe, key=probe.get):03d}.ckpt")


def test_ckpt_path_last_without_a_previous_run_is_a_clear_error(train_cfg_factory):
    cfg = train_cfg_factory("debug=fdr", "ckpt_path=last")
    with pytest.raises(FileNotFoundError, match=r"ckpt_path='last'.*last\.ckpt does not exist"):
        train(cfg)


def test_resolved_config_is_saved_in_the_run_dir(train_cfg_factory):
    cfg = train_cfg_factory("debug=fdr")
    train(cfg)
    text = (Path(cfg.paths.output_dir) / "config_resolved.yaml").read_text()
    assert "${" not in text and "TripletSpeakerModule" in text


def test_missing_data_root_is_named(train_cfg_factory, tmp_path):
    cfg = train_cfg_factory("data=emodb", "debug=fdr", tiny=False)
    with pytest.raises(ConfigError, match=r"data\.root is required"):
        train(cfg)
    cfg = train_cfg_factory("data=emodb", f"data.root={tmp_path}/nowhere", "debug=fdr", tiny=False)
    with pytest.raises(ConfigError, match=r"data\.root=.*nowhere does not exist"):
        train(cfg)


def test_unknown_key_added_with_plus_is_named(train_cfg_factory):
    cfg = train_cfg_factory("+data.rooot=x", "debug=fdr")
    with pytest.raises(ConfigError, match=r"data\.rooot.*Did you mean 'root'"):
        train(cfg)


@pytest.mark.parametrize("override, expected", [
    ("data.crop_secnds=2", r"unknown config key 'data\.crop_secnds'.*Did you mean 'data\.crop_seconds'"),
    ("trainer=ddp_simm", r"unknown option trainer=ddp_simm.*Valid choices for 'trainer':.*ddp_sim"),
    ("model=tripplet", r"Valid choices for 'model':.*triplet"),
])
def test_command_line_typos_fail_at_start_with_valid_choices(override, expected, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), override, f"paths.log_dir={tmp_path}"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    import re
    assert re.search(expected, proc.stderr), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
