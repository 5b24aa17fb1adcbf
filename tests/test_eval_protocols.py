from __future__ import annotations

import numpy as np
import pytest

from evaluation.embeddings_io import EmbeddingSet, synthetic_set
from evaluation.protocols import make_folds, plan_folds


@pytest.fixture
def data() -> EmbeddingSet:
    return synthetic_set(n_speakers=12, clips_per_speaker=20, dim=8, n_sessions=3, seed=1)


def test_kfold_is_speaker_disjoint_and_tests_every_row_once(data):
    folds = make_folds(data, "kfold", n_folds=4, seed=0)
    assert [f.name for f in folds] == ["fold0", "fold1", "fold2", "fold3"]
    tested = np.concatenate([f.test_idx for f in folds])
    assert sorted(tested.tolist()) == list(range(len(data)))
    for f in folds:
        train_spk = set(data.speaker[f.train_idx].tolist())
        test_spk = set(data.speaker[f.test_idx].tolist())
        assert not train_spk & test_spk
        assert f.test_speakers == tuple(sorted(test_spk))
        assert len(f.train_idx) + len(f.test_idx) == len(data)


def test_kfold_seed_reproducible_and_changes_assignment(data):
    a = make_folds(data, "kfold", n_folds=4, seed=0)
    b = make_folds(data, "kfold", n_folds=4, seed=0)
    c = make_folds(data, "kfold", n_folds=4, seed=5)
    assert [f.test_speakers for f in a] == [f.test_speakers for f in b]
    assert sorted(f.test_speakers for f in a) != sorted(f.test_speakers for f in c)


def test_too_few_speakers_names_counts(data):
    with pytest.raises(ValueError, match=r"12 speakers < n_folds=13"):
        make_folds(data, "kfold", n_folds=13)


def test_single_class_is_rejected():
    s = synthetic_set(n_speakers=6, clips_per_speaker=4, classes=("neutral",), dim=4)
    with pytest.raises(ValueError, match=r"only \['neutral'\]"):
        make_folds(s, "kfold", n_folds=3)


def test_loso_has_one_fold_per_session(data):
    folds = make_folds(data, "loso")
    assert [f.name for f in folds] == ["session=s1", "session=s2", "session=s3"]
    for f in folds:
        session = f.name.split("=")[1]
        np.testing.assert_array_equal(f.test_idx, np.flatnonzero(data.session == session))
    with pytest.raises(ValueError, match="needs a `session`"):
        make_folds(synthetic_set(n_speakers=4, clips_per_speaker=4), "loso")


def test_official_split_and_auto(data):
    split = np.where(np.isin(data.speaker, ["spk000", "spk001", "spk002"]), "test", "train")
    s = EmbeddingSet(**{**data.arrays(), "split": split})
    (fold,) = make_folds(s, "auto")
    assert fold.name == "official"
    np.testing.assert_array_equal(fold.test_idx, np.flatnonzero(split == "test"))
    np.testing.assert_array_equal(fold.train_idx, np.flatnonzero(split == "train"))
    assert fold.test_speakers == ("spk000", "spk001", "spk002")
    assert len(make_folds(data, "auto", n_folds=3)) == 3  # no split -> kfold
    with pytest.raises(ValueError, match="needs a `split`"):
        make_folds(data, "official")


def test_explicit_test_speakers_and_unknown_speaker(data):
    (fold,) = make_folds(data, "auto", test_speakers=["spk003", "spk007"])
    assert fold.test_speakers == ("spk003", "spk007")
    assert set(data.speaker[fold.train_idx].tolist()).isdisjoint({"spk003", "spk007"})
    with pytest.raises(ValueError, match=r"\['nobody'\] not in the set"):
        make_folds(data, "speakers", test_speakers=["spk003", "nobody"])


def test_unknown_protocol(data):
    with pytest.raises(ValueError, match="unknown protocol 'random'"):
        make_folds(data, "random")


# Per-speaker (angry, happy, neutral, sad) clip counts shaped like EmoDB's 4-class subset:
# 10 speakers with uneven class mixes (the shape that made sklearn's shuffle a no-op).
EMODB_SHAPE = [(14, 7, 11, 7), (12, 11, 10, 9), (13, 4, 9, 4), (10, 4, 4, 3), (11, 8, 9, 7),
               (12, 2, 4, 4), (12, 10, 9, 5), (16, 8, 7, 10), (13, 6, 11, 4), (14, 11, 5, 9)]


