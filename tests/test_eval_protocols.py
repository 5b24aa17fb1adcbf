from __future__ import annotations

import numpy as np
import pytest

from evaluation.embeddings_io import EmbeddingSet, synthetic_set
from evaluation.protocols import make_folds


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
