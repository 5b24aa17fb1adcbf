"""`Prefix`: the frozen part of an encoder's output for a clip, the currency between the data pipeline and
the encoders (lightning_modules/backbones/base.py says what a prefix is, datamodules/frozen_prefix.py
keeps them on disk)."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Prefix:
    """The encoder's frozen prefix, computed on a whole clip: what the trainable rest reads instead of audio.

    values: (T, D) for one whole clip, (B, L, D) for a batch of crops or windows (the layers up to the cut,
        side by side: `Backbone.prefix_widths(cut)`).
    cut: the cut it was computed at (`Backbone.cuts()`).
    n_samples: the audio samples it stands for: the clip's (after trimming) or one crop's.
    """

    values: Tensor
    cut: str
    n_samples: int

    def to(self, *args, **kwargs) -> "Prefix":
        return replace(self, values=self.values.to(*args, **kwargs))

    @property
    def batched(self) -> bool:
        return self.values.dim() == 3

    def crop(self, start: int, length: int, n_samples: int) -> "Prefix":
        """Frames [start, start + length) of a whole-clip prefix, zero-padded past the stored end."""
        if self.batched:
            raise ValueError("Prefix.crop: crop a whole-clip prefix (T, D), not a batch")
        x = self.values[start: start + length]
        if x.shape[0] < length:
            x = F.pad(x, (0, 0, 0, length - x.shape[0]))
        return Prefix(x, self.cut, int(n_samples))

    @staticmethod
    def stack(items: list["Prefix"]) -> "Prefix":
        """Crops of equal length -> one batch."""
        cuts = {p.cut for p in items}
        if len(cuts) != 1:
            raise ValueError(f"Prefix.stack: crops of different cuts {sorted(cuts)}")
        return Prefix(torch.stack([p.values for p in items]), items[0].cut, int(items[0].n_samples))


def cat_batches(parts: list) -> "Tensor | Prefix":
    """Batches (waveforms, or batch `Prefix`es of one cut and crop length) joined along the batch."""
    if isinstance(parts[0], Prefix):
        return Prefix(torch.cat([p.values for p in parts]), parts[0].cut, parts[0].n_samples)
    return torch.cat(parts)


def batch_size_of(x: "Tensor | Prefix") -> int:
    return int(x.values.shape[0] if isinstance(x, Prefix) else x.shape[0])