def emodb_shaped_set() -> EmbeddingSet:
    classes = ("angry", "happy", "neutral", "sad")
    emotion, speaker = [], []
    for k, counts in enumerate(EMODB_SHAPE):
        for c, n in zip(classes, counts):
            emotion += [c] * n
            speaker += [f"emodb:{k:02d}"] * n
    x = np.random.default_rng(0).normal(size=(len(emotion), 4)).astype(np.float32)
    return EmbeddingSet(embeddings=x, emotion=emotion, speaker=speaker)


def test_kfold_seed_changes_the_assignment_on_few_speakers():
    s = emodb_shaped_set()
    overall = np.array([np.mean(s.emotion == c) for c in s.classes])
    assignments = set()
    for seed in range(20):
        folds = make_folds(s, "kfold", n_folds=5, seed=seed)
        tested = np.concatenate([f.test_idx for f in folds])
        assert sorted(tested.tolist()) == list(range(len(s)))  # every row tested exactly once
        for f in folds:
            assert set(s.speaker[f.train_idx].tolist()).isdisjoint(f.test_speakers)
            share = np.array([np.mean(s.emotion[f.test_idx] == c) for c in s.classes])
            assert np.abs(share - overall).max() < 0.2  # roughly class-stratified
        assignments.add(frozenset(f.test_speakers for f in folds))
        assert [f.test_speakers for f in make_folds(s, "kfold", n_folds=5, seed=seed)] == [f.test_speakers for f in folds]
    assert len(assignments) >= 15, f"only {len(assignments)} distinct fold assignments over 20 seeds"


def _with_shared_official_split(data: EmbeddingSet) -> EmbeddingSet:
    """ESD-style: every speaker has clips in both the train and the test split."""
    split = np.where(np.arange(len(data)) % 5 == 0, "test", "train")
    return EmbeddingSet(**{**data.arrays(), "split": split})


def test_auto_falls_back_to_kfold_when_the_official_split_shares_speakers(data, caplog):
    s = _with_shared_official_split(data)
    with caplog.at_level("WARNING", logger="evaluation.protocols"):
        plan = plan_folds(s, "auto", n_folds=4, seed=0)
    assert plan.protocol == "kfold" and plan.requested == "auto" and plan.speaker_independent
    assert "12 speaker(s)" in plan.fallback and "k-fold" in plan.fallback
    assert "12 speaker(s)" in caplog.text
    assert plan.describe()["fallback"] == plan.fallback
    for f in plan.folds:
        assert set(s.speaker[f.train_idx].tolist()).isdisjoint(f.test_speakers)


def test_explicit_official_with_shared_speakers_is_refused_unless_opted_in(data):
    s = _with_shared_official_split(data)
    with pytest.raises(ValueError, match=r"12 speaker\(s\) are in both the training and the test part.*"
                                         r"allow_speaker_overlap"):
        plan_folds(s, "official")
    plan = plan_folds(s, "official", allow_speaker_overlap=True)
    assert plan.protocol == "official" and not plan.speaker_independent
    assert any("NOT speaker-independent" in n for n in plan.notes)
    assert plan.describe()["speaker_independent"] is False


def test_unused_official_split_rows_are_in_neither_part_and_counted(data):
    split = np.where(np.isin(data.speaker, ["spk000", "spk001"]), "test", "train").astype("<U6")
    split[np.isin(data.speaker, ["spk002"])] = "unused"
    s = EmbeddingSet(**{**data.arrays(), "split": split})
    plan = plan_folds(s, "auto")
    (fold,) = plan.folds
    unused = np.flatnonzero(split == "unused")
    assert not np.isin(unused, fold.train_idx).any() and not np.isin(unused, fold.test_idx).any()
    assert plan.left_out == {"official_split_unused": len(unused)}
    # k-fold ignores the official split: the unused rows are tested like any other
    kfold = plan_folds(s, "kfold", n_folds=3)
    assert sorted(np.concatenate([f.test_idx for f in kfold.folds]).tolist()) == list(range(len(s)))


