"""What every objective shares: a backbone, the optimiser, held-out-speaker EER validation and prediction.

Objectives subclass `EmbeddingModule` and implement only `training_step`. Because the backbone
config is stored in the hyperparameters, any checkpoint of any objective can be reloaded with
`load_from_checkpoint(path)` and used for evaluation.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Mapping

import lightning as L
import numpy as np
import torch

from evaluation.eer import compute_eer, pairwise_trials
from lightning_modules.backbone_factory import build_backbone
from lightning_modules.backbones.base import Backbone

log = logging.getLogger(__name__)


def load_backbone_weights(backbone: Backbone, ckpt_path: str, prefix: str = "backbone.") -> None:
    """Warm start: copy `backbone.*` weights from a checkpoint of any of our modules (safe loading)."""
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not sub:
        raise ValueError(f"init_from={ckpt_path}: no '{prefix}*' weights in this checkpoint")
    missing, unexpected = backbone.load_state_dict(sub, strict=False)
    if missing or unexpected:
        raise ValueError(f"init_from={ckpt_path}: backbone mismatch; missing {missing[:5]}, unexpected {unexpected[:5]} "
                         f"(was it trained with another backbone config?)")
    log.info("warm start: loaded %d backbone tensors from %s", len(sub), ckpt_path)


class EmbeddingModule(L.LightningModule):
    def __init__(self, backbone: Backbone | Mapping[str, Any], lr: float = 1e-3, weight_decay: float = 1e-4,
                 warmup_steps: int = 0, scheduler: str = "cosine", init_from: str | None = None,
                 val_max_pairs: int = 200_000):
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"] if isinstance(backbone, Backbone) else [])
        self.backbone = build_backbone(backbone)
        if init_from:
            load_backbone_weights(self.backbone, init_from)
        self._val_emb: list[torch.Tensor] = []
        self._val_idx: list[torch.Tensor] = []

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.backbone.embed(wav)

    # ----- validation: speaker-verification EER on held-out speakers -----
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        emb, _ = self.backbone.embed_utterances(batch["wavs"])
        self._val_emb.append(emb.float().cpu())
        self._val_idx.append(batch["index"].cpu())

    def on_validation_epoch_end(self) -> None:
        if not self._val_emb:
            return
        emb = torch.cat(self._val_emb).numpy()
        idx = torch.cat(self._val_idx).numpy()
        self._val_emb.clear(), self._val_idx.clear()
        dm = self.trainer.datamodule
        speakers = np.array([dm.val_records[i].speaker for i in idx])
        if len(set(speakers)) < 2:
            return
        scores, labels, _, _ = pairwise_trials(emb, speakers, max_pairs=self.hparams.val_max_pairs, seed=0)
        self.log("val/eer", compute_eer(scores, labels), prog_bar=True, sync_dist=False)

    # ----- prediction: whole-utterance embeddings for evaluation and clustering -----
    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        emb, n_padded = self.backbone.embed_utterances(batch["wavs"])
        return {"embeddings": emb.float().cpu(), "index": batch["index"].cpu(), "n_padded": n_padded}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Lets evaluate.py rebuild the right objective from the checkpoint alone.
        checkpoint["module_class"] = f"{type(self).__module__}.{type(self).__qualname__}"

    # ----- optimisation -----
    def configure_optimizers(self):
        h = self.hparams
        opt = torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=h.lr, weight_decay=h.weight_decay)
        if h.scheduler == "none":
            return opt
        if h.scheduler != "cosine":
            raise ValueError(f"model.scheduler={h.scheduler!r}: expected 'cosine' or 'none'")
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warm = int(h.warmup_steps)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            progress = min(1.0, (step - warm) / max(1, total - warm))
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def load_embedding_module(ckpt_path: str, map_location: str = "cpu") -> EmbeddingModule:
    """Rebuild any of our objectives from its checkpoint (class path stored by `on_save_checkpoint`)."""
    import importlib
    from pathlib import Path

    if not Path(ckpt_path).exists():
        raise FileNotFoundError(f"ckpt_path={ckpt_path!r} does not exist")
    ckpt = torch.load(ckpt_path, map_location=map_location, weights_only=True)
    target = ckpt.get("module_class")
    if not target:
        raise ValueError(f"{ckpt_path} has no 'module_class' entry: not a checkpoint written by this framework")
    module, _, name = target.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    model = cls(**ckpt["hyper_parameters"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()
