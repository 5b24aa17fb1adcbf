"""The synthetic corpus: cache/atomicity/determinism contracts, and that speaker and emotion are both learnable."""
from __future__ import annotations

import collections
import json
import multiprocessing
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from datamodules.records import FOUR_CLASSES
from datamodules.synthetic import corpus as corpus_module
from datamodules.synthetic import SyntheticCorpusConfig, generate_corpus, parse_synthetic
from datamodules.synthetic.synthesizer import ALL_EMOTIONS

SMALL = SyntheticCorpusConfig(n_speakers=3, clips_per_emotion=2, emotions=ALL_EMOTIONS, clip_seconds=(0.8, 1.2), seed=7)


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    return generate_corpus(tmp_path_factory.mktemp("synthetic"), SMALL, progress=False)


def _wav_bytes(manifest: Path) -> dict[str, bytes]:
    return {p.relative_to(manifest.parent).as_posix(): p.read_bytes() for p in sorted(manifest.parent.rglob("*.wav"))}


# ---------------------------------------------------------------- layout, manifest, cache


def test_manifest_round_trip_and_layout(small_corpus: Path):
    records = parse_synthetic(small_corpus.parent)
    assert len(records) == SMALL.n_speakers * len(SMALL.emotions) * SMALL.clips_per_emotion
    assert len({r.utt_id for r in records}) == len(records)
    assert small_corpus.parent.name == SMALL.digest()
    for r in records:
        rel = Path(r.path).relative_to(small_corpus.parent).as_posix()
        m = re.fullmatch(r"wav/(spk\d{3})/(spk\d{3})_([a-z]+)_(\d{3})\.wav", rel)
        assert m and m.group(1) == m.group(2), rel
        assert r.speaker == f"synthetic:{m.group(1)}" and r.corpus == "synthetic" and r.emotion == m.group(3)
        assert r.emotion4 == (r.emotion if r.emotion in FOUR_CLASSES else None)
        assert r.gender == ("M" if int(m.group(1)[3:]) % 2 == 0 else "F")
        info = sf.info(r.path)
        assert info.samplerate == r.sample_rate == SMALL.sample_rate and info.channels == 1 and info.subtype == "PCM_16"
        assert r.duration == pytest.approx(info.frames / info.samplerate)
        assert SMALL.clip_seconds[0] - 1e-3 <= r.duration <= SMALL.clip_seconds[1] + 1e-3
        assert r.extra["f0_mean"] > 50
    assert parse_synthetic(small_corpus) == records  # manifest path accepted too
    speakers = json.loads((small_corpus.parent / "speakers.json").read_text())
    assert [s["speaker_id"] for s in speakers] == ["spk000", "spk001", "spk002"]
    assert all(s["f0_base_hz"] > 0 and s["vtl_factor"] > 0 for s in speakers)
    config = json.loads((small_corpus.parent / "config.json").read_text())
    assert config["config"] == SMALL.to_dict() and config["hash"] == SMALL.digest()


def test_audio_is_sane(small_corpus: Path):
    for r in parse_synthetic(small_corpus.parent):
        audio, _ = sf.read(r.path, dtype="float32")
        assert np.isfinite(audio).all(), r.path
        assert np.abs(audio).max() <= 1.0
        rms_dbfs = 20 * np.log10(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))
        assert -55 < rms_dbfs < -6, (r.path, rms_dbfs)


def test_cache_hit_does_not_rewrite(small_corpus: Path):
    files = [small_corpus, small_corpus.parent / "config.json", next(small_corpus.parent.rglob("*.wav"))]
    before = [f.stat().st_mtime_ns for f in files]
    root = small_corpus.parent.parent
    assert generate_corpus(root, SMALL, progress=False) == small_corpus
    assert [f.stat().st_mtime_ns for f in files] == before


def test_same_seed_is_bit_identical_and_other_seed_differs(tmp_path: Path, small_corpus: Path):
    again = generate_corpus(tmp_path / "a", SMALL, progress=False)
    assert _wav_bytes(again) == _wav_bytes(small_corpus)
    assert (again.parent / "speakers.json").read_bytes() == (small_corpus.parent / "speakers.json").read_bytes()
    other_cfg = SyntheticCorpusConfig(**{**SMALL.to_dict(), "seed": SMALL.seed + 1})
    other = generate_corpus(tmp_path / "a", other_cfg, progress=False)
    assert other.parent != again.parent
    assert set(_wav_bytes(other)) == set(_wav_bytes(again))
    assert all(_wav_bytes(other)[k] != v for k, v in _wav_bytes(again).items())


def test_clips_do_not_depend_on_the_rest_of_the_config(tmp_path: Path, small_corpus: Path):
    # Per-clip random streams: a 4-emotion, 2-speaker subset reproduces the same files.
    subset = SyntheticCorpusConfig(**{**SMALL.to_dict(), "n_speakers": 2, "emotions": FOUR_CLASSES})
    sub = _wav_bytes(generate_corpus(tmp_path, subset, progress=False))
    full = _wav_bytes(small_corpus)
    assert sub and all(full[k] == v for k, v in sub.items())


