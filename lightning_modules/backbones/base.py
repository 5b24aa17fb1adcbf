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
same windows as `embed_utterances`, which is what `features=layer_stats` evaluates. Every frame of the
clip counts once: where two windows overlap, the frames come from the earlier window (the one that
gave them more left context); a window-level vector (a (B, 1, D) layer) counts once per window.

The frozen prefix. The part of an encoder that does not train (no weights, or weights with
`requires_grad=False`) is a prefix of its stages: `cuts()` names the points, bottom to top, where an
encoder can be cut, and `frozen_cut()` is the deepest cut whose prefix does not train. That prefix runs
on the WHOLE clip once (`clip_prefix(wav, cut)` -> `Prefix`, what `datamodules/frozen_prefix.py` caches
on disk); training crops and utterance windows are then slices of its output (`Prefix.crop`,
`prefix_windows`), and the rest of the encoder runs on them: `embed`, `frames` and `layers` take a
`Prefix` wherever they take a waveform. Cut here, a frozen recurrent layer (GE2E's LSTM) reads the whole
clip rather than each window; the trainable layers after it start every window afresh. Whether the
prefix was read from the cache or computed just now never changes a number (tests/test_frozen_prefix.py).
Utterance paths (`embed_utterances`, `layer_stats_utterances`, and through them validation, clustering,
evaluation and prediction) turn a waveform into the `Prefix` at `frozen_cut()` first, so a model is
scored exactly as it was trained.
"""
from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datamodules.prefix import Prefix, batch_size_of, cat_batches


def window_starts(n: int, win: int, hop: int) -> list[int]:
    """Starts of `win`-long windows every `hop` covering n positions, the last flush with the end; [0] when n <= win.

    The one windowing rule of the framework, in samples (waveforms) or frames (a `Prefix`)."""
    if n <= win:
        return [0]
    n_win = 1 + math.ceil((n - win) / hop)
    return [min(i * hop, n - win) for i in range(n_win)]


def owned_spans(starts: list[int], win: int, valid: int) -> list[tuple[float, float]]:
    """Per window, the fraction [a, b) of it whose positions no earlier window covered, cut at `valid`
    (positions past the clip's end are padding): each position of the clip belongs to exactly one window."""
    spans, covered = [], 0
    for s in starts:
        lo, hi = max(s, covered), min(s + win, valid)
        spans.append(((lo - s) / win, (max(lo, hi) - s) / win))
        covered = max(covered, s + win)
    return spans


class Backbone(nn.Module, ABC):
    sample_rate: int
    embedding_dim: int
    frame_dim: int
    # Window used for embedding whole utterances (seconds); subclasses may override.
    window_seconds: float = 1.6
    window_hop_seconds: float = 0.8

    @abstractmethod
    def frames(self, wav: Tensor | Prefix) -> Tensor:
        """(B, S) waveform (or a batch `Prefix`) -> (B, T, D) frame features."""

    @abstractmethod
    def embed(self, wav: Tensor | Prefix) -> Tensor:
        """(B, S) waveform (or a batch `Prefix`) -> (B, E) L2-normalised utterance embeddings."""

    def forward(self, wav: Tensor | Prefix) -> Tensor:
        return self.embed(wav)

    # ----- every layer's hidden states -----
    def layers(self, wav: Tensor | Prefix) -> list[Tensor]:
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

    # ----- the frozen prefix (module docstring) -----
    def cuts(self) -> list[str]:
        """Points where the encoder can be cut into a whole-clip prefix and the rest, bottom to top."""
        return []

    def cut_parameters(self, cut: str) -> list[str]:
        """Names of the parameters of the stages up to and including `cut`."""
        raise ValueError(f"{type(self).__name__} has no cut {cut!r} (cuts: {self.cuts()})")

    def frozen_cut(self) -> str | None:
        """The deepest cut whose prefix does not train (no parameter of it requires a gradient), or None."""
        requires = {n: p.requires_grad for n, p in self.named_parameters()}
        best = None
        for cut in self.cuts():
            if any(requires[n] for n in self.cut_parameters(cut)):
                break
            best = cut
        return best

    def clip_prefix(self, wav: Tensor, cut: str) -> Prefix:
        """1-D whole clip -> its `Prefix` at `cut` (no gradient)."""
        raise ValueError(f"{type(self).__name__} has no cut {cut!r} (cuts: {self.cuts()})")

    def prefix_frames(self, n_samples: int, cut: str) -> int:
        """Frames of a prefix of n_samples of audio (a training crop's length)."""
        raise ValueError(f"{type(self).__name__} has no cut {cut!r} (cuts: {self.cuts()})")

    def prefix_hop(self, cut: str) -> int:
        """Audio samples per frame of a prefix at `cut`."""
        raise ValueError(f"{type(self).__name__} has no cut {cut!r} (cuts: {self.cuts()})")

    def prefix_widths(self, cut: str) -> list[int]:
        """Columns of each layer stored side by side in a `Prefix` at `cut`."""
        raise ValueError(f"{type(self).__name__} has no cut {cut!r} (cuts: {self.cuts()})")

    def prefix_windows(self, prefix: Prefix) -> tuple[list[int], int, int]:
        """(window starts, window length, frames of real audio) of a whole-clip prefix, in frames: the
        utterance windows (`window_seconds` every `window_hop_seconds`) of `window_starts`."""
        win = self.prefix_frames(self.window_samples()[0], prefix.cut)
        hop = max(1, self.window_samples()[1] // self.prefix_hop(prefix.cut))
        valid = min(self.prefix_frames(prefix.n_samples, prefix.cut), prefix.values.shape[0])
        return window_starts(valid, win, hop), win, valid

    def prefix_fingerprint(self, cut: str) -> str:
        """Digest of what a prefix at `cut` depends on: the class, the prefix's weights and the settings
        that shape it (a cache key: a trained or different prefix never reads another's frames)."""
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{type(self).__module__}.{type(self).__qualname__}:{cut}".encode())
        h.update(repr(sorted(self.prefix_config().items())).encode())
        params = dict(self.named_parameters())
        for name in sorted(self.cut_parameters(cut)):
            h.update(name.encode())
            h.update(params[name].detach().cpu().contiguous().float().numpy().tobytes())
        return h.hexdigest()

    def prefix_config(self) -> dict:
        """Constructor settings a prefix depends on (subclasses list theirs)."""
        return {"sample_rate": self.sample_rate}

    def input_of(self, wav: Tensor | Prefix) -> Tensor | Prefix:
        """A whole clip as the utterance paths read it: the `Prefix` at `frozen_cut()` (computed now when a
        waveform is given), or the waveform itself for an encoder that has no frozen prefix."""
        if isinstance(wav, Prefix):
            return wav
        cut = self.frozen_cut()
        return self.clip_prefix(wav, cut) if cut is not None else wav.reshape(-1)

    # ----- whole utterances as windows -----
    def window_samples(self) -> tuple[int, int]:
        return int(round(self.window_seconds * self.sample_rate)), int(round(self.window_hop_seconds * self.sample_rate))

    def split_windows(self, wav: Tensor) -> tuple[Tensor, bool]:
        """1-D waveform -> (n_windows, window) covering the whole clip; pads (and says so) if shorter than a window."""
        win, hop = self.window_samples()
        n = wav.shape[-1]
        if n < win:
            return F.pad(wav, (0, win - n)).unsqueeze(0), True
        return torch.stack([wav[s : s + win] for s in window_starts(n, win, hop)]), False

    def clip_windows(self, clip: Tensor | Prefix) -> tuple[Tensor | Prefix, list[tuple[float, float]], bool]:
        """One whole clip -> (its utterance windows as one batch, the span of each window that is its own,
        padded). A waveform is cut by `split_windows`, a whole-clip `Prefix` by `prefix_windows`."""
        x = self.input_of(clip)
        if isinstance(x, Prefix):
            starts, win, valid = self.prefix_windows(x)
            window_samples = self.window_samples()[0]
            crops = [x.crop(s, win, window_samples) for s in starts]
            return Prefix.stack(crops), owned_spans(starts, win, valid), valid < win
        win, hop = self.window_samples()
        windows, padded = self.split_windows(x)
        n = x.shape[-1]
        starts = [0] if padded else window_starts(n, win, hop)
        return windows, owned_spans(starts, win, n), padded

    def _window_batches(self, clips: list[Tensor | Prefix], max_windows_per_batch: int):
        """Every clip's windows, in batches: yields (windows, [(clip index, owned span) per row])."""
        pending, owners, total = [], [], 0
        for i, c in enumerate(clips):
            windows, spans, padded = self.clip_windows(c)
            pending.append(windows)
            owners.extend((i, span, padded) for span in spans)
            total += batch_size_of(windows)
            if total >= max_windows_per_batch:
                yield cat_batches(pending), owners
                pending, owners, total = [], [], 0
        if pending:
            yield cat_batches(pending), owners

    @torch.no_grad()
    def embed_utterances(self, wavs: list[Tensor | Prefix], max_windows_per_batch: int = 256) -> tuple[Tensor, int]:
        """Embed variable-length clips; returns ((N, E) L2-normalised means over windows, number of padded clips)."""
        if not wavs:
            return torch.empty(0, self.embedding_dim), 0
        summed, padded = None, set()
        for windows, owners in self._window_batches(list(wavs), max_windows_per_batch):
            embs = self.embed(windows)
            if summed is None:
                summed = torch.zeros(len(wavs), embs.shape[1], dtype=embs.dtype, device=embs.device)
            owner = torch.tensor([o[0] for o in owners], device=embs.device)
            summed.index_add_(0, owner, embs)
            padded.update(o[0] for o in owners if o[2])
        return F.normalize(summed, dim=1), len(padded)

    @torch.no_grad()
    def layer_stats_utterances(self, wavs: list[Tensor | Prefix], max_windows_per_batch: int = 256) -> tuple[Tensor, int]:
        """Per clip and layer, mean then std (population) over the clip's frames, each frame counted once.

        Returns ((N, sum_l 2 D_l) statistics in layer order [mean_1, std_1, mean_2, ...], number of clips
        shorter than one window). Windows are those of `embed_utterances`; padding past a clip's end is left
        out, and where windows overlap each frame is taken from the first window that has it.
        """
        per_clip: list[list[list[Tensor]]] = [[] for _ in wavs]  # clip -> window -> layers (frames, D_l)
        clips = [self.input_of(w) for w in wavs]
        win = self.window_samples()[0]
        # a waveform shorter than one window runs as it is, unpadded: padding never enters its statistics
        short = {i for i, c in enumerate(clips) if not isinstance(c, Prefix) and c.shape[-1] < win}
        for i in short:
            per_clip[i].append([o[0] for o in self.layers(clips[i].reshape(1, -1))])
        rest = [i for i in range(len(clips)) if i not in short]
        for windows, owners in self._window_batches([clips[i] for i in rest], max_windows_per_batch):
            outs = self.layers(windows)
            for r, (j, span, padded) in enumerate(owners):
                per_clip[rest[j]].append([owned_frames(o[r], span) for o in outs])
                if padded:
                    short.add(rest[j])
        return pool_layer_stats(per_clip), len(short)


def owned_frames(layer: Tensor, span: tuple[float, float]) -> Tensor:
    """The frames of one window's (T_l, D_l) layer output inside its own span; a one-frame (window-level)
    layer is kept whole."""
    t = layer.shape[0]
    if t == 1:
        return layer
    lo, hi = int(round(span[0] * t)), int(round(span[1] * t))
    return layer[lo:hi]


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
            if not len(frames):
                raise ValueError("pool_layer_stats: a layer without any frame in a clip")
            std, mean = torch.std_mean(frames, dim=0, correction=0)
            parts += [mean, std]
        rows.append(torch.cat(parts).float())
    return torch.stack(rows)
