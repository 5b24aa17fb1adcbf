from __future__ import annotations

import math

import pytest
import torch

from datamodules.augment import (
    AddNoise, Compose, Gain, SpeedPerturb, coloured_noise, speed_speaker_label,
)
from tests.fixtures_corpora import write_wav

SR = 16000


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _sine(freq: float = 440.0, seconds: float = 1.0, amp: float = 0.1) -> torch.Tensor:
    t = torch.arange(int(SR * seconds)) / SR
    return amp * torch.sin(2 * math.pi * freq * t)


def _snr_db(clean: torch.Tensor, noisy: torch.Tensor) -> float:
    noise = noisy - clean
    return float(10 * torch.log10(clean.pow(2).mean() / noise.pow(2).mean()))


def test_gain_range_reproducibility_and_p():
    wav = _sine()
    out = Gain((-6, -3))(wav, _gen(0))
    db = 20 * math.log10(float(out.abs().max() / wav.abs().max()))
    assert -6 - 1e-4 <= db <= -3 + 1e-4
    assert torch.equal(out, Gain((-6, -3))(wav, _gen(0)))
    assert not torch.equal(out, Gain((-6, -3))(wav, _gen(1)))
    assert torch.equal(Gain((-6, -3), p=0.0)(wav, _gen(0)), wav)


def test_generated_noise_hits_the_snr_and_is_seeded():
    wav = _sine()
    aug = AddNoise(snr_db_range=(9.0, 11.0))
    out = aug(wav, _gen(3))
    assert 9.0 - 0.05 <= _snr_db(wav, out) <= 11.0 + 0.05
    assert torch.equal(out, aug(wav, _gen(3)))
    assert not torch.equal(out, aug(wav, _gen(4)))
    silence = torch.zeros(SR)
    assert torch.equal(aug(silence, _gen(0)), silence)  # SNR undefined: left unchanged


def test_coloured_noise_spectrum_slopes():
    def low_high_ratio(x):
        spec = torch.fft.rfft(x).abs().pow(2)
        n = spec.shape[0]
        return float(spec[1 : n // 16].mean() / spec[n // 2 :].mean())

    white = coloured_noise(SR, 0.0, _gen(0))
    brown = coloured_noise(SR, 2.0, _gen(0))
    assert white.pow(2).mean().sqrt() == pytest.approx(1.0, rel=1e-3)
    assert low_high_ratio(brown) > 100 * low_high_ratio(white)


def test_noise_from_files_loops_short_noise(tmp_path):
    noise_file = write_wav(tmp_path / "noise" / "n1.wav", n=SR // 4, sr=8000, seed=5)  # 0.5 s at 8 kHz
    aug = AddNoise(snr_db_range=(5.0, 5.0), noise_source=tmp_path / "noise", sample_rate=SR)
    wav = _sine(seconds=1.0)
    out = aug(wav, _gen(0))
    assert _snr_db(wav, out) == pytest.approx(5.0, abs=0.05)
    added = out - wav  # resampled 0.5 s noise looped to 1 s: first and second halves are identical
    half = added.shape[0] // 2
    assert torch.allclose(added[:half], added[half : 2 * half], atol=1e-6)
    with pytest.raises(FileNotFoundError, match="n2.wav"):
        AddNoise(noise_source=[noise_file, tmp_path / "n2.wav"])


def test_speed_perturb_contract():
    sp = SpeedPerturb(factors=(0.9, 1.0, 1.1))
    assert sp.factors == (1.0, 0.9, 1.1) and sp.num_copies == 3
    wav = _sine(freq=1000.0)
    fast = sp.apply(wav, 2)
    assert abs(fast.shape[0] - SR / 1.1) <= 2
    peak_hz = int(torch.fft.rfft(fast).abs().argmax()) * SR / fast.shape[0]
    assert peak_hz == pytest.approx(1100, abs=5)  # pitch rises with speed
    assert torch.equal(sp.apply(wav, 0), wav)
    seen = set()
    for seed in range(30):
        out, idx = sp(wav, _gen(seed))
        assert abs(out.shape[0] - SR / sp.factors[idx]) <= 2
        seen.add(idx)
    assert seen == {0, 1, 2}
    assert speed_speaker_label(label=5, speed_index=2, n_speakers=100) == 205
    with pytest.raises(ValueError):
        SpeedPerturb(factors=(0.0, 1.0))


def test_compose():
    wav = _sine()
    plain = Compose([Gain((-1, -1)), AddNoise((20, 20))])
    out, idx = plain(wav, _gen(0))
    assert idx == 0 and plain.num_copies == 1 and out.shape == wav.shape
    with_speed = Compose([SpeedPerturb((1.0, 1.2), p=1.0), Gain((0, 0))])
    indices = {with_speed(wav, _gen(s))[1] for s in range(20)}
    assert indices == {0, 1} and with_speed.num_copies == 2
    a, b = with_speed(wav, _gen(7)), with_speed(wav, _gen(7))
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    torch.manual_seed(0)  # generator=None falls back to torch's global RNG
    assert torch.allclose(Gain((-1, -1))(wav), wav * 10 ** (-1 / 20))
    assert Compose([AddNoise((10, 10))])(wav)[0].shape == wav.shape
    with pytest.raises(ValueError, match="at most one SpeedPerturb"):
        Compose([SpeedPerturb(), SpeedPerturb()])
