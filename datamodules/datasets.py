"""Map-style datasets over ClipRecords: random training crops and whole utterances for evaluation."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import torch
from torch.utils.data import Dataset, default_collate

from datamodules.prefix import Prefix

if TYPE_CHECKING:
    from datamodules.frozen_prefix import PrefixSource

from datamodules.audio import crop_or_pad, load_audio, trim_silence
from datamodules.records import ClipRecord


class CropDataset(Dataset):
    """Fixed-length crops (random when training) with integer labels for the sampler's groups.

    Items are addressed by `index`, `(index, item_seed)` or `(index, item_seed, cluster)` (what
    `PKBatchSampler` yields): with a seed, the random crop and the augmentation draw from a generator
    seeded with it, so a clip's crop depends only on the sampler's plan, not on workers or the global
    RNG (exact resume); a cluster (the clip's intra-speaker pseudo-label) is passed through as
    `cluster`, so objectives read it from the batch, never from a datamodule a worker copied earlier.

    Each item: `wav`, `label` (the speaker class a classifier learns: a speed-perturbed copy is a new
    class), `speaker` (the clip's own speaker index, whatever the augmentation), `index`, `path`.
    With a `prefix_source` (datamodules/frozen_prefix.py) `wav` is a `Prefix`: a crop of the clip's
    frozen prefix, read from the store (no decoding) or computed from the (augmented) audio.
    """

    def __init__(self, records: Sequence[ClipRecord], labels: Sequence[int], sample_rate: int, crop_seconds: float,
                 random_crop: bool = True, trim: bool = True, normalize_loudness: bool = False,
                 augment: Callable | None = None, n_labels: int | None = None,
                 prefix_source: "PrefixSource | None" = None):
        if len(records) != len(labels):
            raise ValueError(f"CropDataset: {len(records)} records but {len(labels)} labels")
        self.records, self.labels = list(records), [int(x) for x in labels]
        self.sample_rate, self.crop = sample_rate, int(round(crop_seconds * sample_rate))
        self.random_crop, self.trim, self.normalize_loudness, self.augment = random_crop, trim, normalize_loudness, augment
        self.n_labels = n_labels if n_labels is not None else (max(self.labels) + 1 if self.labels else 0)
        self.prefix_source = prefix_source

    def __len__(self) -> int:
        return len(self.records)

    def load(self, i: int) -> torch.Tensor:
        wav = load_audio(self.records[i].path, self.sample_rate, normalize_loudness=self.normalize_loudness)
        return trim_silence(wav, self.sample_rate) if self.trim else wav

    def __getitem__(self, item: int | tuple) -> dict:
        i, seed, cluster = (tuple(item) + (None, None))[:3] if isinstance(item, tuple) else (item, None, None)
        src = self.prefix_source
        if src is not None and src.cached and self.augment is None and src.has(self.records[i]):
            out = self.transform_prefix(i, src.read(self.records[i]), seed)
        else:
            out = self.transform_loaded(i, self.load(i), seed)
        if cluster is not None:
            out["cluster"] = int(cluster)
        return out

    def transform_loaded(self, i: int, wav: torch.Tensor, seed: int | None = None) -> dict:
        """Augment, crop and label an already decoded clip (also used on audio streamed from shards)."""
        generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        speaker = label = self.labels[i]
        if self.augment is not None:
            out = self.augment(wav, generator)
            if isinstance(out, tuple):  # speed perturbation: a sped-up copy is a new speaker (WeSpeaker)
                wav, speed_index = out
                label = label + speed_index * self.n_labels
            else:
                wav = out
        if self.prefix_source is not None:
            src = self.prefix_source
            return self._item(i, src.crop(src.compute(wav), self.crop, generator, self.random_crop), label, speaker)
        return self._item(i, crop_or_pad(wav, self.crop, generator=generator, random=self.random_crop), label, speaker)

    def transform_prefix(self, i: int, prefix: Prefix, seed: int | None = None) -> dict:
        """Crop a stored whole-clip prefix (no augmentation: it would change the audio the prefix came from)."""
        generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        crop = self.prefix_source.crop(prefix, self.crop, generator, self.random_crop)
        return self._item(i, crop, self.labels[i], self.labels[i])

    def _item(self, i: int, wav, label: int, speaker: int) -> dict:
        return {"wav": wav, "label": label, "speaker": speaker, "index": i, "path": self.records[i].path}


class UtteranceDataset(Dataset):
    """Whole utterances (variable length) for validation, prediction and clustering.

    speaker_ids / emotion_ids: per-record integers carried in every item (validation batches: the
    EER and the emotion probe read them from the batch); emotion id -1 = no label.
    """

    def __init__(self, records: Sequence[ClipRecord], sample_rate: int, trim: bool = True, normalize_loudness: bool = False,
                 speaker_ids: Sequence[int] | None = None, emotion_ids: Sequence[int] | None = None,
                 prefix_source: "PrefixSource | None" = None):
        self.records, self.sample_rate, self.trim, self.normalize_loudness = list(records), sample_rate, trim, normalize_loudness
        for name, ids in (("speaker_ids", speaker_ids), ("emotion_ids", emotion_ids)):
            if ids is not None and len(ids) != len(self.records):
                raise ValueError(f"UtteranceDataset: {len(ids)} {name} for {len(self.records)} records")
        self.speaker_ids = None if speaker_ids is None else [int(x) for x in speaker_ids]
        self.emotion_ids = None if emotion_ids is None else [int(x) for x in emotion_ids]
        self.prefix_source = prefix_source

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        src = self.prefix_source
        if src is not None and src.cached and src.has(self.records[i]):
            wav = src.read(self.records[i])
        else:
            wav = load_audio(self.records[i].path, self.sample_rate, normalize_loudness=self.normalize_loudness)
            if self.trim:
                wav = trim_silence(wav, self.sample_rate)
            if src is not None:
                wav = src.compute(wav)
        item = {"wav": wav, "index": i}
        if self.speaker_ids is not None:
            item["speaker"] = self.speaker_ids[i]
        if self.emotion_ids is not None:
            item["emotion"] = self.emotion_ids[i]
        return item


def collate_utterances(items: list[dict]) -> dict:
    """Keep variable-length waveforms as a list (the backbone windows them); integer fields become tensors."""
    batch = {"wavs": [it["wav"] for it in items], "index": torch.tensor([it["index"] for it in items])}
    for key in ("speaker", "emotion"):
        if items and key in items[0]:
            batch[key] = torch.tensor([it[key] for it in items])
    return batch


def collate_crops(items: list[dict]) -> dict:
    """Training crops: waveforms or `Prefix` crops stacked into one batch, the other fields collated as usual."""
    wavs = [it["wav"] for it in items]
    batch = default_collate([{k: v for k, v in it.items() if k != "wav"} for it in items])
    batch["wav"] = Prefix.stack(wavs) if isinstance(wavs[0], Prefix) else torch.stack(wavs)
    return batch
