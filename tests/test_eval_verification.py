from __future__ import annotations

import json
from collections import Counter
from math import comb

import numpy as np
import pytest

from evaluation.embeddings_io import EmbeddingSet, synthetic_set
from evaluation.verification_analysis import run_verification_analysis


def _designed_set() -> EmbeddingSet:
    """Speaker k's neutral clips near +axis_k, angry clips near -axis_k: same-speaker same-emotion
    pairs score ~1, same-speaker cross-emotion ~-1, different speakers ~0."""
    rng = np.random.default_rng(0)
    rows, emo, spk = [], [], []
    for k in range(3):
        for sign, label in ((1, "neutral"), (-1, "angry")):
            for _ in range(3):
                v = np.zeros(6)
                v[k] = sign
                rows.append(v + rng.normal(scale=0.01, size=6))
                emo.append(label)
                spk.append(f"s{k}")
    return EmbeddingSet(embeddings=np.array(rows), emotion=np.array(emo), speaker=np.array(spk))


def test_emotion_match_vs_mismatch_eer_on_designed_scores(tmp_path):
    res = run_verification_analysis(_designed_set(), out_dir=tmp_path, class_order=["neutral", "angry"])
    assert res["n_trials"] == comb(18, 2)
    assert res["n_target"] == 3 * comb(6, 2)
    assert res["n_target_emotion_match"] == 3 * 2 * comb(3, 2)
    assert res["n_target_emotion_mismatch"] == 3 * 3 * 3
    assert res["eer_emotion_match"] < 0.01  # matched targets all above non-targets
    assert res["eer_emotion_mismatch"] > 0.99  # mismatched targets all below non-targets
    pairs = res["same_speaker_scores_by_emotion_pair"]
    assert list(pairs) == ["neutral-neutral", "angry-angry", "neutral-angry"]
    assert pairs["neutral-neutral"]["median"] == pytest.approx(1.0, abs=0.01)
    assert pairs["neutral-angry"]["median"] == pytest.approx(-1.0, abs=0.01)
    assert pairs["neutral-angry"]["n"] == 27
    assert res["different_speaker_scores"]["median"] == pytest.approx(0.0, abs=0.05)
    assert json.loads((tmp_path / "verification.json").read_text()) == json.loads(json.dumps(res))
    assert (tmp_path / "verification_boxplot.png").read_bytes()[:4] == b"\x89PNG"


def test_counts_on_synthetic_set_and_emotion_shift_hurts():
    s = synthetic_set(n_speakers=6, clips_per_speaker=16, dim=16, separation=0.8, seed=2)
    res = run_verification_analysis(s, max_pairs=None)
    per_speaker = Counter(s.speaker.tolist())
    per_speaker_emotion = Counter(zip(s.speaker.tolist(), s.emotion.tolist()))
    assert res["n_target"] == sum(comb(n, 2) for n in per_speaker.values())
    assert res["n_target_emotion_match"] == sum(comb(n, 2) for n in per_speaker_emotion.values())
    assert res["n_nontarget"] == comb(len(s), 2) - res["n_target"]
    assert res["eer_emotion_match"] < res["eer"] < res["eer_emotion_mismatch"]


def test_subsampling_is_recorded():
    s = synthetic_set(n_speakers=6, clips_per_speaker=16, dim=8, seed=2)
    res = run_verification_analysis(s, max_pairs=500, max_clips=50, seed=1)
    assert res["n_clips"] == 96 and res["n_clips_used"] == 50 and res["n_trials"] == 500


def test_no_same_speaker_pairs_is_an_error():
    s = EmbeddingSet(embeddings=np.eye(3), emotion=np.array(["a", "b", "a"]), speaker=np.array(["x", "y", "z"]))
    with pytest.raises(ValueError, match="no same-speaker pairs"):
        run_verification_analysis(s)


def test_unknown_speaker_clips_are_left_out_of_the_trials():
    s = _designed_set()
    # two clips of s0 relabelled as unknown placeholders: kept, they would be scored as
    # "different speakers" although they are s0 (high scores among the non-targets)
    speaker = s.speaker.astype("<U16")
    flags = np.zeros(len(s), dtype=bool)
    flags[[0, 1]] = True
    speaker[[0, 1]] = ["msp:unknown:a", "msp:unknown:b"]
    u = EmbeddingSet(embeddings=s.embeddings, emotion=s.emotion, speaker=speaker, speaker_unknown=flags)
    res = run_verification_analysis(u, max_pairs=None)
    assert res["n_clips"] == len(s) and res["n_clips_unknown_speaker_left_out"] == 2
    assert res["n_clips_used"] == len(s) - 2 and res["n_trials"] == comb(len(s) - 2, 2)
