"""Objective 1: speaker embeddings by metric learning (DeepTalk), later probed for emotion.

Triplet margin loss (pytorch-metric-learning) on P x K batches, or the GE2E softmax loss that
DeepTalk's released code actually trained with (`loss=ge2e`, the default of `python train.py`:
held-out EER 0.34 against 0.37 for batch-all triplet over 4 seeds, inside the noise, BENCHMARKS.md
"DeepTalk from scratch"; `experiment=triplet_speaker` keeps the triplet loss).

The default miner is `all` (batch-all: every valid triplet of the batch, the loss averaged over
those still inside the margin), not batch-hard. From a random init DeepTalk's embeddings of
different clips are close together, and batch-hard mining (the hardest positive and negative per
anchor) tends to pull them onto one point (loss = margin) instead of pushing speakers apart.
Measured on the default run, BENCHMARKS.md "DeepTalk from scratch": with batch-all and the
style-token init of `StyleTokenLayer` the held-out EER falls, slowly (CPU budgets are short).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from pytorch_metric_learning import losses, miners

from lightning_modules.backbones.base import Backbone
from lightning_modules.embedding_module import EmbeddingModule
from lightning_modules.losses.ge2e_loss import GE2ELoss, group_by_label

# Miner factories, given the loss margin (a semi-hard negative is one inside the loss's own margin).
MINERS = {"batch_hard": lambda margin: miners.BatchHardMiner(),
          "semi_hard": lambda margin: miners.TripletMarginMiner(margin=margin, type_of_triplets="semihard"),
          "all": lambda margin: None}


class TripletSpeakerModule(EmbeddingModule):
    def __init__(self, backbone: Backbone | Mapping[str, Any], loss: str = "triplet", margin: float = 0.5,
                 miner: str = "all", **kwargs):
        super().__init__(backbone, **kwargs)
        self.save_hyperparameters(ignore=["backbone"] if isinstance(backbone, Backbone) else [])
        if loss == "triplet":
            if miner not in MINERS:
                raise ValueError(f"model.miner={miner!r}: expected one of {sorted(MINERS)}")
            self.loss_fn = losses.TripletMarginLoss(margin=margin)
            self.miner = MINERS[miner](margin)
        elif loss == "ge2e":
            self.loss_fn = GE2ELoss()
            self.miner = None
        else:
            raise ValueError(f"model.loss={loss!r}: expected 'triplet' or 'ge2e'")

    def objective(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training loss of (N, E) embeddings with speaker labels (GE2E: K clips of each of P speakers)."""
        if self.hparams.loss == "ge2e":
            return self.loss_fn(group_by_label(emb, labels))
        pairs = self.miner(emb, labels) if self.miner is not None else None
        return self.loss_fn(emb, labels, pairs)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        labels = batch["label"]
        loss = self.objective(self.backbone.embed(batch["wav"]).float(), labels)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(labels))
        return loss
