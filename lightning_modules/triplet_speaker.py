"""Objective 1: speaker embeddings by metric learning (DeepTalk), later probed for emotion.

Triplet margin loss with batch-hard mining (pytorch-metric-learning) on P x K batches, or the
GE2E softmax loss that DeepTalk's released code actually trained with (`loss=ge2e`).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from pytorch_metric_learning import losses, miners

from lightning_modules.backbones.base import Backbone
from lightning_modules.embedding_module import EmbeddingModule
from lightning_modules.losses.ge2e_loss import GE2ELoss, group_by_label

MINERS = {"batch_hard": miners.BatchHardMiner, "semi_hard": lambda: miners.TripletMarginMiner(type_of_triplets="semihard"),
          "all": lambda: None}


class TripletSpeakerModule(EmbeddingModule):
    def __init__(self, backbone: Backbone | Mapping[str, Any], loss: str = "triplet", margin: float = 0.2,
                 miner: str = "batch_hard", **kwargs):
        super().__init__(backbone, **kwargs)
        self.save_hyperparameters(ignore=["backbone"] if isinstance(backbone, Backbone) else [])
        if loss == "triplet":
            if miner not in MINERS:
                raise ValueError(f"model.miner={miner!r}: expected one of {sorted(MINERS)}")
            self.loss_fn = losses.TripletMarginLoss(margin=margin)
            self.miner = MINERS[miner]()
        elif loss == "ge2e":
            self.loss_fn = GE2ELoss()
            self.miner = None
        else:
            raise ValueError(f"model.loss={loss!r}: expected 'triplet' or 'ge2e'")

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        emb = self.backbone.embed(batch["wav"]).float()
        labels = batch["label"]
        if self.hparams.loss == "ge2e":
            loss = self.loss_fn(group_by_label(emb, labels))
        else:
            pairs = self.miner(emb, labels) if self.miner is not None else None
            loss = self.loss_fn(emb, labels, pairs)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(labels))
        return loss
