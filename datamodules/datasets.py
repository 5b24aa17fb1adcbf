"""Map-style datasets over ClipRecords: random training crops and whole utterances for evaluation."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset

from datamodules.audio import crop_or_pad, load_audio, trim_silence
from datamodules.records import ClipRecord


class CropDataset(Dataset):
    """Fixed-length crops (random when training) with integer labels for the sampler's groups.

    Items are addressed by `index` or by `(index, item_seed)` (what `PKBatchSampler` yields): with a
    seed, the random crop and the augmentation draw from a generator seeded with it, so a clip's crop
    depends only on the sampler's plan, not on workers or the global RNG (exact resume).
    """

    def __init__(self, records: Sequence[ClipRecord], labels: Sequence[int], sample_rate: int, crop_seconds: float,
                 random_crop: bool = True, trim: bool = True, normalize_loudness: bool = False,
                 augment: Callable | None = None, n_labels: int | None = None):
        if len(records) != len(labels):
            raise ValueError(f"CropDataset: {len(records)} records but {len(labels)} labels")
        self.records, self.labels = list(records), [int(x) for x in labels]
        self.sample_rate, self.crop = sample_rate, int(round(crop_seconds * sample_rate))
        self.random_crop, self.trim, self.normalize_loudness, self.augment = random_crop, trim, normalize_loudness, augment
        self.n_labels = n_labels if n_labels is not None else (max(self.labels) + 1 if self.labels else 0)

    def __len__(self) -> int:
        return len(self.records)

    def load(self, i: int) -> torch.Tensor:
        wav = load_audio(self.records[i].path, self.sample_rate, normalize_loudness=self.normalize_loudness)
        return trim_silence(wav, self.sample_rate) if self.trim else wav

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        i, seed = item if isinstance(item, tuple) else (item, None)
        return self.transform_loaded(i, self.load(i), seed)

    def transform_loaded(self, i: int, wav: torch.Tensor, seed: int | None = None) -> dict:
        """Augment, crop and label an already decoded clip (also used on audio streamed from shards)."""
        generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        label = self.labels[i]
        if self.augment is not None:
            out = self.augment(wav, generator)
            if isinstance(out, tuple):  # speed perturbation: a sped-up copy is a new speaker (WeSpeaker)
                wav, speed_index = out
                label = label + speed_index * self.n_labels
            else:
                wav = out
        wav = crop_or_pad(wav, self.crop, generator=generator, random=self.random_crop)
        return {"wav": wav, "label": label, "index": i}


class UtteranceDataset(Dataset):
    """Whole utterances (variable length) for validation, prediction and clustering."""

    def __init__(self, records: Sequence[ClipRecord], sample_rate: int, trim: bool = True, normalize_loudness: bool = False):
        self.records, self.sample_rate, self.trim, self.normalize_loudness = list(records), sample_rate, trim, normalize_loudness

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        wav = load_audio(self.records[i].path, self.sample_rate, normalize_loudness=self.normalize_loudness)
        if self.trim:
            wav = trim_silence(wav, self.sample_rate)
        return {"wav": wav, "index": i}


def collate_utterances(items: list[dict]) -> dict:
    """Keep variable-length waveforms as a list; the backbone windows them."""
    return {"wavs": [it["wav"] for it in items], "index": torch.tensor([it["index"] for it in items])}
