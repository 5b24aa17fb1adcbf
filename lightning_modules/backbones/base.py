"""The one interface every objective uses to talk to an encoder.

A backbone maps raw mono waveforms at `sample_rate` to frame features (`frames`) and to
L2-normalised utterance embeddings (`embed`). Long utterances are embedded as the mean of
overlapping fixed-length windows (`embed_utterances`), which is what evaluation and clustering
call. A new backbone implements `frames` and `embed` and sets three attributes; nothing else.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Backbone(nn.Module, ABC):
    sample_rate: int
    embedding_dim: int
    frame_dim: int
    # Window used for embedding whole utterances (seconds); subclasses may override.
    window_seconds: float = 1.6
    window_hop_seconds: float = 0.8

    @abstractmethod
    def frames(self, wav: Tensor) -> Tensor:
        """(B, S) waveform -> (B, T, D) frame features."""

    @abstractmethod
    def embed(self, wav: Tensor) -> Tensor:
        """(B, S) waveform -> (B, E) L2-normalised utterance embeddings."""

    def forward(self, wav: Tensor) -> Tensor:
        return self.embed(wav)

    # ----- whole utterances as the mean of overlapping windows -----
    def window_samples(self) -> tuple[int, int]:
        return int(round(self.window_seconds * self.sample_rate)), int(round(self.window_hop_seconds * self.sample_rate))

    def split_windows(self, wav: Tensor) -> tuple[Tensor, bool]:
        """1-D waveform -> (n_windows, window) covering the whole clip; pads (and says so) if shorter than a window."""
        win, hop = self.window_samples()
        n = wav.shape[-1]
        if n < win:
            return F.pad(wav, (0, win - n)).unsqueeze(0), True
        n_win = 1 + math.ceil(max(0, n - win) / hop)
        starts = [min(i * hop, n - win) for i in range(n_win)]  # last window flush with the end
        return torch.stack([wav[s : s + win] for s in starts]), False

    @torch.no_grad()
    def embed_utterances(self, wavs: list[Tensor], max_windows_per_batch: int = 256) -> tuple[Tensor, int]:
        """Embed variable-length 1-D clips; returns ((N, E) L2-normalised means, number of padded clips)."""
        pieces, owners, n_padded = [], [], 0
        for i, w in enumerate(wavs):
            win, padded = self.split_windows(w)
            n_padded += int(padded)
            pieces.append(win)
            owners.extend([i] * win.shape[0])
        if not pieces:
            return torch.empty(0, self.embedding_dim), 0
        windows = torch.cat(pieces)
        owner = torch.tensor(owners, device=windows.device)
        embs = torch.cat([self.embed(windows[i : i + max_windows_per_batch]) for i in range(0, len(windows), max_windows_per_batch)])
        summed = torch.zeros(len(wavs), embs.shape[1], dtype=embs.dtype, device=embs.device).index_add_(0, owner, embs)
        return F.normalize(summed, dim=1), n_padded
