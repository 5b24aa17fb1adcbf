"""Objective: contrastive learning over intra-speaker clusters (Ulgen et al., ICASSP 2024).

A speaker's k-means clusters (pseudo-labels from `callbacks.intra_speaker_clustering`) act as
classes: positives are other clips (and, with `two_crops`, another crop of the same clip) from the
anchor's (speaker, cluster); negatives are clips from the same speaker's other clusters, so speaker
identity is no shortcut (`negatives: all` adds other speakers' clips too). The pairs are handed to
pytorch-metric-learning's SupConLoss / NTXentLoss as an explicit (a1, p, a2, n) tuple, which masks
every other pair out of the softmax denominator.

Under DDP the (projected) embeddings of all ranks are gathered, the local slice keeping its
gradient, so every anchor sees the global batch; the loss is scaled by world size because DDP
averages gradients while each rank only back-propagates through its own slice.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses
from torch import Tensor, nn

from datamodules.prefix import Prefix, cat_batches
from lightning_modules.backbones.base import Backbone
from lightning_modules.embedding_module import EmbeddingModule

NEGATIVES = ("same_speaker", "all")
LOSSES = {"supcon": losses.SupConLoss, "ntxent": losses.NTXentLoss}


def contrastive_pairs(speakers: Tensor, clusters: Tensor, negatives: str = "same_speaker") -> tuple[Tensor, ...]:
    """(a1, p, a2, n) index tensors: positives share (speaker, cluster); negatives share the speaker
    but not the cluster (`same_speaker`) or are any other (speaker, cluster) (`all`). No self-pairs."""
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives={negatives!r}: expected one of {NEGATIVES}")
    same_spk = speakers[:, None] == speakers[None, :]
    same_cluster = same_spk & (clusters[:, None] == clusters[None, :])
    not_self = ~torch.eye(len(speakers), dtype=torch.bool, device=speakers.device)
    pos = same_cluster & not_self
    neg = (same_spk & ~same_cluster) if negatives == "same_speaker" else ~same_cluster
    a1, p = pos.nonzero(as_tuple=True)
    a2, n = neg.nonzero(as_tuple=True)
    return a1, p, a2, n


def random_subcrops(wav: Tensor | Prefix, fraction: float) -> tuple[Tensor | Prefix, Tensor | Prefix]:
    """Two independent random crops (each `fraction` of the length) of every row: two views of one clip.
    Waveforms are cut in samples, a batch `Prefix` in frames."""
    if not 0 < fraction <= 1:
        raise ValueError(f"crop_fraction={fraction}: expected 0 < fraction <= 1")
    x = wav.values if isinstance(wav, Prefix) else wav
    b, s = x.shape[:2]
    length = max(1, int(round(fraction * s)))
    views = []
    for _ in range(2):
        starts = torch.randint(0, s - length + 1, (b,), device=x.device)
        idx = starts[:, None] + torch.arange(length, device=x.device)[None, :]
        if x.dim() == 3:
            idx = idx[..., None].expand(-1, -1, x.shape[2])
        view = torch.gather(x, 1, idx)
        views.append(Prefix(view, wav.cut, int(round(wav.n_samples * length / s))) if isinstance(wav, Prefix) else view)
    return views[0], views[1]


class ProjectionHead(nn.Module):
    """SimCLR-style MLP: the loss sees its output, downstream tasks use the embedding before it."""

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.net(x), dim=-1)


def freeze_backbone_parameters(backbone: nn.Module, prefixes: Sequence[str]) -> int:
    """Freeze backbone parameters whose names start with any prefix; returns how many tensors were frozen."""
    names = [n for n, _ in backbone.named_parameters()]
    frozen = 0
    for prefix in prefixes:
        hits = [n for n in names if n.startswith(prefix)]
        if not hits:
            raise ValueError(f"model.freeze: prefix {prefix!r} matches no backbone parameter; names start with "
                             f"{sorted({n.split('.')[0] for n in names})}")
    for name, p in backbone.named_parameters():
        if any(name.startswith(px) for px in prefixes):
            p.requires_grad_(False)
            frozen += 1
    return frozen


class ClusterContrastiveModule(EmbeddingModule):
    """temperature: softmax temperature of the contrastive loss (SupCon default 0.1).
    loss: "supcon" (all positives of an anchor averaged) or "ntxent" (one term per positive pair).
    negatives: "same_speaker" (paper's idea: speaker is no shortcut) or "all".
    two_crops: embed two random sub-crops (crop_fraction of the training crop) of every clip; they
        are positives of each other (and of the rest of their cluster).
    projection: {"hidden_dim", "out_dim"} for a SimCLR projection head, or None for the loss on the
        embedding itself.
    gather_distributed: gather embeddings from all DDP ranks for the loss.
    freeze: backbone parameter-name prefixes to keep fixed (e.g. the pretrained lower layers).
    """

    def __init__(self, backbone: Backbone | Mapping[str, Any], temperature: float = 0.1, loss: str = "supcon",
                 negatives: str = "same_speaker", two_crops: bool = False, crop_fraction: float = 0.8,
                 projection: Mapping[str, int] | None = None, gather_distributed: bool = True,
                 freeze: Sequence[str] | None = None, **kwargs):
        super().__init__(backbone, **kwargs)
        self.save_hyperparameters(ignore=["backbone"] if isinstance(backbone, Backbone) else [])
        if loss not in LOSSES:
            raise ValueError(f"model.loss={loss!r}: expected one of {sorted(LOSSES)}")
        if negatives not in NEGATIVES:
            raise ValueError(f"model.negatives={negatives!r}: expected one of {NEGATIVES}")
        if not temperature > 0:
            raise ValueError(f"model.temperature={temperature}: expected > 0")
        self.contrastive_loss = LOSSES[loss](temperature=temperature)
        self.projector = ProjectionHead(self.backbone.embedding_dim, **dict(projection)) if projection else None
        if freeze:
            freeze_backbone_parameters(self.backbone, list(freeze))
        # Set by the clustering callback (source=memory_bank): every training embedding is kept per clip,
        # so re-clustering reuses them instead of re-embedding the training set (callbacks/embedding_bank.py).
        self.embedding_bank = None

    # ----- cross-rank gathering with the local slice differentiable -----
    def gather_for_loss(self, x: Tensor) -> Tensor:
        if not self.hparams.gather_distributed or self.trainer.world_size == 1:
            return x
        everything = self.all_gather(x)  # (world, B, ...) without gradient
        r = self.trainer.global_rank
        return torch.cat([everything[:r], x.unsqueeze(0), everything[r + 1:]]).flatten(0, 1)

    def views(self, batch: dict) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(waveforms, speakers, speaker classes, cluster ids) of the batch, doubled with two crops per clip.

        Pairs are built on `speakers`, each clip's ORIGINAL speaker: the clusters are that speaker's, so a
        speed-perturbed copy stays in its own speaker's pairs. `speaker classes` (batch "label") are
        what a speaker classifier learns, where a sped-up copy is a new class (WeSpeaker)."""
        if "cluster" not in batch:
            raise RuntimeError(f"{type(self).__name__} needs intra-speaker pseudo-labels in its batches: add the "
                               "clustering callback (callbacks=clustering, i.e. callbacks.intra_speaker_clustering), "
                               "whose labels the P x C x K sampler puts in every batch")
        wav, clusters = batch["wav"], batch["cluster"]
        classes = batch["label"]
        speakers = batch["speaker"]
        if self.hparams.two_crops:
            v1, v2 = random_subcrops(wav, self.hparams.crop_fraction)
            wav = cat_batches([v1, v2])
            speakers, classes, clusters = speakers.repeat(2), classes.repeat(2), clusters.repeat(2)
        return wav, speakers, classes, clusters

    def feed_embedding_bank(self, batch: dict, emb: Tensor) -> None:
        """Write this step's embeddings (before the projection head) to the clustering memory bank.

        With two crops per clip the two views' mean is kept. Under DDP (index, embedding) are gathered from
        every rank first, so all ranks hold the same bank (one collective per step, tiny next to the forward)."""
        bank = self.embedding_bank
        if bank is None:
            return
        index = batch["index"]
        emb = emb.detach().float()
        if len(emb) != len(index):  # two_crops: [view 1; view 2]
            emb = emb.reshape(-1, len(index), emb.shape[-1]).mean(0)
        if self._trainer is not None and self.trainer.world_size > 1:
            emb = self.all_gather(emb).flatten(0, 1)
            index = self.all_gather(index.to(emb.device)).flatten(0, 1)
        bank.write(index, emb, epoch=self.current_epoch)

    def contrastive_term(self, emb: Tensor, speakers: Tensor, clusters: Tensor) -> Tensor:
        z = self.projector(emb) if self.projector is not None else emb
        z_all, spk_all, clu_all = self.gather_for_loss(z), self.gather_for_loss(speakers), self.gather_for_loss(clusters)
        pairs = contrastive_pairs(spk_all, clu_all, self.hparams.negatives)
        scale = self.trainer.world_size if len(z_all) > len(z) else 1
        if len(pairs[0]) and len(pairs[2]):
            loss = self.contrastive_loss(z_all, indices_tuple=pairs) * scale
        else:  # no positive or no negative pair in this batch: nothing to contrast, keep the graph
            loss = z_all.sum() * 0.0
        n = len(speakers)
        self.log("train/gathered_batch", float(len(z_all)), batch_size=n)
        self.log("train/pos_pairs", float(len(pairs[0])), batch_size=n)
        self.log("train/neg_pairs", float(len(pairs[2])), batch_size=n)
        self.log("train/contrastive_loss", loss, batch_size=n)
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        wav, speakers, _, clusters = self.views(batch)
        emb = self.backbone.embed(wav).float()
        self.feed_embedding_bank(batch, emb)
        loss = self.contrastive_term(emb, speakers, clusters)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(speakers))
        return loss
