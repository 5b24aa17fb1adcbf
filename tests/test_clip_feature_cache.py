"""Clip features kept per encoder weights: one pass for the embedding and the layer statistics equals two,
the file is read back for the same weights and not for others."""
from __future__ import annotations

import numpy as np
import soundfile as sf
import torch

from datamodules.records import ClipRecord
from datamodules.speaker_datamodule import SpeakerDataModule
from lightning_modules.backbones.ge2e import GE2EBackbone
from lightning_modules.clip_embedding import embed_clips
from lightning_modules.clip_feature_cache import clip_features


def _clips(tmp_path, n=4):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        path = tmp_path / f"c{i}.wav"
        t = np.arange(16000 + 9000 * i) / 16000
        sf.write(path, (0.1 * np.sin(2 * np.pi * (150 + 20 * i) * t) + 0.01 * rng.standard_normal(len(t))).astype("float32"), 16000)
        out.append(ClipRecord(str(path), f"x:{i}", "x", f"u{i}"))
    return out


def test_one_pass_equals_separate_passes_and_the_cache_is_keyed_by_weights(tmp_path, monkeypatch):
    records = _clips(tmp_path)
    dm = SpeakerDataModule(corpus="synthetic", root=str(tmp_path), num_workers=0, trim_silence=False)
    ge2e = GE2EBackbone().eval()
    got = clip_features(ge2e, dm, records, ["embedding", "layer_stats"], tmp_path / "cache")
    wavs = [torch.from_numpy(sf.read(r.path, dtype="float32")[0]) for r in records]
    for output in ("embedding", "layer_stats"):
        want = embed_clips(ge2e, wavs, output).values.numpy()
        np.testing.assert_allclose(got[output][0], want, rtol=1e-5, atol=1e-6)
        assert got[output][1]["output"] == output
    import lightning_modules.clip_feature_cache as cache

    calls = []
    real = cache.embed_clips
    monkeypatch.setattr(cache, "embed_clips", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    again = clip_features(ge2e, dm, records, ["embedding", "layer_stats"], tmp_path / "cache")
    assert calls == [] and np.array_equal(again["layer_stats"][0], got["layer_stats"][0])  # read back
    other = GE2EBackbone().eval()
    with torch.no_grad():
        other.linear.weight.mul_(1.1)
    clip_features(other, dm, records, ["embedding"], tmp_path / "cache")
    assert calls and set(calls) == {"embedding"}  # other weights: computed, not read
