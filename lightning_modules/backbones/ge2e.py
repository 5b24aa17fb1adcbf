"""Pretrained GE2E speaker encoder (Resemblyzer's weights) re-hosted in our own modules.

Resemblyzer ships a real 3-layer LSTM speaker encoder trained with the GE2E loss. We reproduce
its exact pipeline without librosa at run time: volume normalisation to -30 dBFS (increase
only), a 40-band power mel spectrogram (25 ms Hann window, 10 ms hop, centred, zero padding,
Slaney mel scale and norm as librosa's defaults), the LSTM, ReLU(linear(last hidden state)) and
L2 normalisation. Whole utterances are embedded like `VoiceEncoder.embed_utterance`: 160-frame
partials every `round(16000 / rate / 160)` frames, the mel computed once over the (zero-padded)
whole utterance and then sliced, the last partial kept when it is at least `min_coverage` full.

`embed(wav)` treats each row of (B, S) as one partial (volume-normalised on its own);
`embed_utterances` normalises each whole utterance first, as Resemblyzer does. `frames(wav)` returns
the top LSTM layer's per-frame outputs (B, 1 + S // 160, 256) for frame-level objectives.
`layers(wav)` returns [mel (B, T, 40), lstm1, lstm2, lstm3 (B, T, 256)]: the LSTM's input (the power
mel, as Resemblyzer feeds it) and each of its three layers' outputs (run one layer at a time with the
same weights, so `layers(wav)[-1]` is `frames(wav)`). Layer statistics of whole utterances
(`layer_stats_utterances`) use the partials of `embed_utterances`; frames past the end of the clip
(the zero padding of its last partial) are left out of them.
Weights are read with `torch.load(weights_only=True)` from the installed wheel (its optimiser
state is ignored), or from `weights_path`; nothing is downloaded.

Given the same preprocessed waveform, `embed_utterances` matches
`VoiceEncoder.embed_utterance(preprocess_wav(...))` to cosine > 0.9999 (see the tests and
BENCHMARKS.md). Resemblyzer's webrtcvad silence trimming is not part of the module by default;
`vad_trim=True` applies Resemblyzer's own `trim_long_silences` to whole utterances (needs the
resemblyzer package at run time).
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from torch import Tensor, nn

from datamodules.prefix import Prefix
from lightning_modules.backbones.base import Backbone

_INT16_MAX = 2**15 - 1


def resemblyzer_weights_path() -> Path:
    """Location of the weights shipped inside the installed resemblyzer wheel (no network)."""
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "backbone=ge2e with pretrained=true needs Resemblyzer's weights: `pip install resemblyzer` "
            "(the wheel ships pretrained.pt) or set backbone.weights_path to a copy of pretrained.pt.")
    return Path(next(iter(spec.submodule_search_locations))) / "pretrained.pt"


def normalize_volume(wav: Tensor, target_dbfs: float = -30.0) -> Tensor:
    """Resemblyzer's `normalize_volume(..., increase_only=True)` on each row of (B, S); silent rows untouched."""
    rms = (wav.double() * _INT16_MAX).pow(2).mean(dim=-1, keepdim=True).sqrt()
    dbfs = 20 * torch.log10(rms / _INT16_MAX)
    gain = torch.where(rms > 0, torch.pow(10.0, (target_dbfs - dbfs) / 20).clamp_min(1.0), torch.ones_like(rms))
    return wav * gain.to(wav.dtype)


