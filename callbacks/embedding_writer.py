"""Collects whole-utterance embeddings from Lightning's predict loop on every rank.

Each rank writes its own shard of (index, embedding) rows and then waits for every other rank
(a barrier), so when `trainer.predict` returns on rank 0 every rank's file is complete;
`merge_rank_files` joins them and drops the duplicates DistributedSampler pads with, so multi-GPU
extraction returns each clip once.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter


class EmbeddingWriter(BasePredictionWriter):
    def __init__(self, out_dir: str | Path):
        super().__init__(write_interval="epoch")
        self.out_dir = Path(out_dir)
        self.n_padded = 0

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        preds = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if preds:
            emb = torch.cat([p["embeddings"] for p in preds]).numpy()
            idx = torch.cat([p["index"] for p in preds]).numpy()
            n_padded = sum(int(p["n_padded"]) for p in preds)
        else:
            emb, idx, n_padded = np.zeros((0, 0), np.float32), np.zeros(0, np.int64), 0
        path = self.out_dir / f"predictions_rank{trainer.global_rank}.npz"
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, embeddings=emb, index=idx, n_padded=np.array(n_padded))
        tmp.replace(path)
        trainer.strategy.barrier("embedding_writer")  # rank 0 merges right after predict returns


def merge_rank_files(out_dir: str | Path, n_items: int) -> tuple[np.ndarray, int]:
    """(n_items, D) embeddings ordered by dataset index, and the number of padded clips."""
    files = sorted(Path(out_dir).glob("predictions_rank*.npz"))
    if not files:
        raise RuntimeError(f"no prediction files in {out_dir}: did the predict loop run?")
    embs, idxs, n_padded = [], [], 0
    for f in files:
        with np.load(f, allow_pickle=False) as d:
            if len(d["index"]):
                embs.append(d["embeddings"]), idxs.append(d["index"])
            n_padded += int(d["n_padded"])
    emb, idx = np.concatenate(embs), np.concatenate(idxs)
    out = np.full((n_items, emb.shape[1]), np.nan, dtype=np.float32)
    out[idx] = emb
    missing = np.flatnonzero(np.isnan(out[:, 0]))
    if missing.size:
        raise RuntimeError(f"extraction lost {missing.size} of {n_items} clips (e.g. indices {missing[:5].tolist()})")
    for f in files:
        f.unlink()
    return out, n_padded
