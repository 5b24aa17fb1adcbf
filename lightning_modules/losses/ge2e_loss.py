"""Generalised end-to-end (GE2E) softmax loss (Wan et al., 2018), which DeepTalk's released code trained with.

pytorch-metric-learning has no GE2E loss, so it lives here. Input is a (P, K, E) block of
embeddings: P speakers with K utterances each (what `PKBatchSampler` yields).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class GE2ELoss(nn.Module):
    def __init__(self, init_w: float = 10.0, init_b: float = -5.0):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(float(init_w)))
        self.b = nn.Parameter(torch.tensor(float(init_b)))

    def forward(self, emb: Tensor) -> Tensor:
        if emb.dim() != 3 or emb.shape[1] < 2:
            raise ValueError(f"GE2ELoss expects (speakers, utterances>=2, dim), got {tuple(emb.shape)}")
        # In fp32 whatever the precision plugin: under bf16 autocast the einsum below would come out in bf16
        # and the fp32 leave-one-out similarities could not be written into it.
        with torch.autocast(device_type=emb.device.type, enabled=False):
            return self._loss(emb.float())

    def _loss(self, emb: Tensor) -> Tensor:
        p, k, _ = emb.shape
        emb = F.normalize(emb, dim=-1)
        centroids = F.normalize(emb.mean(dim=1), dim=-1)  # (P, E)
        # Exclusive centroids for the utterance's own speaker (leave-one-out), as in the paper.
        excl = F.normalize((emb.sum(dim=1, keepdim=True) - emb) / (k - 1), dim=-1)  # (P, K, E)
        sim = torch.einsum("pke,qe->pkq", emb, centroids)  # (P, K, P)
        own = (emb * excl).sum(-1)  # (P, K)
        idx = torch.arange(p, device=emb.device)
        sim = sim.clone()
        sim[idx, :, idx] = own
        self.w.data.clamp_(min=1e-6)
        logits = self.w * sim + self.b
        target = idx.repeat_interleave(k)
        return F.cross_entropy(logits.reshape(p * k, p), target)


def group_by_label(emb: Tensor, labels: Tensor) -> Tensor:
    """(N, E) embeddings with N = P*K balanced labels -> (P, K, E)."""
    uniq, counts = torch.unique(labels, return_counts=True)
    if not bool((counts == counts[0]).all()):
        raise ValueError(f"GE2E needs the same number of utterances per speaker in a batch, got counts {counts.tolist()}")
    order = torch.argsort(labels, stable=True)
    return emb[order].reshape(len(uniq), int(counts[0]), emb.shape[-1])
