"""Multi-process extraction: every rank's embedding file is complete when rank 0 goes on to merge."""
from __future__ import annotations

import json

import numpy as np
from hydra.utils import instantiate

from callbacks.embedding_writer import merge_rank_files
from lightning_modules.embedding_module import EmbeddingModule
from tests.helpers import RankFilesWhenPredictReturns, SlowRankWriter, TinyBackbone


def test_rank0_waits_for_every_rank_file_under_ddp(train_cfg_factory, tmp_path):
    """trainer=ddp_sim (2 CPU processes, gloo); rank 1 writes 3 s late. When predict returns on rank 0
    (where evaluate.py merges right away) both files must be there."""
    cfg = train_cfg_factory("trainer=ddp_sim")
    dm = instantiate(cfg.data, _convert_="all")
    dm.prepare_data(), dm.setup("fit")
    records = dm.train_records[:10]
    out, seen = tmp_path / "predictions", tmp_path / "seen.json"
    callbacks = [SlowRankWriter(str(out), delay_seconds=3.0), RankFilesWhenPredictReturns(str(out), str(seen))]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False, use_distributed_sampler=True,
                          enable_progress_bar=False, enable_model_summary=False)
    trainer.predict(EmbeddingModule(TinyBackbone()), dataloaders=dm.utterance_loader(records, batch_size=4),
                    return_predictions=False)
    assert json.loads(seen.read_text()) == ["predictions_rank0.npz", "predictions_rank1.npz"]
    emb, _ = merge_rank_files(out, len(records))
    assert emb.shape == (10, 8) and np.isfinite(emb).all()
