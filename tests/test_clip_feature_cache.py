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


def _counting(monkeypatch):
    """[(output, number of clips)] of every pass the cache's default computation makes."""
    import lightning_modules.clip_feature_cache as cache

    calls = []
    real = cache.embed_clips
    monkeypatch.setattr(cache, "embed_clips", lambda *a, **k: calls.append((a[2], len(a[1]))) or real(*a, **k))
    return calls


def test_auto_is_assembled_from_the_cached_parts_and_fills_them(tmp_path, monkeypatch):
    """auto = the embedding and the layer statistics side by side: asked after both, nothing is computed; asked
    first, one pass fills both; a clip missing one part gets only that part."""
    records = _clips(tmp_path)
    dm = SpeakerDataModule(corpus="synthetic", root=str(tmp_path), num_workers=0, trim_silence=False)
    ge2e = GE2EBackbone().eval()
    calls = _counting(monkeypatch)
    emb = clip_features(ge2e, dm, records, "embedding", tmp_path / "a")["embedding"][0]
    stats = clip_features(ge2e, dm, records, "layer_stats", tmp_path / "a")["layer_stats"][0]
    assert calls == [("embedding", 4), ("layer_stats", 4)]
    auto, description = clip_features(ge2e, dm, records, "auto", tmp_path / "a")["auto"]
    assert calls == [("embedding", 4), ("layer_stats", 4)]  # read back: nothing computed
    assert np.array_equal(auto, np.concatenate([emb, stats], 1)) and description["output"] == "auto"
    assert description["embedding_dim"] == emb.shape[1] and len(list((tmp_path / "a").glob("*.npz"))) == 2

    calls.clear()
    first = clip_features(ge2e, dm, records, "auto", tmp_path / "b")["auto"][0]
    assert calls == [("auto", 4)]  # one pass for both parts
    again = clip_features(ge2e, dm, records, ["embedding", "layer_stats"], tmp_path / "b")
    assert calls == [("auto", 4)]
    np.testing.assert_allclose(first, auto, rtol=1e-5, atol=1e-6)
    assert np.array_equal(np.concatenate([again["embedding"][0], again["layer_stats"][0]], 1), first)

    calls.clear()
    clip_features(ge2e, dm, records[:2], "embedding", tmp_path / "c")
    clip_features(ge2e, dm, records, "auto", tmp_path / "c")
    assert calls == [("embedding", 2), ("layer_stats", 2), ("auto", 2)]  # what each clip lacked, once


def test_precision_and_weights_are_part_of_the_key(tmp_path, monkeypatch):
    """Features computed at another precision (a bf16 predict loop) or by other weights are never read back."""
    from lightning_modules.clip_feature_cache import cache_files, precision_key

    records = _clips(tmp_path, 2)
    dm = SpeakerDataModule(corpus="synthetic", root=str(tmp_path), num_workers=0, trim_silence=False)
    ge2e = GE2EBackbone().eval()
    assert precision_key(None) == precision_key("32") == precision_key(32) == "32-true"
    assert precision_key("bf16") == "bf16-mixed"
    fp32 = cache_files(ge2e, dm, "embedding", tmp_path)
    assert fp32 == cache_files(ge2e, dm, "embedding", tmp_path, "32-true")
    assert fp32 != cache_files(ge2e, dm, "embedding", tmp_path, "bf16-mixed")
    assert fp32 != cache_files(ge2e, dm, "embedding", tmp_path, "16-mixed")
    other = GE2EBackbone().eval()
    with torch.no_grad():
        other.lstm.weight_hh_l2[0, 0] += 1e-3
    assert cache_files(other, dm, "embedding", tmp_path) != fp32
    assert len(cache_files(ge2e, dm, "auto", tmp_path)) == 2  # auto is kept as its two parts

    asked = []

    def fake(value):
        return lambda recs, output: asked.append((output, value)) or np.full((len(recs), 256), value, np.float32)

    clip_features(ge2e, dm, records, "embedding", tmp_path / "k", precision="32-true", compute=fake(1.0))
    bf16 = clip_features(ge2e, dm, records, "embedding", tmp_path / "k", precision="bf16-mixed", compute=fake(2.0))
    assert asked == [("embedding", 1.0), ("embedding", 2.0)] and (bf16["embedding"][0] == 2.0).all()
    back = clip_features(ge2e, dm, records, "embedding", tmp_path / "k", precision="bf16", compute=fake(3.0))
    assert len(asked) == 2 and (back["embedding"][0] == 2.0).all()  # the bf16 file, read back
    # a process that holds no result (a DDP rank other than 0) writes nothing and gets nothing
    assert clip_features(ge2e, dm, records, "embedding", tmp_path / "r", compute=lambda recs, output: None) is None
    assert not (tmp_path / "r").exists()
