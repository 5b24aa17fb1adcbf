"""Map-style datasets over ClipRecords: random training crops and whole utterances for evaluation."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset

from datamodules.audio import crop_or_pad, load_audio, trim_silence
from datamodules.records import ClipRecord


class CropDataset(Dataset):
    """Fixed-length crops (random when training) with integer labels for the sampler's groups."""

    def __init__(self, records: Sequence[ClipRecord], labels: Sequence[int], sample_rate: int, crop_seconds: float,
                 random_crop: bool = True, trim: bool = True, normalize_loudness: bool = False,
                 augment: Callable | None = None):
        if len(records) != len(labels):
            raise ValueError(f"CropDataset: {len(records)} records but {len(labels)} labels")
        self.records, self.labels = list(records), [int(x) for x in labels]
        self.sample_rate, self.crop = sample_rate, int(round(crop_seconds * sample_rate))
        self.random_crop, self.trim, self.normalize_loudness, self.augment = random_crop, trim, normalize_loudness, augment

    def __len__(self) -> int:
        return len(self.records)

    def load(self, i: int) -> torch.Tensor:
        wav = load_audio(self.records[i].path, self.sample_rate, normalize_loudness=self.normalize_loudness)
        return trim_silence(wav, self.sample_rate) if self.trim else wav

    def __getitem__(self, i: int) -> dict:
        wav = crop_or_pad(self.load(i), self.crop, random=self.random_crop)
        if self.augment is not None:
            wav = self.augment(wav)
        return {"wav": wav, "label": self.labels[i], "index": i}


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
