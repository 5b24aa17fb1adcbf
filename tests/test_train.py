"""The lightning-hydra-template test matrix on the built-in synthetic corpus, all on CPU."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from tests.conftest import ROOT
from utils.config_checks import ConfigError
from utils.training import train

EXPERIMENTS = sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_fast_dev_run_every_experiment(train_cfg_factory, experiment):
    cfg = train_cfg_factory(f"experiment={experiment}", "debug=fdr")
    metrics, objs = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))


def test_bf16_mixed_on_cpu(train_cfg_factory):
    cfg = train_cfg_factory("debug=fdr", "trainer.precision=bf16-mixed")
    metrics, objs = train(cfg)
    assert objs["trainer"].precision == "bf16-mixed"
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))


def test_ddp_simulated_on_two_cpu_processes(train_cfg_factory):
    cfg = train_cfg_factory("trainer=ddp_sim", "trainer.max_epochs=1", "data.batches_per_epoch=2",
                            "callbacks.model_summary=null")
    metrics, objs = train(cfg)
    assert objs["trainer"].world_size == 2
    assert (Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt").exists()


def test_resume_from_last_checkpoint_continues_epoch_count(train_cfg_factory):
    cfg = train_cfg_factory("trainer.max_epochs=1", "data.batches_per_epoch=2")
    train(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 0
    cfg2 = train_cfg_factory("trainer.max_epochs=2", "data.batches_per_epoch=2", f"ckpt_path={last}")
    _, objs = train(cfg2)
    assert objs["trainer"].current_epoch == 2
    assert torch.load(last, weights_only=True)["epoch"] == 1


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
