"""A memory bank of per-training-clip embeddings, written by the training forward pass.

Why: re-clustering used to re-embed every training clip with the full encoder before each epoch (about
40% of an epoch on 2 CPU cores). The training step computes an embedding of every clip it sees anyway;
keeping the latest one per clip (keyed by the batch's `index`) makes those embeddings free. Clips the
last epoch(s) did not visit (or whose stored vector is not finite) are "stale" and are re-embedded by
the full pass, only those.

Under DDP the contrastive module all-gathers (index, embedding) of every step before writing, so every
rank holds the same bank and rank 0's checkpoint holds all of it.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


class EmbeddingBank:
    """values (N, D) float32 on CPU; written_epoch (N,) the trainer epoch of each clip's last write, -1 never."""

    def __init__(self, n: int, dim: int | None = None):
        self.n = int(n)
        self.values: Tensor | None = None if dim is None else torch.zeros(self.n, int(dim))
        self.written_epoch = torch.full((self.n,), -1, dtype=torch.long)
        self.n_writes = 0  # rows written since creation (tests and logs: is the bank being fed?)

    def _ensure(self, dim: int) -> Tensor:
        if self.values is None:
            self.values = torch.zeros(self.n, dim)
        elif self.values.shape[1] != dim:
            raise ValueError(f"EmbeddingBank: got {dim}-dim embeddings for a bank of {self.values.shape[1]}-dim ones")
        return self.values

    def write(self, index: Tensor | np.ndarray, emb: Tensor | np.ndarray, epoch: int) -> None:
        """Store L2-normalised rows; non-finite rows are not stored (the clip stays stale: re-embedded)."""
        index = torch.as_tensor(index).detach().reshape(-1).long().cpu()
        emb = torch.as_tensor(emb).detach().float().cpu()
        if emb.ndim != 2 or len(emb) != len(index):
            raise ValueError(f"EmbeddingBank.write: {tuple(emb.shape)} embeddings for {len(index)} indices")
        if len(index) and (int(index.min()) < 0 or int(index.max()) >= self.n):
            raise ValueError(f"EmbeddingBank.write: clip index out of range [0, {self.n}): {index.tolist()[:8]}")
        values = self._ensure(emb.shape[1])
        ok = torch.isfinite(emb).all(1)
        index, emb = index[ok], F.normalize(emb[ok], dim=1)
        # A clip twice in one write (a small cluster's pool repeats): its last row wins, deterministically.
        _, last_in_reversed = np.unique(index.numpy()[::-1], return_index=True)
        keep = torch.as_tensor(len(index) - 1 - last_in_reversed)
        index, emb = index[keep], emb[keep]
        values[index] = emb
        self.written_epoch[index] = int(epoch)
        self.n_writes += int(len(index))

    def stale(self, epoch: int, max_age: int) -> np.ndarray:
        """Indices never written, or last written before epoch - max_age."""
        old = (self.written_epoch < 0) | (self.written_epoch < int(epoch) - int(max_age))
        return np.flatnonzero(old.numpy())

    def array(self) -> np.ndarray:
        if self.values is None:
            raise RuntimeError("EmbeddingBank: nothing written yet")
        return self.values.numpy()

    # ----- checkpoint (plain tensors: torch.load(weights_only=True) reads them) -----
    def state_dict(self) -> dict:
        return {"values": None if self.values is None else self.values.clone(),
                "written_epoch": self.written_epoch.clone()}

    @classmethod
    def from_state_dict(cls, state: dict) -> "EmbeddingBank":
        epochs = torch.as_tensor(state["written_epoch"]).long()
        bank = cls(len(epochs))
        bank.written_epoch = epochs.clone()
        if state.get("values") is not None:
            bank.values = torch.as_tensor(state["values"]).float().clone()
        return bank
