"""Every checkpoint says which speakers shaped its weights (what evaluation needs to refuse leakage)."""
from __future__ import annotations

from pathlib import Path

import torch

from tests.helpers import QUIET, TINY_BACKBONE
from tasks.train import train

SHORT = [TINY_BACKBONE, "trainer.max_epochs=1", "data.batches_per_epoch=1", "data.n_speakers=2", *QUIET]


def _speakers_override(speakers) -> str:
    return "data.speakers=[" + ",".join(f"'{s}'" for s in speakers) + "]"


def _last(cfg) -> dict:
    return torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)


def test_checkpoints_record_training_and_validation_speakers_and_inherit_them(train_cfg_factory):
    speakers = [f"synthetic:spk{i:03d}" for i in range(8)]
    first_six, last_four = speakers[:6], speakers[4:]
    cfg1 = train_cfg_factory(*SHORT, _speakers_override(first_six), out="first")
    _, objs = train(cfg1)
    dm = objs["datamodule"]
    assert {r.speaker for r in dm.train_records} | set(dm.val_speakers) == set(first_six)
    ckpt = _last(cfg1)
    assert ckpt["seen_speakers"] == sorted(first_six)  # training AND validation speakers (the probe reads labels)
    assert ckpt["seen_corpora"] == {"synthetic": str(Path(cfg1.data.root).resolve())}
    best = torch.load(objs["trainer"].checkpoint_callback.best_model_path, weights_only=True)
    assert best["seen_speakers"] == sorted(first_six)

    # Warm start on other speakers: the new checkpoint carries both runs' speakers.
    cfg2 = train_cfg_factory(*SHORT, _speakers_override(last_four), "data.val_speakers=2",
                             f"model.init_from={Path(cfg1.paths.output_dir) / 'checkpoints' / 'last.ckpt'}", out="warm")
    train(cfg2)
    assert _last(cfg2)["seen_speakers"] == sorted(set(first_six) | set(last_four))

    # Resuming keeps what the checkpoint had seen.
    cfg3 = train_cfg_factory(*SHORT, _speakers_override(last_four), "data.val_speakers=2",
                             "trainer.max_epochs=2", f"ckpt_path={Path(cfg2.paths.output_dir) / 'checkpoints' / 'last.ckpt'}",
                             out="resumed")
    train(cfg3)
    assert _last(cfg3)["seen_speakers"] == sorted(set(first_six) | set(last_four))
