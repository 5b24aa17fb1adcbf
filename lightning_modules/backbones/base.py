"""The one interface every objective uses to talk to an encoder.

A backbone maps raw mono waveforms at `sample_rate` to frame features (`frames`) and to
L2-normalised utterance embeddings (`embed`). Long utterances are embedded as the mean of
overlapping fixed-length windows (`embed_utterances`), which is what evaluation and clustering
call. A new backbone implements `frames` and `embed` and sets three attributes; nothing else.

Layer features. `layers(wav)` returns the hidden states of every layer, bottom to top, as a list of
(B, T_l, D_l) tensors: each layer keeps its own time resolution T_l, and an utterance-level vector
(e.g. DeepTalk's style embedding) is (B, 1, D). `layer_names()` names them in the same order. They
carry gradients (fine-tuning pools them). The default, for a backbone that does not expose its
layers, is `[frames(wav)]` named "frames"; every backbone of the framework overrides it:

    ge2e             mel (the LSTM's input, power mel), lstm1, lstm2, lstm3
    deeptalk         filterbank, ref_conv1 .. ref_conv6, gru, style (B, 1, 256)
    data2vec_cnn     conv1 .. conv7
    context_encoder  block1 .. blockN (frame positions; the extra tokens left out)

`layer_stats_utterances` pools them per whole clip (mean and std over time of every layer) with the
same windows as `embed_utterances`, which is what `features=layer_stats` evaluates.
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

    # ----- every layer's hidden states -----
    def layers(self, wav: Tensor) -> list[Tensor]:
        """(B, S) waveform -> hidden states of every layer, bottom to top: [(B, T_l, D_l), ...]."""
        return [self.frames(wav)]

    def layer_names(self) -> list[str]:
        """Names of `layers(wav)`, in order (features_layers=[...] selects by these or by index)."""
        return ["frames"]

    @torch.no_grad()
    def layer_dims(self) -> list[int]:
        """D_l of every layer, read from one window of silence (eval mode, no gradient)."""
        was_training = self.training
        self.eval()
        try:
            device = next((p.device for p in self.parameters()), torch.device("cpu"))
            outs = self.layers(torch.zeros(1, self.window_samples()[0], device=device))
        finally:
            self.train(was_training)
        return [int(o.shape[-1]) for o in outs]

    @torch.no_grad()
    def layer_stats_utterances(self, wavs: list[Tensor], max_windows_per_batch: int = 256) -> tuple[Tensor, int]:
        """Per clip and layer, mean then std (population) over the frames of all the clip's windows.

        Returns ((N, sum_l 2 D_l) statistics in layer order [mean_1, std_1, mean_2, ...], number of clips
        shorter than one window). The windows are `embed_utterances`' (`split_windows`), except that a clip
        shorter than one window is run as it is, not zero-padded, so padding never enters its statistics.
        """
        full, owners, short = [], [], []
        for i, w in enumerate(wavs):
            w = w.reshape(-1)
            if w.shape[0] < self.window_samples()[0]:
                short.append(i)
                continue
            win = self.split_windows(w)[0]
            full.append(win)
            owners.extend([i] * win.shape[0])
        per_clip: list[list[list[Tensor]]] = [[] for _ in wavs]  # clip -> window -> layers (T_l, D_l)
        if full:
            windows = torch.cat(full)
            for j in range(0, len(windows), max_windows_per_batch):
                outs = self.layers(windows[j : j + max_windows_per_batch])
                for r in range(outs[0].shape[0]):
                    per_clip[owners[j + r]].append([o[r] for o in outs])
        for i in short:
            per_clip[i].append([o[0] for o in self.layers(wavs[i].reshape(1, -1))])
        return pool_layer_stats(per_clip), len(short)

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


def pool_layer_stats(per_clip: list[list[list[Tensor]]]) -> Tensor:
    """clip -> windows -> layers of (T_l, D_l) -> (N, sum_l 2 D_l): per layer [mean, std] over all frames
    of all windows (std with correction 0, so a single frame, e.g. an utterance vector, gives 0)."""
    rows = []
    for windows in per_clip:
        if not windows:
            raise ValueError("pool_layer_stats: a clip without any window")
        parts = []
        for layer in zip(*windows):
            frames = torch.cat([f.reshape(-1, f.shape[-1]) for f in layer]).double()
            std, mean = torch.std_mean(frames, dim=0, correction=0)
            parts += [mean, std]
        rows.append(torch.cat(parts).float())
    return torch.stack(rows)
