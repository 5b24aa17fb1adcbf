"""The frozen prefix of the encoder, computed once per clip and kept on disk: what training reads instead of audio.

The part of an encoder that does not train in a run (GE2E's mel and frozen LSTM layers, DeepTalk's frozen
filterbank, the distillation student's frozen front end: `Backbone.frozen_cut()`) gives the same output
for a clip at every step, epoch, fold and repeat. `PrefixStore` computes it once per clip on the whole
clip (`Backbone.clip_prefix`) and keeps it in float32 memory-mapped shards, so a corpus larger than memory
works and loader workers share the pages. Training crops are random slices of it (`PrefixSource.crop`),
so cropping stays an augmentation; validation, clustering and scoring read whole-clip prefixes.

A store is one folder per key: the prefix's fingerprint (class, cut, the prefix's weights, the settings
that shape it: `Backbone.prefix_fingerprint`) and the audio pipeline (rate, trimming, loudness). Inside,
a clip is addressed by its file (path, size, modification time): a changed file is computed again, and
a fold that meets clips the store lacks adds them (one new shard, under a file lock, so parallel runs and
DDP ranks build each clip once). Nothing in it is pickled.

`PrefixSource` is what datasets read: `CachedPrefixes` (the store) or `ComputedPrefixes` (the backbone's
frozen part run on the decoded clip every time: `callbacks.frozen_prefix.enabled=false`, and the path a
waveform augmentation takes, since it changes the audio). Both give the same numbers.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from datamodules.records import ClipRecord
from datamodules.prefix import Prefix


log = logging.getLogger(__name__)

STORE_VERSION = 1


def clip_key(record: ClipRecord) -> str:
    """A clip's identity in a store: its audio file (absolute path, size, mtime) and its utt_id."""
    from datamodules.audio import resolve_audio_path

    path = resolve_audio_path(record.path)
    try:
        st = os.stat(path)
        stamp = f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:  # e.g. a member of a shard: only its name
        stamp = "?"
    return f"{Path(path).resolve()}|{stamp}|{record.utt_id}"


def store_key(backbone: Backbone, cut: str, audio: dict) -> str:
    h = hashlib.blake2b(digest_size=12)
    h.update(json.dumps({"version": STORE_VERSION, "prefix": backbone.prefix_fingerprint(cut), "cut": cut,
                         "audio": audio}, sort_keys=True).encode())
    return h.hexdigest()


class PrefixStore:
    """Whole-clip prefixes of one (backbone prefix, audio pipeline) key, in float32 shards on disk."""

    def __init__(self, directory: str | Path, width: int, cut: str):
        self.dir = Path(directory)
        self.width, self.cut = int(width), str(cut)
        self.index: dict[str, tuple[int, int, int, int]] = {}  # key -> (shard, offset frame, frames, n_samples)
        self._maps: dict[int, np.memmap] = {}
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "meta.json"
        if meta.is_file():
            m = json.loads(meta.read_text())
            if int(m["width"]) != self.width or m["cut"] != self.cut:
                raise ValueError(f"{self.dir}: a store of width {m['width']} at cut {m['cut']!r}, expected "
                                 f"{self.width} at {self.cut!r}; delete the folder")
        else:
            meta.write_text(json.dumps({"width": self.width, "cut": self.cut, "version": STORE_VERSION}))
        self.reload()

    @classmethod
    def for_backbone(cls, root: str | Path, backbone: Backbone, cut: str, audio: dict) -> "PrefixStore":
        store = cls(Path(root) / store_key(backbone, cut, audio), sum(backbone.prefix_widths(cut)), cut)
        info = store.dir / "info.json"
        if not info.is_file():  # for people looking at the folder
            info.write_text(json.dumps({"backbone": f"{type(backbone).__module__}.{type(backbone).__qualname__}",
                                        "cut": cut, "widths": backbone.prefix_widths(cut), "audio": audio,
                                        "prefix_config": backbone.prefix_config()}, indent=2, default=str))
        return store

    def reload(self) -> None:
        path = self.dir / "index.jsonl"
        if not path.is_file():
            return
        with open(path) as f:
            for line in f:
                if line.strip():
                    e = json.loads(line)
                    self.index[e["key"]] = (int(e["shard"]), int(e["offset"]), int(e["frames"]), int(e["n_samples"]))

    def missing(self, records: Sequence[ClipRecord]) -> list[ClipRecord]:
        return [r for r in records if clip_key(r) not in self.index]

    def __contains__(self, record: ClipRecord) -> bool:
        return clip_key(record) in self.index

    @property
    def n_clips(self) -> int:
        return len(self.index)

    def add(self, records: Sequence[ClipRecord], compute: Callable[[Sequence[ClipRecord]], Iterator],
            progress: bool = True) -> int:
        """Compute and store the clips of `records` the store lacks; returns how many were added.

        `compute(records)` yields (record, Prefix) pairs. Under a file lock: a second process waits, then
        finds the clips there and computes nothing."""
        from filelock import FileLock

        with FileLock(str(self.dir / ".lock")):
            self.reload()
            todo = self.missing(records)
            if not todo:
                return 0
            shard = 1 + max((s for s, *_ in self.index.values()), default=-1)
            path = self.dir / f"shard-{shard:05d}.f32"
            entries, offset = [], 0
            from tqdm.auto import tqdm

            with open(path, "wb") as f, tqdm(total=len(todo), desc=f"frozen prefix ({self.cut}) -> {self.dir.name}",
                                             unit="clip", disable=not progress, leave=False) as bar:
                for record, prefix in compute(todo):
                    v = prefix.values.detach().to("cpu", torch.float32).contiguous().numpy()
                    if v.ndim != 2 or v.shape[1] != self.width:
                        raise ValueError(f"{record.path}: prefix of shape {v.shape}, expected (frames, {self.width})")
                    f.write(v.tobytes())
                    entries.append({"key": clip_key(record), "shard": shard, "offset": offset, "frames": int(v.shape[0]),
                                    "n_samples": int(prefix.n_samples)})
                    offset += int(v.shape[0])
                    bar.update(1)
            with open(self.dir / "index.jsonl", "a") as f:  # written last: a crash leaves no index entry
                for e in entries:
                    f.write(json.dumps(e) + "\n")
            self.reload()
            return len(entries)

    def _map(self, shard: int) -> np.memmap:
        m = self._maps.get(shard)
        if m is None:
            path = self.dir / f"shard-{shard:05d}.f32"
            m = np.memmap(path, dtype=np.float32, mode="r").reshape(-1, self.width)
            self._maps[shard] = m
        return m

    def read(self, record: ClipRecord) -> Prefix:
        key = clip_key(record)
        if key not in self.index:
            raise KeyError(f"{record.path}: not in the frozen-prefix store {self.dir} (built for other clips?)")
        shard, offset, frames, n_samples = self.index[key]
        values = torch.from_numpy(np.array(self._map(shard)[offset: offset + frames]))
        return Prefix(values, self.cut, n_samples)

    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in self.dir.glob("shard-*.f32"))

    def __getstate__(self):  # loader workers reopen the memory maps themselves
        state = dict(self.__dict__)
        state["_maps"] = {}
        return state