class GE2EBackbone(Backbone):
    sample_rate = 16000
    embedding_dim = 256
    frame_dim = 256

    def __init__(
        self,
        sample_rate: int = 16000,
        pretrained: bool = True,
        weights_path: str | None = None,
        normalize_volume: bool = True,
        target_dbfs: float = -30.0,
        vad_trim: bool = False,
        window_seconds: float = 1.6,
        window_hop_seconds: float = 0.77,
        min_coverage: float = 0.75,
        n_mels: int = 40,
        hidden_size: int = 256,
        num_layers: int = 3,
        mel_window_ms: float = 25.0,
        mel_hop_ms: float = 10.0,
    ):
        super().__init__()
        if sample_rate != self.sample_rate:
            raise ValueError(f"backbone.sample_rate={sample_rate}: the pretrained GE2E encoder works at 16000 Hz only "
                             "(the datamodule resamples to the backbone's rate)")
        if not 0 < min_coverage <= 1:
            raise ValueError(f"backbone.min_coverage must be in (0, 1], got {min_coverage}")
        self.do_normalize_volume = normalize_volume
        self.target_dbfs = target_dbfs
        self.vad_trim = vad_trim
        self.min_coverage = min_coverage
        self.n_fft = int(self.sample_rate * mel_window_ms / 1000)
        self.hop = int(self.sample_rate * mel_hop_ms / 1000)
        # Window lengths are whole mel frames, as in Resemblyzer (160 frames = 1.6 s; hop 77 = rate 1.3/s).
        self.partial_frames = round(window_seconds * self.sample_rate / self.hop)
        self.partial_hop_frames = round(window_hop_seconds * self.sample_rate / self.hop)
        if not 0 < self.partial_hop_frames <= self.partial_frames:
            raise ValueError(f"backbone.window_hop_seconds={window_hop_seconds} must be in (0, window_seconds={window_seconds}]")
        self.window_seconds = self.partial_frames * self.hop / self.sample_rate
        self.window_hop_seconds = self.partial_hop_frames * self.hop / self.sample_rate

        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        fbank = AF.melscale_fbanks(self.n_fft // 2 + 1, 0.0, self.sample_rate / 2, n_mels, self.sample_rate,
                                   norm="slaney", mel_scale="slaney")
        self.register_buffer("mel_fbank", fbank, persistent=False)  # (n_freqs, n_mels)

        self.lstm = nn.LSTM(n_mels, hidden_size, num_layers, batch_first=True)
        self.linear = nn.Linear(hidden_size, self.embedding_dim)
        if pretrained:
            self.load_resemblyzer_weights(weights_path)

    # ----- weights -----
    def load_resemblyzer_weights(self, weights_path: str | None = None) -> None:
        path = Path(weights_path) if weights_path else resemblyzer_weights_path()
        if not path.is_file():
            raise FileNotFoundError(f"GE2E weights not found at {path} (backbone.weights_path); expected Resemblyzer's pretrained.pt")
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        state = checkpoint.get("model_state", checkpoint) if isinstance(checkpoint, dict) else None
        if not isinstance(state, dict):
            raise TypeError(f"{path}: expected a dict with 'model_state' (Resemblyzer format), got {type(checkpoint).__name__}")
        ours = {k: v for k, v in state.items() if k.startswith(("lstm.", "linear."))}
        missing, unexpected = self.load_state_dict(ours, strict=False)
        missing = [k for k in missing if k.startswith(("lstm.", "linear."))]
        if missing or unexpected:
            raise ValueError(f"{path}: weights do not fit the GE2E encoder: missing {missing}, unexpected {unexpected}")

    # ----- front end -----
    def _prepare(self, wav: Tensor) -> Tensor:
        if wav.dim() != 2:
            raise ValueError(f"expected a (batch, samples) waveform, got shape {tuple(wav.shape)}")
        wav = wav.float()
        return normalize_volume(wav, self.target_dbfs) if self.do_normalize_volume else wav

    def mel(self, wav: Tensor) -> Tensor:
        """(B, S) -> (B, T, n_mels) power mel spectrogram, T = 1 + S // hop (librosa's centred framing)."""
        with torch.autocast(wav.device.type, enabled=False):
            spec = torch.stft(wav.float(), self.n_fft, self.hop, window=self.window, center=True,
                              pad_mode="constant", return_complex=True)
            power = spec.real.square() + spec.imag.square()  # (B, F, T)
            return torch.matmul(power.transpose(1, 2), self.mel_fbank)

    def _lstm(self, mels: Tensor) -> tuple[Tensor, Tensor]:
        # LSTMs are not autocast ops on CPU: run them in float32 so bf16 autocast callers still work.
        with torch.autocast(mels.device.type, enabled=False):
            out, (hidden, _) = self.lstm(mels.float())
        return out, hidden[-1]

    def _run_layers(self, x: Tensor, first: int, last: int) -> list[Tensor]:
        """Outputs of LSTM layers first+1 .. last (1-based) on (B, T, D) input, each from a zero state,
        one layer at a time with the stacked LSTM's own weights."""
        outs = []
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            h0 = x.new_zeros(1, x.shape[0], self.lstm.hidden_size)
            for k in range(first, last):
                params = [getattr(self.lstm, f"{name}_l{k}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
                x = torch.lstm(x, (h0, h0), params, True, 1, 0.0, self.training, False, True)[0]
                outs.append(x)
        return outs

    def _layers_from_mel(self, mels: Tensor) -> list[Tensor]:
        """[mel, output of LSTM layer 1, 2, 3]: the stacked LSTM run one layer at a time (same weights)."""
        return [mels, *self._run_layers(mels, 0, self.lstm.num_layers)]

    def _head(self, last_hidden: Tensor) -> Tensor:
        return F.normalize(F.relu(self.linear(last_hidden)).float(), dim=1)

    # ----- the frozen prefix: mel (no weights), then each LSTM layer, over the whole clip -----
    def cuts(self) -> list[str]:
        return ["mel", *(f"lstm{k + 1}" for k in range(self.lstm.num_layers))]

    def _depth(self, cut: str) -> int:
        cuts = self.cuts()
        if cut not in cuts:
            raise ValueError(f"GE2E has no cut {cut!r} (cuts: {cuts})")
        return cuts.index(cut)

    def cut_parameters(self, cut: str) -> list[str]:
        return [f"lstm.{name}_l{k}" for k in range(self._depth(cut))
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]

    def prefix_config(self) -> dict:
        return {"sample_rate": self.sample_rate, "normalize_volume": self.do_normalize_volume,
                "target_dbfs": self.target_dbfs, "vad_trim": self.vad_trim, "min_coverage": self.min_coverage,
                "n_fft": self.n_fft, "hop": self.hop, "n_mels": self.mel_fbank.shape[1],
                "partial_frames": self.partial_frames, "partial_hop_frames": self.partial_hop_frames}

    def prefix_widths(self, cut: str) -> list[int]:
        return [self.mel_fbank.shape[1], *([self.lstm.hidden_size] * self._depth(cut))]

    def prefix_frames(self, n_samples: int, cut: str) -> int:
        return 1 + int(n_samples) // self.hop

    def prefix_hop(self, cut: str) -> int:
        return self.hop

    def num_frames(self, n_samples: int) -> int:
        """Frames of `frames(wav)` for n samples (librosa's centred framing)."""
        return 1 + int(n_samples) // self.hop

    @torch.no_grad()
    def clip_prefix(self, wav: Tensor, cut: str) -> Prefix:
        """Resemblyzer's preparation of one whole utterance (volume normalised as a whole, optionally VAD
        trimmed, zero-padded to cover its last partial, mel computed once), then the LSTM layers up to `cut`
        over the whole clip: values (T, 40 + 256 k), n_samples the clip's length after trimming."""
        depth = self._depth(cut)
        w = wav.reshape(-1).float()
        if self.do_normalize_volume:
            w = normalize_volume(w.unsqueeze(0), self.target_dbfs)[0]
        if self.vad_trim:
            w = self._trim_silences(w)
        n = w.shape[0]
        starts = self.partial_slices(n)
        stop = (starts[-1] + self.partial_frames) * self.hop
        mel = self.mel(F.pad(w, (0, max(0, stop - n))).unsqueeze(0))
        layers = [mel, *self._run_layers(mel, 0, depth)]
        return Prefix(torch.cat(layers, -1)[0], cut, n)

    def prefix_windows(self, prefix: Prefix) -> tuple[list[int], int, int]:
        """Resemblyzer's partials (`partial_slices`), in mel frames."""
        return self.partial_slices(prefix.n_samples), self.partial_frames, 1 + prefix.n_samples // self.hop

    def _input_layers(self, x: Tensor | Prefix) -> list[Tensor]:
        """The layers a batch already has: [mel] of a (B, S) waveform (each row volume-normalised on its own),
        or the layers a batch `Prefix` carries."""
        if isinstance(x, Prefix):
            if not x.batched:
                raise ValueError("GE2E: expected a batch Prefix (B, T, D); embed whole clips with embed_utterances")
            return list(x.values.split(self.prefix_widths(x.cut), dim=-1))
        return [self.mel(self._prepare(x))]

    # ----- Backbone API -----
    def frames(self, wav: Tensor | Prefix) -> Tensor:
        """(B, S) -> (B, 1 + S // 160, 256) per-frame LSTM outputs (top layer)."""
        return self.layers(wav)[-1] if isinstance(wav, Prefix) else self._lstm(self.mel(self._prepare(wav)))[0]

    def layers(self, wav: Tensor | Prefix) -> list[Tensor]:
        """(B, S) -> [mel (B, T, 40), lstm1, lstm2, lstm3 (B, T, 256)], T = 1 + S // 160."""
        have = self._input_layers(wav)
        return [*have, *self._run_layers(have[-1], len(have) - 1, self.lstm.num_layers)]

    def layer_names(self) -> list[str]:
        return ["mel", *(f"lstm{k + 1}" for k in range(self.lstm.num_layers))]

    def layer_dims(self) -> list[int]:
        return [self.mel_fbank.shape[1], *([self.lstm.hidden_size] * self.lstm.num_layers)]

    def embed(self, wav: Tensor | Prefix) -> Tensor:
        """(B, S) -> (B, 256): one partial per row (volume-normalised per row), or a batch Prefix's crops."""
        have = self._input_layers(wav)
        if len(have) == 1:  # from the mel: the stacked LSTM in one call
            return self._head(self._lstm(have[0])[1])
        return self._head(self.layers(wav)[-1][:, -1])

    def flops_per_second(self) -> float:
        """Analytic FLOPs per second of audio for `frames`/`embed` (LSTM + mel projection; the FFT, ~1%, is left out)."""
        fps = self.sample_rate / self.hop
        macs, size = 0, self.lstm.input_size
        for _ in range(self.lstm.num_layers):
            macs += 4 * self.lstm.hidden_size * (size + self.lstm.hidden_size)
            size = self.lstm.hidden_size
        macs += self.mel_fbank.numel()
        return 2.0 * fps * macs

    def partial_slices(self, n_samples: int) -> list[int]:
        """Start frames of the partials, exactly as Resemblyzer's `compute_partial_slices`."""
        n_frames = math.ceil((n_samples + 1) / self.hop)
        steps = max(1, n_frames - self.partial_frames + self.partial_hop_frames + 1)
        starts = list(range(0, steps, self.partial_hop_frames))
        coverage = (n_samples - starts[-1] * self.hop) / (self.partial_frames * self.hop)
        if coverage < self.min_coverage and len(starts) > 1:
            starts = starts[:-1]
        return starts

    def _trim_silences(self, wav: Tensor) -> Tensor:
        try:
            from resemblyzer.audio import trim_long_silences
        except ImportError as e:
            raise ImportError("backbone.vad_trim=true uses resemblyzer's webrtcvad trimming: pip install resemblyzer") from e
        return torch.from_numpy(trim_long_silences(wav.detach().cpu().numpy().astype("float32"))).to(wav.device)
