from __future__ import annotations

import numpy as np
import pytest

from evaluation.embeddings_io import EmbeddingSet, filter_labels, load_npz, save_npz, synthetic_set


def _small(n: int = 6, **extra) -> EmbeddingSet:
    rng = np.random.default_rng(0)
    return EmbeddingSet(
        embeddings=rng.normal(size=(n, 4)).astype(np.float32),
        emotion=np.array(["angry", "sad", "neutral"] * (n // 3)),
        speaker=np.array([f"s{k % 2}" for k in range(n)]),
        **extra,
    )


def test_npz_round_trip_is_exact(tmp_path):
    s = _small(6, split=np.array(["train", "test"] * 3), session=np.array(["1", "2"] * 3),
               utt_id=np.array([f"u{k}" for k in range(6)]))
    path = save_npz(s, tmp_path / "sub" / "emb.npz")
    back = load_npz(path)
    assert set(back.arrays()) == {"embeddings", "emotion", "speaker", "split", "session", "utt_id"}
    for name, arr in s.arrays().items():
        np.testing.assert_array_equal(getattr(back, name), arr)
        assert getattr(back, name).dtype == arr.dtype
    with np.load(path, allow_pickle=False) as raw:  # stored as plain unicode, readable without pickle
        assert raw["emotion"].dtype.kind == "U"


def test_integer_emotions_become_strings(tmp_path):
    path = tmp_path / "ints.npz"
    np.savez(path, embeddings=np.eye(4, dtype=np.float32), emotion=np.array([0, 1, 2, 1]),
             speaker=np.array(["a", "a", "b", "b"]))
    s = load_npz(path)
    assert s.emotion.tolist() == ["0", "1", "2", "1"]
    assert s.split is None and s.session is None


def test_object_arrays_are_refused_not_unpickled(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, embeddings=np.eye(2, dtype=np.float32), emotion=np.array(["a", "b"], dtype=object),
             speaker=np.array(["x", "y"]))
    with pytest.raises(ValueError, match="pickle"):
        load_npz(path)


def test_missing_and_unknown_arrays_are_named(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, embeddings=np.eye(2, dtype=np.float32), emotion=np.array(["a", "b"]))
    with pytest.raises(ValueError, match=r"missing array\(s\) \['speaker'\]"):
        load_npz(path)
    np.savez(path, embeddings=np.eye(2, dtype=np.float32), emotion=np.array(["a", "b"]),
             speaker=np.array(["x", "y"]), gender=np.array(["F", "M"]))
    with pytest.raises(ValueError, match="gender"):
        load_npz(path)
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_npz(tmp_path / "nope.npz")


def test_mismatched_lengths_name_every_array():
    s = EmbeddingSet(embeddings=np.zeros((5, 3)), emotion=np.array(["a"] * 4), speaker=np.array(["s"] * 5))
    with pytest.raises(ValueError, match=r"embeddings=5, emotion=4, speaker=5"):
        s.validate()


def test_nan_rows_empty_set_empty_speaker_and_unknown_split():
    s = _small(6)
    s.embeddings[[1, 4], 2] = np.nan
    with pytest.raises(ValueError, match=r"2 row\(s\) with NaN/inf, e.g. rows \[1, 4\]"):
        s.validate()
    with pytest.raises(ValueError, match="empty"):
        EmbeddingSet(embeddings=np.zeros((0, 3)), emotion=np.array([], dtype=str),
                     speaker=np.array([], dtype=str)).validate()
    s = _small(6)
    s.speaker[3] = ""
    with pytest.raises(ValueError, match=r"speaker is empty for 1 row\(s\), e.g. rows \[3\]"):
        s.validate()
    with pytest.raises(ValueError, match=r"unknown value\(s\) \['dev'\]"):
        _small(6, split=np.array(["train", "test", "dev"] * 2)).validate()


def test_filter_labels_reports_dropped_counts():
    s = _small(9)
    kept, dropped = filter_labels(s, ["angry", "sad"])
    assert dropped == {"neutral": 3}
    assert sorted(set(kept.emotion.tolist())) == ["angry", "sad"]
    assert len(kept) == 6
    # rows stay aligned: every kept row is the original row with the same embedding
    orig = {tuple(e): lab for e, lab in zip(s.embeddings.tolist(), s.emotion.tolist())}
    assert all(orig[tuple(e)] == lab for e, lab in zip(kept.embeddings.tolist(), kept.emotion.tolist()))


def test_filter_labels_unknown_class_lists_present_labels():
    with pytest.raises(ValueError, match=r"\['happy'\] not present.*'angry': 2"):
        filter_labels(_small(6), ["angry", "happy"])


def test_synthetic_set_is_valid_and_seeded():
    a = synthetic_set(n_speakers=4, clips_per_speaker=8, n_sessions=2, seed=3).validate()
    b = synthetic_set(n_speakers=4, clips_per_speaker=8, n_sessions=2, seed=3)
    np.testing.assert_array_equal(a.embeddings, b.embeddings)
    np.testing.assert_allclose(np.linalg.norm(a.embeddings, axis=1), 1.0, rtol=1e-5)
    assert sorted(set(a.session.tolist())) == ["s1", "s2"]
