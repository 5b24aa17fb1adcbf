"""A non-finite training loss never passes silently: it stops the run naming the batch's clips, or the
batch is skipped and counted (`model.nonfinite_loss`)."""
from __future__ import annotations

import logging
import re

import pytest
import torch

from tests.helpers import QUIET, TINY_BACKBONE, NonFiniteLossAt
from tasks.train import train

POISONED = [TINY_BACKBONE, "model._target_=tests.helpers.NonFiniteLossAt", "+model.nan_at_batch=1",
            "trainer.max_epochs=1", "data.batches_per_epoch=3", "+trainer.limit_val_batches=0",
            "callbacks.model_checkpoint.monitor=null", *QUIET]


def test_nan_loss_stops_the_run_and_names_the_batch_clips(train_cfg_factory):
    cfg = train_cfg_factory(*POISONED)
    with pytest.raises(FloatingPointError, match=r"non-finite training loss .* batch 1") as err:
        train(cfg)
    paths = NonFiniteLossAt.poisoned_paths
    assert paths and all(re.search(re.escape(p), str(err.value)) for p in paths)
    assert "model.nonfinite_loss=skip" in str(err.value)


def test_nan_loss_batch_is_skipped_and_counted_when_asked(train_cfg_factory, caplog):
    cfg = train_cfg_factory(*POISONED, "model.nonfinite_loss=skip")
    with caplog.at_level(logging.WARNING, logger="lightning_modules.embedding_module"):
        metrics, objs = train(cfg)
    model = objs["model"]
    assert model.n_nonfinite_batches == 1 and metrics["train/nonfinite_batches"] == 1
    assert any("skipped batch with a non-finite training loss" in r.getMessage() for r in caplog.records)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_nonfinite_mode_is_checked(train_cfg_factory):
    from hydra.utils import instantiate

    cfg = train_cfg_factory(TINY_BACKBONE, "model.nonfinite_loss=ignore")
    with pytest.raises(Exception, match=r"model\.nonfinite_loss='ignore'"):
        instantiate(cfg.model, backbone=dict(cfg.backbone), _recursive_=False)
