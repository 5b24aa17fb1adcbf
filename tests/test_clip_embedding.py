"""One embedding function: validation, the predict loop and clustering agree clip for clip, also in bf16."""
from __future__ import annotations

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from lightning_modules.clip_embedding import CLIP_OUTPUTS, embed_clips, embed_records
from lightning_modules.embedding_module import EmbeddingModule
from tests.helpers import TinyBackbone


class KeepValidationEmbeddings(L.Callback):
    def __init__(self):
        self.rows = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.rows.append(pl_module._val[-1]["embedding"].clone())


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_validation_prediction_and_clustering_embed_alike(train_cfg_factory, precision):
    cfg = train_cfg_factory()
    dm = instantiate(cfg.data, _convert_="all")
    dm.prepare_data(), dm.setup("fit")
    torch.manual_seed(0)
    module = EmbeddingModule(TinyBackbone()).train()  # embedding must switch to eval itself, and restore
    keep = KeepValidationEmbeddings()
    trainer = L.Trainer(accelerator="cpu", precision=precision, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[keep])
    records = dm.val_records
    predicted = torch.cat([p["embeddings"] for p in trainer.predict(module, dm.utterance_loader(records))])
    trainer.validate(module, dataloaders=dm.val_dataloader(), verbose=False)
    validated = torch.cat(keep.rows)
    clustered = torch.as_tensor(embed_records(module, dm, records))  # outside any Lightning step
    torch.testing.assert_close(validated, predicted, rtol=0, atol=1e-6)
    torch.testing.assert_close(clustered, predicted, rtol=0, atol=1e-6)

    bare = torch.cat([embed_clips(module.backbone, b["wavs"]).values for b in dm.utterance_loader(records)])
    if precision == "bf16-mixed":  # the comparison above can tell precisions apart
        assert (bare - predicted).abs().max() > 1e-4
    else:
        torch.testing.assert_close(bare, predicted, rtol=0, atol=1e-6)


def test_output_is_an_extension_point_with_a_clear_error():
    assert list(CLIP_OUTPUTS) == ["embedding", "layer_stats", "auto"]
    with pytest.raises(ValueError, match=r"output='layers'.*\['auto', 'embedding', 'layer_stats'\]"):
        embed_clips(TinyBackbone(), [torch.zeros(16000)], output="layers")
