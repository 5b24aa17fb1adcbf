"""The single audio path every corpus goes through: decode, downmix, resample, trim, crop.

Decoding uses soundfile: any format libsndfile reads (WAV, FLAC, OGG, AIFF, ...; MP3 and Opus with
libsndfile >= 1.1), recognised from the content whatever the extension says; torchaudio is only used
for resampling, so no FFmpeg/torchcodec install is needed. Files soundfile cannot decode (e.g. VoxCeleb2's m4a)
raise `AudioDecodeError` naming the file and what to do about it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF


class AudioDecodeError(RuntimeError):
    pass


def _hint(path: str) -> str:
    ext = Path(path).suffix.lower()
    if ext in {".m4a", ".aac", ".mp4", ".mp3", ".opus"}:
        return (f" soundfile cannot decode '{ext}'. Convert once to WAV next to the original, e.g. "
                f"`ffmpeg -i X{ext} -ac 1 -ar 16000 X.wav`; the reader picks up a .wav with the same stem automatically.")
    return ""


def resolve_audio_path(path: str | Path) -> Path:
    """Prefer a WAV conversion with the same stem when the original is in a format soundfile cannot read."""
    p = Path(path)
    if p.suffix.lower() in {".m4a", ".aac", ".mp4", ".mp3", ".opus"}:
        wav = p.with_suffix(".wav")
        if wav.exists():
            return wav
    return p


def audio_info(path: str | Path) -> tuple[float, int, int]:
    """(duration seconds, sample rate, channels) without decoding the samples."""
    p = resolve_audio_path(path)
    try:
        info = sf.info(str(p))
    except Exception as e:  # soundfile raises several types
        raise AudioDecodeError(f"cannot read audio header of {p}: {e}.{_hint(str(p))}") from e
    return info.frames / info.samplerate, info.samplerate, info.channels


def resample(wav: torch.Tensor, orig_sr: int, target_sr: int) -> torch.Tensor:
    if orig_sr == target_sr:
        return wav
    return AF.resample(wav, orig_sr, target_sr)


def load_audio(path: str | Path, target_sr: int, start: float = 0.0, duration: float | None = None,
               normalize_loudness: bool = False) -> torch.Tensor:
    """Decode to a 1-D float32 tensor at `target_sr` (mono, downmixed by averaging channels)."""
    p = resolve_audio_path(path)
    try:
        with sf.SoundFile(str(p)) as f:
            sr = f.samplerate
            if start:
                f.seek(int(start * sr))
            frames = -1 if duration is None else int(duration * sr)
            data = f.read(frames=frames, dtype="float32", always_2d=True)
    except Exception as e:
        raise AudioDecodeError(f"cannot decode audio file {p}: {e}.{_hint(str(p))}") from e
    wav = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    wav = resample(wav, sr, target_sr)
    if normalize_loudness:
        wav = rms_normalize(wav)
    return wav


def rms_normalize(wav: torch.Tensor, target_dbfs: float = -23.0, eps: float = 1e-8) -> torch.Tensor:
    rms = wav.pow(2).mean().sqrt()
    if rms < eps:
        return wav
    gain = 10 ** (target_dbfs / 20) / rms
    return (wav * gain).clamp(-1.0, 1.0)


def trim_silence(wav: torch.Tensor, sample_rate: int, threshold_db: float = -40.0, frame_ms: float = 20.0) -> torch.Tensor:
    """Cut leading/trailing frames whose energy is `threshold_db` below the loudest frame."""
    hop = max(1, int(sample_rate * frame_ms / 1000))
    n = wav.shape[-1] // hop
    if n < 2:
        return wav
    energy = wav[: n * hop].reshape(n, hop).pow(2).mean(dim=1)
    db = 10 * torch.log10(energy + 1e-12)
    voiced = torch.nonzero(db > db.max() + threshold_db).flatten()
    if len(voiced) == 0:
        return wav
    return wav[int(voiced[0]) * hop : (int(voiced[-1]) + 1) * hop]


def crop_or_pad(wav: torch.Tensor, length: int, generator: torch.Generator | None = None, random: bool = True) -> torch.Tensor:
    """Random (train) or centred (eval) crop to exactly `length` samples; short clips are zero-padded."""
    n = wav.shape[-1]
    if n == length:
        return wav
    if n < length:
        return torch.nn.functional.pad(wav, (0, length - n))
    if random:
        start = int(torch.randint(0, n - length + 1, (1,), generator=generator))
    else:
        start = (n - length) // 2
    return wav[start : start + length]
