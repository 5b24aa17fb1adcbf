"""Per-clip features of an encoder (the final embedding, layer statistics), computed once per weights.

The one cache of clip features: crossval.py (the same frozen encoder on every fold and repeat) and evaluate.py
(`features=embedding|layer_stats|auto` of a checkpoint or a backbone) both read and fill it, in
`<paths.data_dir>/clip_features/` (`CACHE_FOLDER`), so the runs of one encoder share their work. A file holds one
output of one key: what the features depend on (the encoder's class, weights, frozen cut and settings:
`encoder_digest`; the output; the audio pipeline; the precision they were computed at, e.g. a bf16 extraction
never reads fp32 features back), and each clip by its file (`datamodules.frozen_prefix.clip_key`). A trained
encoder has new weights, hence a new key; a fold or a run that meets clips the file lacks adds them.

`auto` is not stored: it is the embedding and the layer statistics side by side (`clip_embedding._auto`), so it
is assembled from their two files, and a clip missing both is computed in one pass over its audio and split.
Files are plain `.npz` (no pickle).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from datamodules.frozen_prefix import audio_settings, clip_key
from datamodules.records import ClipRecord
from lightning_modules.clip_embedding import describe_output, embed_clips

log = logging.getLogger(__name__)
VERSION = 2  # 2: the precision is part of the key; auto is assembled from embedding and layer_stats
CACHE_FOLDER = "clip_features"  # under paths.data_dir (crossval.py and evaluate.py)
# outputs made of others' columns, side by side in this order (lightning_modules/clip_embedding.py `_auto`)
COMPOSED = {"auto": ("embedding", "layer_stats")}
# Lightning's short spellings of a precision, as the trainer reports them (trainer.precision)
_PRECISION_ALIASES = {"32": "32-true", "64": "64-true", "16": "16-mixed", "bf16": "bf16-mixed"}
# compute(records, output) -> (N, D) values of `records` in order, or None on a process that holds no result
# (a DDP rank other than 0: it took part in the computation, rank 0 gathers and writes)
Compute = Callable[[list, str], "np.ndarray | None"]


def precision_key(precision) -> str:
    """A trainer precision as Lightning names it (`32` -> `32-true`, `bf16` -> `bf16-mixed`); None: no trainer,
    i.e. float32 without autocast (`32-true`)."""
    if precision is None:
        return "32-true"
    p = str(precision)
    return _PRECISION_ALIASES.get(p, p)


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


def _key(digest: str, datamodule, output: str, precision: str) -> str:
    return hashlib.blake2b(json.dumps({"encoder": digest, "output": output, "audio": audio_settings(datamodule),
                                       "precision": precision}, sort_keys=True).encode(),
                           digest_size=12).hexdigest()


def stored_outputs(outputs: str | Sequence[str]) -> list[str]:
    """The outputs kept on disk for these (`auto` -> embedding, layer_stats)."""
    outputs = [outputs] if isinstance(outputs, str) else list(outputs)
    return list(dict.fromkeys(part for out in outputs for part in COMPOSED.get(out, (out,))))


def cache_files(backbone: torch.nn.Module, datamodule, outputs: str | Sequence[str], cache_dir: str | Path,
                precision=None) -> list[Path]:
    """The files that hold `outputs` of this encoder, audio pipeline and precision (they may not exist yet)."""
    digest, precision = encoder_digest(backbone), precision_key(precision)
    return [Path(cache_dir) / f"{_key(digest, datamodule, out, precision)}.npz" for out in stored_outputs(outputs)]


def _local_compute(backbone, datamodule, batch_size: int) -> Compute:
    """The clips' features on this process, on the backbone's device, without autocast (`32-true`)."""
    def compute(records: list, output: str) -> np.ndarray:
        parts = [embed_clips(backbone, batch["wavs"], output).values.numpy()
                 for batch in datamodule.utterance_loader(records, batch_size)]
        return np.concatenate(parts)
    return compute


def clip_features(backbone: torch.nn.Module, datamodule, records: Sequence[ClipRecord], outputs: str | Sequence[str],
                  cache_dir: str | Path | None, batch_size: int = 16, precision=None,
                  compute: Compute | None = None) -> dict[str, tuple[np.ndarray, dict]] | None:
    """{output: ((N, D) features of `records` in order, their description)}, read back when cached.

    precision: the trainer precision the features are computed at (part of the key; None = float32 without
    autocast, what `compute`'s default gives). compute: how missing clips are computed (default: here, through
    `datamodule.utterance_loader` and `embed_clips`); evaluate.py passes Lightning's predict loop (every device,
    the trainer's precision). When `compute` returns None (a DDP rank other than 0) nothing is written and None
    is returned, after every pass the other ranks run.
    A clip missing both the embedding and the layer statistics gets both from one pass over its audio (`auto`'s
    columns, split); one missing only one of them gets only that one."""
    backbone = backbone.eval()
    outputs = [outputs] if isinstance(outputs, str) else list(dict.fromkeys(outputs))
    stored = stored_outputs(outputs)
    precision = precision_key(precision)
    compute = compute or _local_compute(backbone, datamodule, batch_size)
    keys = [clip_key(r) for r in records]
    digest = encoder_digest(backbone) if cache_dir is not None else None
    have, paths = {}, {}
    for out in stored:
        paths[out] = Path(cache_dir) / f"{_key(digest, datamodule, out, precision)}.npz" if cache_dir is not None else None
        have[out] = {}
        if paths[out] is not None and paths[out].is_file():
            with np.load(paths[out], allow_pickle=False) as z:
                have[out] = dict(zip(z["keys"].tolist(), z["values"]))
    # clips grouped by what they miss: both parts of a composed output in one pass, anything else on its own
    groups: dict[tuple[str, ...], list[int]] = {}
    seen: set[str] = set()
    for i, k in enumerate(keys):
        missing = () if k in seen else tuple(out for out in stored if k not in have[out])
        seen.add(k)
        if missing:
            groups.setdefault(missing, []).append(i)
    passes: list[tuple[str, list[int]]] = []
    for missing, idx in groups.items():
        left = list(missing)
        for composed, parts in COMPOSED.items():
            if all(p in left for p in parts):
                passes.append((composed, idx))
                left = [o for o in left if o not in parts]
        passes.extend((out, idx) for out in left)
    computed = {out: 0 for out in stored}
    no_result = False
    dim = int(backbone.embedding_dim)
    for pass_output, idx in passes:
        values = compute([records[i] for i in idx], pass_output)
        if values is None:
            no_result = True
            continue
        split = {"embedding": values[:, :dim], "layer_stats": values[:, dim:]} if pass_output == "auto" else \
            {pass_output: values}
        for out, v in split.items():
            for i, row in zip(idx, v):
                have[out][keys[i]] = row
            computed[out] += len(idx)
    if no_result:
        return None
    for out in stored:
        if computed[out] and paths[out] is not None:
            paths[out].parent.mkdir(parents=True, exist_ok=True)
            tmp = paths[out].with_name(f"{paths[out].name}.{os.getpid()}.tmp.npz")
            np.savez(tmp, keys=np.array(list(have[out]), dtype=str),
                     values=np.stack(list(have[out].values())).astype(np.float32))
            tmp.replace(paths[out])
    n = len(seen)
    log.info("%s features of %d clips: %s (%s, %s)", "+".join(outputs), len(records),
             ", ".join(f"{out} {computed[out]} computed, {n - computed[out]} read back" for out in stored),
             precision, cache_dir or "not cached")
    result = {}
    for out in outputs:
        parts = COMPOSED.get(out, (out,))
        cols = [np.stack([have[p][k] for k in keys]) for p in parts]
        result[out] = (np.concatenate(cols, 1).astype(np.float32), describe_output(backbone, out))
    return result