class PrefixSource:
    """What a dataset asks for: a clip's whole-clip prefix, and a crop of it."""

    def __init__(self, backbone: Backbone, cut: str):
        self.cut = cut
        self._frames = {}  # n_samples -> frames (crop lengths, a handful of values)
        self.backbone = copy.deepcopy(backbone).cpu().eval()  # the frozen part, on the CPU, for loader workers
        self.backbone.requires_grad_(False)

    cached = False

    def frames(self, n_samples: int) -> int:
        n = int(n_samples)
        if n not in self._frames:
            self._frames[n] = int(self.backbone.prefix_frames(n, self.cut))
        return self._frames[n]

    @torch.no_grad()
    def compute(self, wav: Tensor) -> Prefix:
        return self.backbone.clip_prefix(wav, self.cut)

    def read(self, record: ClipRecord) -> Prefix:
        raise NotImplementedError

    def crop(self, prefix: Prefix, crop_samples: int, generator: torch.Generator | None = None,
             random: bool = True) -> Prefix:
        """A training crop of `crop_samples` of audio: a random (train) or centred slice of the whole-clip
        prefix inside the clip's audio; a clip shorter than the crop is padded (as `crop_or_pad` pads audio)."""
        length = self.frames(crop_samples)
        valid = min(self.frames(prefix.n_samples), prefix.values.shape[0])
        if valid <= length:
            start = 0
        elif random:
            start = int(torch.randint(0, valid - length + 1, (1,), generator=generator))
        else:
            start = (valid - length) // 2
        return prefix.crop(start, length, crop_samples)


class ComputedPrefixes(PrefixSource):
    """The frozen part run on every decoded clip (no store)."""


class CachedPrefixes(PrefixSource):
    """Prefixes read from a `PrefixStore` (a clip it lacks is decoded and computed, like `ComputedPrefixes`)."""

    cached = True

    def __init__(self, backbone: Backbone, cut: str, store: PrefixStore):
        super().__init__(backbone, cut)
        self.store = store

    def has(self, record: ClipRecord) -> bool:
        return record in self.store

    def read(self, record: ClipRecord) -> Prefix:
        return self.store.read(record)


def compute_prefixes(backbone: "Backbone", cut: str, device: torch.device | str = "cpu"):
    """A (record, waveform) pairs -> (record, Prefix) generator for `PrefixStore.add`: the frozen part, on `device`."""
    worker = copy.deepcopy(backbone).to(device).eval()
    worker.requires_grad_(False)

    def run(pairs):
        for r, wav in pairs:
            with torch.no_grad():
                yield r, worker.clip_prefix(wav.to(device), cut)

    return run


def audio_settings(datamodule) -> dict:
    """The audio pipeline a prefix depends on (part of the store key)."""
    h = datamodule.hparams
    return {"sample_rate": int(h.sample_rate), "trim_silence": bool(h.trim_silence),
            "normalize_loudness": bool(h.normalize_loudness)}