def test_moved_corpus_is_re_rooted(tmp_path: Path, small_corpus: Path):
    moved = tmp_path / "moved"
    shutil.copytree(small_corpus.parent, moved)
    records = parse_synthetic(moved)
    assert all(Path(r.path).is_relative_to(moved) and Path(r.path).exists() for r in records)


def test_missing_audio_is_named(tmp_path: Path, small_corpus: Path):
    broken = tmp_path / "broken"
    shutil.copytree(small_corpus.parent, broken)
    victim = broken / "wav" / "spk001" / "spk001_sad_001.wav"
    victim.unlink()
    with pytest.raises(FileNotFoundError, match="spk001_sad_001.wav"):
        parse_synthetic(broken)


def test_parse_without_manifest_points_at_generated_corpora(small_corpus: Path, tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=SMALL.digest()):
        parse_synthetic(small_corpus.parent.parent)
    with pytest.raises(FileNotFoundError, match="generate_corpus"):
        parse_synthetic(tmp_path)


def test_config_validation_names_the_bad_value():
    with pytest.raises(ValueError, match="joy"):
        SyntheticCorpusConfig(emotions=("angry", "joy"))
    with pytest.raises(ValueError, match="clip_seconds"):
        SyntheticCorpusConfig(clip_seconds=(3.0, 1.0))
    with pytest.raises(ValueError, match="n_speakers"):
        SyntheticCorpusConfig(n_speakers=0)
    # Hydra hands lists; they normalise to the same hash as tuples.
    assert SyntheticCorpusConfig(emotions=list(FOUR_CLASSES), clip_seconds=[1.5, 3]).digest() == SyntheticCorpusConfig().digest()


def test_tampered_config_is_refused(tmp_path: Path, small_corpus: Path):
    root = tmp_path / "root"
    shutil.copytree(small_corpus.parent, root / SMALL.digest())
    cfg_path = root / SMALL.digest() / "config.json"
    stored = json.loads(cfg_path.read_text())
    stored["config"]["seed"] = 999
    cfg_path.write_text(json.dumps(stored))
    with pytest.raises(RuntimeError, match="does not match"):
        generate_corpus(root, SMALL, progress=False)


TINY = SyntheticCorpusConfig(n_speakers=2, clips_per_emotion=1, clip_seconds=(0.6, 0.8), seed=3)


