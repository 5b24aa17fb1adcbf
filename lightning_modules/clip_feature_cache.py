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


def _key(backbone, datamodule, output: str) -> str:
    return hashlib.blake2b(json.dumps({"encoder": encoder_digest(backbone), "output": output,
                                       "audio": audio_settings(datamodule)}, sort_keys=True).encode(),
                           digest_size=12).hexdigest()


def clip_features(backbone: torch.nn.Module, datamodule, records: Sequence[ClipRecord], outputs: str | Sequence[str],
                  cache_dir: str | Path | None, batch_size: int = 16) -> dict[str, tuple[np.ndarray, dict]]:
    """{output: ((N, D) features of `records` in order, their description)}, read back when cached. Outputs
    computed together share one pass over the audio (the embedding and the layer statistics come from the
    same windows: `features=auto`'s columns, split)."""
    backbone = backbone.eval()
    outputs = [outputs] if isinstance(outputs, str) else list(dict.fromkeys(outputs))
    keys = [clip_key(r) for r in records]
    have, paths = {}, {}
    for out in outputs:
        paths[out] = Path(cache_dir) / f"{_key(backbone, datamodule, out)}.npz" if cache_dir is not None else None
        have[out] = {}
        if paths[out] is not None and paths[out].is_file():
            with np.load(paths[out], allow_pickle=False) as z:
                have[out] = dict(zip(z["keys"].tolist(), z["values"]))
    todo = sorted({i for out in outputs for i, k in enumerate(keys) if k not in have[out]})
    if todo:
        together = len(outputs) > 1 and set(outputs) <= {"embedding", "layer_stats", "auto"}
        passes = ["auto"] if together else outputs
        dim = int(backbone.embedding_dim)
        for pass_output in passes:
            parts = []
            for batch in datamodule.utterance_loader([records[i] for i in todo], batch_size):
                parts.append(embed_clips(backbone, batch["wavs"], pass_output).values.numpy())
            values = np.concatenate(parts)
            split = {"auto": values, "embedding": values[:, :dim], "layer_stats": values[:, dim:]} if together else \
                {pass_output: values}
            for out in outputs:
                if out in split:
                    for i, v in zip(todo, split[out]):
                        have[out][keys[i]] = v
        for out in outputs:
            if paths[out] is not None:
                paths[out].parent.mkdir(parents=True, exist_ok=True)
                tmp = paths[out].with_name(paths[out].name + ".tmp.npz")
                np.savez(tmp, keys=np.array(list(have[out]), dtype=str),
                         values=np.stack(list(have[out].values())).astype(np.float32))
                tmp.replace(paths[out])
    log.info("%s features of %d clips: %d computed, %d read back (%s)", "+".join(outputs), len(records), len(todo),
             len(records) - len(todo), cache_dir or "not cached")
    return {out: (np.stack([have[out][k] for k in keys]).astype(np.float32), describe_output(backbone, out))
            for out in outputs}
