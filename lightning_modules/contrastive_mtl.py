"""Objective: speaker classification (AAM-softmax) + intra-speaker cluster contrastive loss.

The speaker term keeps the embedding a speaker embedding while the contrastive term pulls it
towards the emotion-like structure inside each speaker. With `adversarial: true` the speaker head
sits behind a gradient reversal layer: the head still learns to recognise speakers, but the
encoder gets the negated gradient and is pushed to drop speaker information instead.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from pytorch_metric_learning import losses
from torch import Tensor
from torchmetrics.functional.classification import multiclass_accuracy

from lightning_modules.backbones.base import Backbone
from lightning_modules.contrastive import ClusterContrastiveModule
from lightning_modules.gradient_reversal import dann_scale, grad_reverse

GRL_SCHEDULES = ("constant", "dann")


class ContrastiveMTLModule(ClusterContrastiveModule):
    """speaker_weight, contrastive_weight: weights of the two terms in the total loss.
    adversarial: reverse the speaker head's gradient into the encoder (scale grl_scale, ramped from
        0 over training with grl_schedule="dann", constant otherwise).
    arcface_margin_deg, arcface_scale: AAM-softmax margin (degrees, as pytorch-metric-learning takes
        it) and scale.
    num_speakers: size of the speaker head; filled from the datamodule at fit time and saved in the
        checkpoint so `load_from_checkpoint` rebuilds the head.
    head_lr: learning rate of the speaker head, which starts from scratch (N(0, 1) class weights) while
        the encoder fine-tunes at `lr`: under AdamW a weight moves about lr per step, so at an encoder's
        1e-4 the class directions would barely turn in a short run (pytorch-metric-learning likewise
        gives such losses their own optimiser).
    All ClusterContrastiveModule / EmbeddingModule options apply as well.
    """

    def __init__(self, backbone: Backbone | Mapping[str, Any], speaker_weight: float = 1.0,
                 contrastive_weight: float = 1.0, adversarial: bool = False, grl_scale: float = 1.0,
                 grl_schedule: str = "constant", arcface_margin_deg: float = 11.5, arcface_scale: float = 30.0,
                 num_speakers: int | None = None, head_lr: float = 0.05, **kwargs):
        super().__init__(backbone, **kwargs)
        self.save_hyperparameters(ignore=["backbone"] if isinstance(backbone, Backbone) else [])
        if grl_schedule not in GRL_SCHEDULES:
            raise ValueError(f"model.grl_schedule={grl_schedule!r}: expected one of {GRL_SCHEDULES}")
        if not head_lr > 0:
            raise ValueError(f"model.head_lr={head_lr}: expected > 0")
        if speaker_weight < 0 or contrastive_weight < 0:
            raise ValueError(f"model.speaker_weight={speaker_weight}, contrastive_weight={contrastive_weight}: "
                             "weights must be >= 0")
        self.speaker_loss: losses.ArcFaceLoss | None = None
        if num_speakers:
            self._build_speaker_head(int(num_speakers))

    def _build_speaker_head(self, n: int) -> None:
        h = self.hparams
        self.speaker_loss = losses.ArcFaceLoss(num_classes=n, embedding_size=self.backbone.embedding_dim,
                                               margin=h.arcface_margin_deg, scale=h.arcface_scale)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = getattr(self.trainer, "datamodule", None)
        if stage != "fit" or dm is None or not hasattr(dm, "num_speakers"):
            return
        n = int(dm.num_speakers)
        if self.speaker_loss is None:
            self.hparams.num_speakers = n
            self._build_speaker_head(n)
        elif self.speaker_loss.W.shape[1] != n:
            raise ValueError(f"model.num_speakers={self.speaker_loss.W.shape[1]} (from the checkpoint/config) but the "
                             f"datamodule has {n} training speakers; to start from another run's encoder use "
                             f"model.init_from=<ckpt> (backbone weights only) instead of resuming")

    def optimizer_param_groups(self) -> list[dict]:
        head = [p for p in self.speaker_loss.parameters() if p.requires_grad] if self.speaker_loss is not None else []
        ids = {id(p) for p in head}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        return [{"params": rest}, {"params": head, "lr": float(self.hparams.head_lr)}]

    def grl_scale_now(self) -> float:
        h = self.hparams
        if h.grl_schedule == "constant":
            return float(h.grl_scale)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        return dann_scale(self.global_step / total, h.grl_scale)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        if self.speaker_loss is None:
            raise RuntimeError("ContrastiveMTLModule: the speaker head is built in setup() from the datamodule's "
                               "num_speakers; fit with a SpeakerDataModule or pass model.num_speakers")
        h = self.hparams
        wav, speakers, classes, clusters = self.views(batch)
        emb = self.backbone.embed(wav).float()
        self.feed_embedding_bank(batch, emb)
        n = len(speakers)
        total = emb.new_zeros(())
        if h.contrastive_weight > 0:
            total = total + h.contrastive_weight * self.contrastive_term(emb, speakers, clusters)
        feats = emb
        if h.adversarial:
            scale = self.grl_scale_now()
            feats = grad_reverse(emb, scale)
            self.log("train/grl_scale", scale, batch_size=n)
        spk_loss = self.speaker_loss(feats, classes)
        total = total + h.speaker_weight * spk_loss
        with torch.no_grad():
            acc = multiclass_accuracy(self.speaker_loss.get_logits(emb).argmax(1), classes,
                                      num_classes=self.speaker_loss.W.shape[1], average="micro")
        self.log("train/speaker_loss", spk_loss, batch_size=n)
        self.log("train/speaker_acc", acc, batch_size=n)
        self.log("train/loss", total, prog_bar=True, batch_size=n)
        return total
