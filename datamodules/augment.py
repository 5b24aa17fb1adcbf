"""Waveform augmentations for speaker/emotion training, each driven by an explicit torch.Generator.

Contract: every augmentation is a callable `aug(wav, generator) -> wav` on a 1-D float tensor,
except `SpeedPerturb` (and a `Compose` that contains one), which return `(wav, speed_index)`.

Speed perturbation changes pitch and tempo, so WeSpeaker treats a sped-up copy as a *new speaker*:
`speaker_label = base_label + speed_index * n_speakers` (see `speed_speaker_label`), with
`len(factors)` label copies in the classifier. `speed_index` 0 is always the unperturbed factor 1.0,
so clips without speed perturbation keep their labels. Pass a generator seeded per sample (e.g. from
seed, epoch and index) to make augmentation reproducible regardless of worker scheduling; with
`generator=None` torch's global RNG is used (seeded per worker by the DataLoader, not reproducible
across worker counts).
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Callable, Sequence

import torch

from datamodules.audio import audio_info, load_audio, resample

Augmentation = Callable[[torch.Tensor, "torch.Generator | None"], "torch.Tensor | tuple[torch.Tensor, int]"]


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _apply_with_p(p: float, generator: torch.Generator | None) -> bool:
    return p >= 1.0 or float(torch.rand((), generator=generator)) < p


def coloured_noise(length: int, exponent: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Unit-RMS noise with power spectrum ~ 1/f^exponent (0 white, 1 pink, 2 brown)."""
    white = torch.randn(length, generator=generator)
    if exponent == 0:
        noise = white
    else:
        spec = torch.fft.rfft(white)
        freqs = torch.arange(spec.shape[0], dtype=torch.float32)
        freqs[0] = 1.0  # keep DC finite; it is removed below
        spec = spec / freqs.pow(exponent / 2)
        noise = torch.fft.irfft(spec, n=length)
    noise = noise - noise.mean()
    return noise / noise.pow(2).mean().sqrt().clamp_min(1e-12)


class Gain:
    """Random loudness change in dB, clipped to [-1, 1]."""

    def __init__(self, db_range: tuple[float, float] = (-6.0, 6.0), p: float = 1.0):
        self.db_range, self.p = tuple(db_range), p

    def __call__(self, wav: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not _apply_with_p(self.p, generator):
            return wav
        db = _uniform(*self.db_range, generator)
        return (wav * 10 ** (db / 20)).clamp(-1.0, 1.0)


class AddNoise:
    """Additive noise at a random SNR, from noise files (e.g. MUSAN) or generated coloured noise.

    noise_source: None -> white/pink/brown noise; a folder or a list of files -> a random excerpt of
    a random file (looped when shorter than the clip), decoded at `sample_rate`.
    """

    def __init__(self, snr_db_range: tuple[float, float] = (5.0, 20.0),
                 noise_source: str | Path | Sequence[str | Path] | None = None, sample_rate: int = 16000,
                 colour_exponents: Sequence[float] = (0.0, 1.0, 2.0), p: float = 1.0):
        self.snr_db_range, self.sample_rate, self.p = tuple(snr_db_range), sample_rate, p
        self.colour_exponents = tuple(colour_exponents)
        self.noise_files: list[Path] = []
        if noise_source is not None:
            if isinstance(noise_source, (str, Path)) and Path(noise_source).is_dir():
                files = sorted(q for q in Path(noise_source).rglob("*") if q.suffix.lower() in (".wav", ".flac", ".ogg"))
            else:
                files = [Path(noise_source)] if isinstance(noise_source, (str, Path)) else [Path(q) for q in noise_source]
            missing = [str(q) for q in files if not q.is_file()]
            if missing:
                raise FileNotFoundError(f"AddNoise: noise file(s) not found: {missing[:5]}")
            if not files:
                raise FileNotFoundError(f"AddNoise: no .wav/.flac/.ogg noise files under {noise_source}")
            self.noise_files = files
        self._durations: dict[Path, float] = {}

    def _noise(self, length: int, generator: torch.Generator | None) -> torch.Tensor:
        if not self.noise_files:
            k = int(torch.randint(len(self.colour_exponents), (1,), generator=generator))
            return coloured_noise(length, self.colour_exponents[k], generator)
        path = self.noise_files[int(torch.randint(len(self.noise_files), (1,), generator=generator))]
        if path not in self._durations:
            self._durations[path] = audio_info(path)[0]
        need = length / self.sample_rate
        start = _uniform(0.0, max(0.0, self._durations[path] - need), generator)
        noise = load_audio(path, self.sample_rate, start=start, duration=need)
        if noise.numel() == 0:
            raise ValueError(f"AddNoise: noise file {path} decoded to no samples")
        if noise.numel() < length:
            noise = noise.repeat(length // noise.numel() + 1)
        return noise[:length]

    def __call__(self, wav: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not _apply_with_p(self.p, generator) or wav.numel() == 0:
            return wav
        signal_power = wav.pow(2).mean()
        if signal_power <= 0:
            return wav  # SNR is undefined for digital silence
        noise = self._noise(wav.shape[-1], generator)
        noise_power = noise.pow(2).mean().clamp_min(1e-12)
        snr = _uniform(*self.snr_db_range, generator)
        scale = (signal_power / (noise_power * 10 ** (snr / 10))).sqrt()
        return (wav + scale * noise).clamp(-1.0, 1.0)


class SpeedPerturb:
    """Change speed (tempo and pitch) by a random factor; returns `(wav, speed_index)`.

    `factors` are reordered so that index 0 is 1.0 (added when missing); a factor f > 1 shortens the
    clip to len/f samples. Implemented as a torchaudio resampling of the clip treated as if recorded
    at f x sample_rate.
    """

    def __init__(self, factors: Sequence[float] = (0.9, 1.0, 1.1), p: float = 1.0):
        if any(f <= 0 for f in factors):
            raise ValueError(f"SpeedPerturb: factors must be positive, got {list(factors)}")
        others = [float(f) for f in factors if f != 1.0]
        self.factors: tuple[float, ...] = (1.0, *others)
        self.p = p

    @property
    def num_copies(self) -> int:
        return len(self.factors)

    def apply(self, wav: torch.Tensor, index: int) -> torch.Tensor:
        factor = self.factors[index]
        if factor == 1.0:
            return wav
        ratio = Fraction(factor).limit_denominator(100)
        return resample(wav, ratio.numerator, ratio.denominator)

    def __call__(self, wav: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
        index = 0
        if _apply_with_p(self.p, generator):
            index = int(torch.randint(len(self.factors), (1,), generator=generator))
        return self.apply(wav, index), index


def speed_speaker_label(label: int, speed_index: int, n_speakers: int) -> int:
    """WeSpeaker convention: each speed factor is a separate block of `n_speakers` classes."""
    return label + speed_index * n_speakers


class Compose:
    """Apply augmentations in order; always returns `(wav, speed_index)` (0 when nothing changed speed)."""

    def __init__(self, augmentations: Sequence[Augmentation]):
        self.augmentations = list(augmentations)
        speeds = [a for a in self.augmentations if isinstance(a, SpeedPerturb)]
        if len(speeds) > 1:
            raise ValueError("Compose: at most one SpeedPerturb (the speaker-label offset must be unambiguous)")
        self.num_copies = speeds[0].num_copies if speeds else 1

    def __call__(self, wav: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
        speed_index = 0
        for aug in self.augmentations:
            out = aug(wav, generator)
            if isinstance(out, tuple):
                wav, speed_index = out
            else:
                wav = out
        return wav, speed_index