def _with_unknown_speakers(data: EmbeddingSet, n: int = 30) -> EmbeddingSet:
    """MSP-style: the last n rows have no known speaker, each its own placeholder id."""
    speaker = data.speaker.astype("<U32")
    flags = np.zeros(len(data), dtype=bool)
    flags[-n:] = True
    speaker[flags] = [f"msp:unknown:{k}" for k in range(n)]
    split = np.where(np.isin(data.speaker, ["spk000", "spk001", "spk011"]), "test", "train")
    return EmbeddingSet(**{**data.arrays(), "speaker": speaker, "speaker_unknown": flags, "split": split})


def test_unknown_speakers_are_never_tested(data):
    s = _with_unknown_speakers(data)
    unknown = np.flatnonzero(s.speaker_unknown)
    kfold = plan_folds(s, "kfold", n_folds=4, seed=0)
    for f in kfold.folds:  # k-fold: out of both sides by default
        assert not np.isin(unknown, f.test_idx).any() and not np.isin(unknown, f.train_idx).any()
    tested = np.concatenate([f.test_idx for f in kfold.folds])
    assert sorted(tested.tolist()) == sorted(np.flatnonzero(~s.speaker_unknown).tolist())
    assert kfold.left_out == {"unknown_speaker": 30}
    assert any("30 clip(s) of unknown speakers" in n for n in kfold.notes)
    # opt-in: they may train in every fold, still never tested
    kfold_train = plan_folds(s, "kfold", n_folds=4, seed=0, unknown_speakers_train=True)
    for f in kfold_train.folds:
        assert np.isin(unknown, f.train_idx).all() and not np.isin(unknown, f.test_idx).any()
    # official: unknown rows of the train split train; those of the test split are left out
    (fold,) = plan_folds(s, "official").folds
    in_train_split = unknown[s.split[unknown] == "train"]
    assert np.isin(in_train_split, fold.train_idx).all() and not np.isin(unknown, fold.test_idx).any()
    plan = plan_folds(s, "official")
    assert plan.left_out == {"unknown_speaker": int((s.split[unknown] == "test").sum()),
                             "unknown_speaker_train_only": len(in_train_split)}
    with pytest.raises(ValueError, match="speaker_unknown"):
        plan_folds(s, "speakers", test_speakers=["msp:unknown:3"])


def test_repeats_use_seed_plus_r_and_deterministic_protocols_run_once(data):
    plan = plan_folds(data, "kfold", n_folds=4, seed=7, repeats=3)
    assert plan.repeats == 3 and len(plan.folds) == 12 and plan.folds_per_repeat == 4
    assert [f.name for f in plan.folds[:5]] == ["r0.fold0", "r0.fold1", "r0.fold2", "r0.fold3", "r1.fold0"]
    for r in range(3):
        single = make_folds(data, "kfold", n_folds=4, seed=7 + r)
        mine = [f for f in plan.folds if f.repeat == r]
        assert [f.test_speakers for f in mine] == [f.test_speakers for f in single]
    loso = plan_folds(data, "loso", repeats=5)
    assert loso.repeats == 1 and len(loso.folds) == 3
    assert any("deterministic" in n and "repeats=5" in n for n in loso.notes)


def test_leave_one_speaker_out_runs_once_whatever_the_repeats():
    """n_folds = the number of speakers: every seed gives the same folds, so repeats must not count them again
    (five copies of the same folds shrink the interval by a third for nothing)."""
    from evaluation.embeddings_io import EmbeddingSet
    from evaluation.protocols import plan_folds

    rng = np.random.default_rng(0)
    speakers = np.repeat([f"s{i}" for i in range(4)], 12)
    emotions = np.tile(["a", "b", "c"], 16)
    es = EmbeddingSet(rng.normal(size=(48, 3)).astype(np.float32), emotions, speakers)
    plan = plan_folds(es, "kfold", n_folds=4, seed=0, repeats=5)
    assert plan.repeats == 1 and len(plan.folds) == 4 and plan.leave_one_speaker_out
    assert any("leave-one-speaker-out" in n for n in plan.notes)
    assert sorted(f.test_speakers for f in plan.folds) == [("s0",), ("s1",), ("s2",), ("s3",)]
    assert plan_folds(es, "kfold", n_folds=2, seed=0, repeats=3).repeats == 3  # real k-fold still repeats
