"""GE2E backbone: our torch front end + weights reproduce Resemblyzer's VoiceEncoder."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_modules.backbones import BACKBONES
from lightning_modules.backbones.ge2e import GE2EBackbone, normalize_volume

CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _resemblyzer():
    return pytest.importorskip("resemblyzer", reason="resemblyzer (and its pretrained.pt) not installed")


def _tone(n: int, seed: int = 0, amp: float = 0.1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / 16000
    f0 = 120 + 40 * torch.rand(1, generator=g)
    return amp * (torch.sin(2 * math.pi * f0 * t) + 0.5 * torch.sin(2 * math.pi * 3 * f0 * t)) + 0.01 * amp * torch.randn(n, generator=g)


@pytest.fixture(scope="module")
def ge2e() -> GE2EBackbone:
    _resemblyzer()
    return GE2EBackbone().eval()


@pytest.fixture(scope="module")
def voice_encoder():
    return _resemblyzer().VoiceEncoder("cpu", verbose=False)


def test_registry_shapes_and_config_errors(tmp_path):
    assert BACKBONES["ge2e"] is GE2EBackbone
    m = GE2EBackbone(pretrained=False).eval()
    wav = torch.stack([_tone(16000, 0), _tone(16000, 1)])
    with torch.no_grad():
        assert m.frames(wav).shape == (2, 1 + 16000 // 160, 256)
        emb = m.embed(wav)
    assert emb.shape == (2, 256) and (emb >= 0).all()
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))
    with pytest.raises(ValueError, match="16000"):
        GE2EBackbone(sample_rate=8000, pretrained=False)
    with pytest.raises(FileNotFoundError, match="weights_path|not found"):
        GE2EBackbone(weights_path=str(tmp_path / "missing.pt"))


def test_weights_are_resemblyzers(ge2e, voice_encoder):
    theirs = voice_encoder.state_dict()
    for name, p in ge2e.state_dict().items():
        assert torch.equal(p, theirs[name]), name


def test_mel_matches_librosa(ge2e):
    audio = _resemblyzer().audio
    wav = _tone(16000 + 123, seed=2).numpy()
    theirs = audio.wav_to_mel_spectrogram(wav)
    ours = ge2e.mel(torch.from_numpy(wav)[None])[0].numpy()
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max()


def test_volume_normalisation_matches_resemblyzer():
    audio = _resemblyzer().audio
    quiet, loud = _tone(8000, amp=0.003), _tone(8000, amp=0.5)
    for w in (quiet, loud):
        theirs = audio.normalize_volume(w.numpy(), -30, increase_only=True)
        torch.testing.assert_close(normalize_volume(w[None])[0], torch.from_numpy(theirs).float(), rtol=1e-5, atol=1e-7)
    assert torch.equal(normalize_volume(torch.zeros(1, 100)), torch.zeros(1, 100))


@pytest.mark.parametrize("n_samples", [100, 16000, 25599, 25600, 32000, 37000, 41123, 80000])
def test_partial_slices_match(ge2e, voice_encoder, n_samples):
    _, mel_slices = voice_encoder.compute_partial_slices(n_samples, rate=1.3, min_coverage=0.75)
    assert ge2e.partial_slices(n_samples) == [s.start for s in mel_slices]
    assert all(s.stop - s.start == ge2e.partial_frames for s in mel_slices)


def test_embed_utterances_match_resemblyzer_and_count_padding(ge2e, voice_encoder):
    wavs = [_tone(n, seed=i) for i, n in enumerate([9000, 26000, 41000])]
    ours, n_padded = ge2e.embed_utterances(wavs)
    theirs = np.stack([voice_encoder.embed_utterance(w.numpy()) for w in wavs])
    assert n_padded == 1  # only the clip shorter than one 1.6 s partial
    assert (ours.numpy() * theirs).sum(1).min() > 0.9999


def test_vad_trim_option_matches_preprocess_wav(ge2e, voice_encoder):
    resemblyzer = _resemblyzer()
    wav = torch.cat([torch.zeros(16000), _tone(24000, seed=7, amp=0.02), torch.zeros(12000)])
    ours, _ = GE2EBackbone(vad_trim=True).embed_utterances([wav])
    theirs = voice_encoder.embed_utterance(resemblyzer.preprocess_wav(wav.numpy(), source_sr=16000))
    assert float(ours[0] @ torch.from_numpy(theirs)) > 0.9999


def test_bf16_autocast_runs_in_float32_lstm(ge2e):
    wav = _tone(25600, seed=3)[None]
    with torch.no_grad():
        ref = ge2e.embed(wav)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            emb = ge2e.embed(wav)
    assert emb.dtype == torch.float32 and float(ref[0] @ emb[0]) > 0.999


def test_emodb_embeddings_match_resemblyzer(ge2e, voice_encoder):
    """Acceptance: real EmoDB files (22.05 kHz), Resemblyzer's own preprocessing, cosine >= 0.99."""
    wav_dir = CORPORA / "emodb" / "wav"
    if not wav_dir.is_dir():
        pytest.skip(f"real data not available: {wav_dir} (../shared is absent in a user's clone)")
    resemblyzer = _resemblyzer()
    files = sorted(wav_dir.glob("*.wav"))[::27][:20]
    assert len(files) == 20
    pre = [resemblyzer.preprocess_wav(f) for f in files]
    theirs = np.stack([voice_encoder.embed_utterance(w) for w in pre])
    ours, _ = ge2e.embed_utterances([torch.from_numpy(w) for w in pre])
    cos = (ours.numpy() * theirs).sum(1)
    assert cos.min() >= 0.99, f"min cosine {cos.min():.5f} over {len(files)} EmoDB files"
    # Speaker identity survives: same-speaker pairs are closer on average than cross-speaker ones.
    speakers = np.array([f.name[:2] for f in files])
    sims = ours.numpy() @ ours.numpy().T
    same = speakers[:, None] == speakers[None]
    off = ~np.eye(len(files), dtype=bool)
    assert sims[same & off].mean() > sims[~same].mean()
