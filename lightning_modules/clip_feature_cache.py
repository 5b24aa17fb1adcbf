"""Per-clip features of an encoder (the final embedding, layer statistics), computed once per weights.

A cross-validation scores the same frozen encoder (the baseline, or a `freeze=all` model) on every fold
and repeat: its clip features do not change, so they are kept on disk keyed by what they depend on (the
encoder's class, weights, frozen cut and settings, the output, the audio pipeline) and each clip by its
file (`datamodules.frozen_prefix.clip_key`). A trained encoder has new weights, hence a new key; a fold
that meets clips the file lacks adds them. Files are plain `.npz` (no pickle).
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from datamodules.frozen_prefix import audio_settings, clip_key
from datamodules.records import ClipRecord
from lightning_modules.clip_embedding import describe_output, embed_clips

log = logging.getLogger(__name__)
VERSION = 1


def encoder_digest(backbone: torch.nn.Module) -> str:
    """Class, frozen cut, settings and every weight of an encoder: equal digests give equal features."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{VERSION}:{type(backbone).__module__}.{type(backbone).__qualname__}".encode())
    h.update(repr(backbone.frozen_cut()).encode())
    h.update(repr(sorted(backbone.prefix_config().items())).encode())
    for name, value in sorted(backbone.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()


def clip_features(backbone: torch.nn.Module, datamodule, records: Sequence[ClipRecord], output: str,
                  cache_dir: str | Path | None, batch_size: int = 16) -> tuple[np.ndarray, dict]:
    """((N, D) `output` features of `records`, in order, and their description), read back when cached."""
    backbone = backbone.eval()
    description = describe_output(backbone, output)
    key = hashlib.blake2b(json.dumps({"encoder": encoder_digest(backbone), "output": output,
                                      "audio": audio_settings(datamodule)}, sort_keys=True).encode(),
                          digest_size=12).hexdigest()
    path = Path(cache_dir) / f"{key}.npz" if cache_dir is not None else None
    have: dict[str, np.ndarray] = {}
    if path is not None and path.is_file():
        with np.load(path, allow_pickle=False) as z:
            have = dict(zip(z["keys"].tolist(), z["values"]))
    keys = [clip_key(r) for r in records]
    todo = [i for i, k in enumerate(keys) if k not in have]
    if todo:
        todo_records = [records[i] for i in todo]
        parts = []
        for batch in datamodule.utterance_loader(todo_records, batch_size):
            parts.append(embed_clips(backbone, batch["wavs"], output).values.numpy())
        for i, v in zip(todo, np.concatenate(parts)):
            have[keys[i]] = v
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp.npz")
            np.savez(tmp, keys=np.array(list(have), dtype=str), values=np.stack(list(have.values())).astype(np.float32))
            tmp.replace(path)
    log.info("%s features of %d clips: %d computed, %d read back (%s)", output, len(records), len(todo),
             len(records) - len(todo), path or "not cached")
    return np.stack([have[k] for k in keys]).astype(np.float32), description
