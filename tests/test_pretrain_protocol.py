"""scripts/pretrain_protocol.py selects each fold's checkpoint on validation speakers taken from the fold's
training speakers, never from its test speakers."""
from __future__ import annotations

import sys

from hydra.utils import instantiate

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from pretrain_protocol import fold_config  # noqa: E402


def test_fold_validation_speakers_come_from_the_training_side(tmp_path, synthetic_cache):
    speakers = [f"synthetic:spk{i:03d}" for i in range(8)]
    train_side, test_side = speakers[:6], speakers[6:]
    overrides = ["experiment=contrastive_mtl", "data.corpus_options.n_speakers=8", "data.corpus_options.clips_per_emotion=2",
                 f"paths.data_dir={synthetic_cache}"]
    cfg = fold_config(overrides, tmp_path / "fold0", train_side, val_speakers=2)
    assert cfg.callbacks.model_checkpoint.monitor == "val/probe_ua"  # selection stays on
    dm = instantiate(cfg.data, _convert_="all")
    dm.prepare_data(), dm.setup("fit")
    assert len(dm.val_speakers) == 2 and set(dm.val_speakers) < set(train_side)
    seen = {r.speaker for r in dm.train_records} | set(dm.val_speakers)
    assert seen == set(train_side) and not seen & set(test_side)