def test_interrupted_generation_leaves_no_corpus(tmp_path: Path, monkeypatch):
    real = corpus_module.synthesize_clip
    calls = {"n": 0}

    def dies_midway(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C half way through
        return real(*args, **kwargs)

    monkeypatch.setattr(corpus_module, "synthesize_clip", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        generate_corpus(tmp_path, TINY, progress=False)
    assert not (tmp_path / TINY.digest()).exists()
    assert not list(tmp_path.glob(".*.tmp-*"))
    # A SIGKILLed run leaves its temp folder behind: the next run clears it and completes.
    leftover = tmp_path / f".{TINY.digest()}.tmp-1-dead"
    (leftover / "wav").mkdir(parents=True)
    monkeypatch.setattr(corpus_module, "synthesize_clip", real)
    manifest = generate_corpus(tmp_path, TINY, progress=False)
    assert len(parse_synthetic(manifest)) == 8 and not leftover.exists()


def _generate_in_child(root: str, queue) -> None:
    queue.put(str(generate_corpus(root, TINY, progress=False)))


def test_concurrent_callers_share_one_corpus(tmp_path: Path):
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_generate_in_child, args=(str(tmp_path), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    results = {queue.get(timeout=5) for _ in procs}
    assert results == {str(tmp_path.resolve() / TINY.digest() / "manifest.jsonl")}
    assert len(parse_synthetic(tmp_path / TINY.digest())) == 8
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == [TINY.digest()]


# ---------------------------------------------------------------- the two factors

LEARN = SyntheticCorpusConfig(n_speakers=12, clips_per_emotion=4, clip_seconds=(1.0, 2.0), seed=0)


@pytest.fixture(scope="module")
def learn_set(tmp_path_factory):
    """Clips of LEARN with simple hand-crafted features: mean/std log-mel + F0 and energy statistics."""
    records = parse_synthetic(generate_corpus(tmp_path_factory.mktemp("learn"), LEARN, progress=False))
    features = np.stack([_features(r.path) for r in records])
    return records, features


def _features(path: str) -> np.ndarray:
    import torchaudio.functional as AF

    audio, sr = sf.read(path, dtype="float32")
    n, hop = 512, 160
    frames = np.lib.stride_tricks.sliding_window_view(audio, n)[::hop] * np.hanning(n).astype(np.float32)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    log_mel = np.log(power @ AF.melscale_fbanks(n // 2 + 1, 0.0, sr / 2, 40, sr).numpy() + 1e-8)
    log_energy = np.log(power.sum(axis=1) + 1e-8)
    active = log_energy > log_energy.max() - 9.0
    autocorr = np.fft.irfft(power, axis=1)[:, : n // 2]  # Wiener-Khinchin
    lo, hi = sr // 500, sr // 60
    lag = lo + autocorr[:, lo:hi].argmax(axis=1)
    voiced = active & (autocorr[np.arange(len(lag)), lag] > 0.45 * autocorr[:, 0])
    semitones = 12 * np.log2(sr / lag[voiced] / 100.0) if voiced.any() else np.zeros(1)
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    voiced_power = power[voiced] if voiced.any() else power[active]
    # Alpha ratio (energy 1-5 kHz over 0-1 kHz in voiced frames): the usual spectral-tilt measure.
    alpha = np.log(voiced_power[:, (freqs >= 1000) & (freqs < 5000)].sum() / voiced_power[:, freqs < 1000].sum())
    prosody = [np.median(semitones), np.percentile(semitones, 90) - np.percentile(semitones, 10), voiced.mean(),
               log_energy[active].mean(), log_energy[active].std(), active.mean(), alpha]
    return np.concatenate([log_mel[active].mean(axis=0), log_mel[active].std(axis=0), prosody])


def _logreg(C: float):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=C))


def _speaker_normalised(x: np.ndarray, speaker: np.ndarray) -> np.ndarray:
    """Z-score each speaker's clips on their own statistics (standard SER speaker normalisation)."""
    out = x.copy()
    for s in set(speaker):
        m = speaker == s
        out[m] = (x[m] - x[m].mean(axis=0)) / (x[m].std(axis=0) + 1e-6)
    return out


def _held_out_speaker_accuracy(x: np.ndarray, records) -> float:
    emotion = np.array([r.emotion for r in records])
    speaker = np.array([r.speaker for r in records])
    # Train on half the speakers, test on the others; gender-balanced (genders alternate by index).
    train = np.isin(speaker, [s for i, s in enumerate(sorted(set(speaker))) if i % 4 < 2])
    return float((_logreg(0.1).fit(x[train], emotion[train]).predict(x[~train]) == emotion[~train]).mean())


def test_emotion_is_learnable_across_speakers_but_not_trivial(learn_set):
    records, x = learn_set
    speaker = np.array([r.speaker for r in records])
    raw = _held_out_speaker_accuracy(x, records)
    normed = _held_out_speaker_accuracy(_speaker_normalised(x, speaker), records)
    print(f"emotion accuracy on held-out speakers: raw {raw:.3f}, speaker-normalised {normed:.3f} (chance 0.25)")
    assert 0.5 < raw < 0.95  # learnable, yet classes overlap
    assert normed > 0.5


def test_emotion_is_relative_to_the_speaker(learn_set):
    # Absolute F0 says little about emotion across speakers (a neutral female voice is higher than an angry
    # male one); the same F0 relative to each speaker's own baseline is informative.
    records, x = learn_set
    speaker = np.array([r.speaker for r in records])
    f0 = x[:, [80]]
    raw = _held_out_speaker_accuracy(f0, records)
    relative = _held_out_speaker_accuracy(_speaker_normalised(f0, speaker), records)
    print(f"emotion accuracy from median F0 alone: absolute {raw:.3f}, speaker-relative {relative:.3f}")
    assert relative > raw + 0.15


def test_speaker_is_learnable_across_emotions(learn_set):
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    records, x = learn_set
    speaker = np.array([r.speaker for r in records])
    log_mel = x[:, :40] - x[:, :40].mean(axis=1, keepdims=True)  # level-normalised spectrum
    acc = cross_val_score(_logreg(1.0), log_mel, speaker, cv=StratifiedKFold(2, shuffle=True, random_state=0)).mean()
    chance = 1 / LEARN.n_speakers
    print(f"speaker accuracy (2-fold over clips, all emotions mixed): {acc:.3f} (chance {chance:.3f})")
    assert acc > 5 * chance


def test_emotion_moves_each_speaker_in_the_literature_direction(learn_set):
    records, x = learn_set
    by_speaker: dict[str, dict[str, list]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for r, feats in zip(records, x):
        by_speaker[r.speaker][r.emotion].append((r.extra["f0_mean"], feats[83], feats[86]))
    f0_order = level_order = tilt_order = 0
    for emotions in by_speaker.values():
        f0, level, tilt = ({e: np.mean([v[i] for v in vals]) for e, vals in emotions.items()} for i in range(3))
        f0_order += f0["angry"] > f0["neutral"] > f0["sad"]
        level_order += level["angry"] > level["neutral"] > level["sad"]
        # Flatter spectrum (more energy above 1 kHz) when angry; vowel content makes this the noisiest cue.
        tilt_order += tilt["angry"] > tilt["sad"]
    n = len(by_speaker)
    print(f"speakers with angry > neutral > sad: F0 {f0_order}/{n}, level {level_order}/{n}; "
          f"angry > sad alpha ratio {tilt_order}/{n}")
    assert min(f0_order, level_order, tilt_order) >= 0.8 * n
