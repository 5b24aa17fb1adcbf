"""The one way clips become vectors: validation, the predict loop (evaluation) and clustering all call it.

`embed_clips` fixes what the three paths could otherwise disagree on: eval mode (restored after),
no gradient, the trainer's precision (the autocast Lightning applies inside its own steps is also
applied outside them, e.g. by the clustering callback), the device, and float32 CPU output. How a
variable-length clip is cut into windows and averaged is the backbone's own rule
(`Backbone.embed_utterances`: GE2E follows Resemblyzer, others the base class's overlapping windows).

`embed_records` runs `embed_clips` over a list of records through the datamodule's utterance loader,
split across DDP ranks and gathered back in order.

Extension point: `output` names what is computed per clip (`CLIP_OUTPUTS`, each a function
`(backbone, wavs) -> (Tensor (N, ...), n_padded)`), and `describe_output` says what its columns are
(evaluation/layer_features.py):
- "embedding": the final L2-normalised utterance embedding;
- "layer_stats": per layer of `backbone.layers(wav)`, the mean then the std over time, over the same
  windows the embedding uses (`Backbone.layer_stats_utterances`; GE2E: Resemblyzer's partials, the
  padding past the clip's end left out; a clip shorter than one window is run as it is, unpadded).
  Its `n_padded` counts those short clips.
- "auto": both side by side (embedding first), for the head that picks per fold (`features=auto`).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from lightning_modules.backbones.base import Backbone


def _final_embedding(backbone: Backbone, wavs: list[Tensor]) -> tuple[Tensor, int]:
    return backbone.embed_utterances(wavs)


def _layer_stats(backbone: Backbone, wavs: list[Tensor]) -> tuple[Tensor, int]:
    return backbone.layer_stats_utterances(wavs)


def _auto(backbone: Backbone, wavs: list[Tensor]) -> tuple[Tensor, int]:
    wavs = [backbone.input_of(w) for w in wavs]  # the frozen prefix once for both
    emb, n_padded = backbone.embed_utterances(wavs)
    stats, _ = backbone.layer_stats_utterances(wavs)
    return torch.cat([emb.float(), stats.float()], 1), n_padded


# output name -> (backbone, list of 1-D waveforms) -> (per-clip values, number of zero-padded clips)
CLIP_OUTPUTS: dict[str, Callable[[Backbone, list[Tensor]], tuple[Tensor, int]]] = {
    "embedding": _final_embedding, "layer_stats": _layer_stats, "auto": _auto}


def describe_output(model: nn.Module, output: str = "embedding") -> dict:
    """What the columns of `output` are for this backbone (stored with the features, read by heads and predict)."""
    from evaluation.layer_features import auto_description, embedding_description, layer_stats_description

    if output not in CLIP_OUTPUTS:
        raise ValueError(f"output={output!r}: expected one of {sorted(CLIP_OUTPUTS)}")
    backbone = _backbone_of(model)
    if output == "embedding":
        return embedding_description(backbone.embedding_dim)
    if output == "auto":
        return auto_description(backbone.embedding_dim, backbone.layer_names(), backbone.layer_dims())
    return layer_stats_description(backbone.layer_names(), backbone.layer_dims())


@dataclass
class ClipEmbeddings:
    values: Tensor  # (N, E) float32 on CPU, L2-normalised for output="embedding"
    n_padded: int  # clips shorter than one window, zero-padded to it


def _backbone_of(model: nn.Module) -> Backbone:
    backbone = getattr(model, "backbone", model)
    if not isinstance(backbone, Backbone):
        raise TypeError(f"embed_clips needs a Backbone or a module with a `.backbone`, got {type(model).__name__}")
    return backbone


def _precision_context(model: nn.Module):
    """The autocast of the trainer the module is attached to (none outside a trainer)."""
    trainer = getattr(model, "_trainer", None) if isinstance(model, L.LightningModule) else None
    if trainer is None:
        return contextlib.nullcontext()
    return trainer.precision_plugin.forward_context()


@torch.no_grad()
def embed_clips(model: nn.Module, wavs: Sequence[Tensor], output: str = "embedding") -> ClipEmbeddings:
    """Whole-clip vectors of variable-length 1-D waveforms, computed the same way wherever they are needed.

    model: a Backbone or any module holding one as `.backbone` (our LightningModules).
    output: what to compute per clip (see CLIP_OUTPUTS; "embedding" = the final utterance embedding).
    """
    if output not in CLIP_OUTPUTS:
        raise ValueError(f"embed_clips output={output!r}: expected one of {sorted(CLIP_OUTPUTS)}")
    backbone = _backbone_of(model)
    device = next((p.device for p in backbone.parameters()), torch.device("cpu"))
    was_training = backbone.training
    backbone.eval()
    try:
        with _precision_context(model):
            values, n_padded = CLIP_OUTPUTS[output](backbone, [w.to(device) for w in wavs])
    finally:
        backbone.train(was_training)
    return ClipEmbeddings(values.float().cpu(), int(n_padded))


def embed_records(model: nn.Module, datamodule: Any, records: Sequence, batch_size: int | None = None,
                  rank: int = 0, world_size: int = 1, all_gather: Callable[[Tensor], Tensor] | None = None,
                  output: str = "embedding") -> np.ndarray:
    """(N, E) vectors of `records` in order, via `datamodule.utterance_loader` (its decoding and trimming).

    With world_size > 1 each rank embeds every world_size-th record and `all_gather` (e.g.
    `trainer.strategy.all_gather`) joins the shards, so every rank returns the full array.
    """
    idx = np.arange(len(records))[rank::world_size]
    shard = [records[i] for i in idx]
    parts, order = [], []
    for batch in datamodule.utterance_loader(shard, batch_size):
        parts.append(embed_clips(model, batch["wavs"], output).values)
        order.append(batch["index"])
    dim = parts[0].shape[1] if parts else _backbone_of(model).embedding_dim
    local = torch.cat(parts) if parts else torch.zeros(0, dim)
    local_idx = torch.as_tensor(idx)[torch.cat(order)] if order else torch.zeros(0, dtype=torch.long)
    if world_size > 1:
        if all_gather is None:
            raise ValueError("embed_records: world_size > 1 needs all_gather")
        device = next((p.device for p in _backbone_of(model).parameters()), torch.device("cpu"))
        n_max = -(-len(records) // world_size)
        pad = n_max - len(local)
        local = torch.cat([local, local.new_zeros(pad, dim)]).to(device)
        local_idx = torch.cat([local_idx, local_idx.new_full((pad,), -1)]).to(device)
        local = all_gather(local).reshape(-1, dim).cpu()
        local_idx = all_gather(local_idx).reshape(-1).cpu()
    valid = local_idx >= 0
    out = torch.full((len(records), dim), float("nan"))
    out[local_idx[valid]] = local[valid]
    return out.numpy()


class ClipPredictor(L.LightningModule):
    """Lightning's predict loop around either model: features for a bundle's head, or a SER module's
    probabilities. Device, precision and DDP come from the trainer like in evaluate.py."""

    def __init__(self, model: torch.nn.Module, mode: str, features: str = "embedding"):
        super().__init__()
        self.model, self.mode, self.features = model, mode, features

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        if self.mode == "features":
            out = embed_clips(self.model, batch["wavs"], self.features)
            values, n_padded = out.values, out.n_padded
        else:
            with torch.no_grad():
                values, n_padded = self.model.predict_proba(batch["wavs"]).float().cpu(), 0
        return {"embeddings": values, "index": batch["index"].cpu(), "n_padded": n_padded}
