"""The triplet objective must actually learn speakers: held-out EER falls clearly below its untrained value."""
from __future__ import annotations

from hydra.utils import instantiate

from utils.training import build_model


def test_triplet_training_lowers_held_out_eer(train_cfg_factory):
    cfg = train_cfg_factory(
        "experiment=triplet_speaker", "backbone.sample_rate=8000", "data.corpus_options.sample_rate=8000",
        # Neutral speech only: speaker identity, not emotion, dominates the variation to learn.
        "data.corpus_options.n_speakers=12", "data.corpus_options.emotions=[neutral]",
        "data.corpus_options.clips_per_emotion=10", "data.val_speakers=4", "data.n_speakers=4", "data.n_per_speaker=4",
        "data.crop_seconds=1.0", "trainer.max_epochs=8", "model.lr=0.001", "callbacks.model_summary=null", "callbacks.progress_bar=null", tiny=False)
    datamodule = instantiate(cfg.data, _convert_="all")
    model = build_model(cfg)
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    before = trainer.validate(model, datamodule=datamodule, verbose=False)[0]["val/eer"]
    trainer.fit(model, datamodule=datamodule)
    after = trainer.validate(model, datamodule=datamodule, verbose=False)[0]["val/eer"]
    print(f"held-out EER before {before:.3f} after {after:.3f}")
    assert after < 0.7 * before, (before, after)
