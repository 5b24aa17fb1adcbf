"""Model selection targets what each objective is for: emotion objectives select on the emotion probe of
the validation speakers, the speaker objective on verification EER; sweeps and grid search agree."""
from __future__ import annotations

import pytest
import yaml

from tests.conftest import ROOT
from utils.compose import compose_config

EXPERIMENTS = sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))
SPEAKER_OBJECTIVES = {"lightning_modules.triplet_speaker.TripletSpeakerModule"}
SUPERVISED_SER = {"lightning_modules.ser_finetune.SERFinetuneModule"}  # selects on its own classifier's val UA


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_each_experiment_selects_on_its_objectives_target(experiment, tmp_path):
    cfg = compose_config("train.yaml", [f"experiment={experiment}"], tmp_path)
    checkpoint = cfg.callbacks.model_checkpoint
    if cfg.model._target_ in SPEAKER_OBJECTIVES:
        assert (checkpoint.monitor, checkpoint.mode, cfg.optimized_metric) == ("val/eer", "min", "val/eer")
    elif cfg.model._target_ in SUPERVISED_SER:
        assert (checkpoint.monitor, checkpoint.mode, cfg.optimized_metric) == ("val/ua", "max", "val/ua")
        assert cfg.callbacks.early_stopping.monitor == "val/ua" and cfg.callbacks.early_stopping.mode == "max"
        assert cfg.data.val_speakers and cfg.data.val_label_field
    else:  # every emotion objective, present and future
        assert (checkpoint.monitor, checkpoint.mode, cfg.optimized_metric) == ("val/probe_ua", "max", "val/probe_ua")
        assert checkpoint.every_n_epochs == cfg.model.probe_every_n_epochs  # the probe runs when selection looks
        assert cfg.data.val_speakers and cfg.data.val_label_field  # something to select on


def test_sweep_and_grid_search_optimise_the_emotion_probe(tmp_path):
    sweep = yaml.safe_load((ROOT / "configs" / "sweeps" / "wandb_contrastive_mtl.yaml").read_text())
    assert sweep["metric"] == {"name": "val/probe_ua", "goal": "maximize"}
    assert "experiment=contrastive_mtl" in sweep["command"]
    grid = compose_config("train.yaml", ["experiment=contrastive_mtl", "hparams_search=contrastive_grid"], tmp_path)
    assert grid.optimized_metric == "val/probe_ua"
