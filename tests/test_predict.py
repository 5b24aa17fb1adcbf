"""predict.py and the model bundles evaluate.py exports: head probabilities, the safe (skops) head files,
the encoder hash check, the bad-input matrix at the predict stage, the evaluate -> predict round trip
and the interface for SER fine-tuning checkpoints."""
from __future__ import annotations

import numpy as np
import pytest

from evaluation.embeddings_io import synthetic_set
from evaluation.heads import SadFirstHead, SVMHead, make_head


def _split(sep: float = 1.0, seed: int = 0):
    s = synthetic_set(n_speakers=10, clips_per_speaker=24, dim=16, separation=sep, seed=seed)
    train = np.isin(s.speaker, [f"spk{k:03d}" for k in range(7)])
    return s.embeddings[train], s.emotion[train], s.speaker[train], s.embeddings[~train], s.emotion[~train]


# ----- probabilities of the heads (what an exported head reports per class) -----
@pytest.mark.parametrize("name", ["linear", "detection", "svm", "sad_first"])
def test_exported_heads_give_probabilities_that_rank_the_true_class(name):
    X, y, spk, X_te, y_te = _split()
    kwargs = {"svm": {"probability": True}} if name == "sad_first" else {"probability": True} if name == "svm" else {}
    head = make_head(name, **kwargs).fit(X, y, groups=spk)
    proba = head.predict_proba(X_te)
    assert proba.shape == (len(X_te), len(head.classes_))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    assert (proba >= 0).all()
    truth = head.scoring_labels(y_te)
    col = {c: i for i, c in enumerate(head.classes_)}
    p_true = proba[np.arange(len(truth)), [col[t] for t in truth]]
    # learnable data: the true class gets clearly more than chance on held-out speakers
    assert p_true.mean() > 1.5 / len(head.classes_)


def test_svm_probability_does_not_change_its_decisions():
    """The exported SVM is refit with calibrated probabilities; its predictions are the evaluated model's."""
    X, y, spk, X_te, _ = _split(sep=0.4, seed=1)
    plain = SVMHead().fit(X, y, groups=spk)
    calibrated = SVMHead(probability=True).fit(X, y, groups=spk)
    np.testing.assert_array_equal(plain.predict(X_te), calibrated.predict(X_te))
    with pytest.raises(ValueError, match="probability=True"):
        plain.predict_proba(X_te)


def test_svm_calibration_folds_are_speaker_disjoint():
    X, y, spk, *_ = _split()
    head = SVMHead(probability=True, calibration_folds=3).fit(X, y, groups=spk)
    assert head.calibration_ == {"method": "sigmoid", "folds": 3, "speaker_disjoint": True}
    no_groups = SVMHead(probability=True, calibration_folds=3).fit(X, y)
    assert no_groups.calibration_["speaker_disjoint"] is False


def test_sad_first_probabilities_combine_its_two_stages():
    X, y, spk, X_te, _ = _split(sep=0.5, seed=2)
    head = SadFirstHead(svm={"probability": True}).fit(X, y, groups=spk)
    proba = head.predict_proba(X_te)
    classes = head.classes_.tolist()
    p1 = head.stage1_.predict_proba(X_te)[:, head.stage1_.classes_.tolist().index(1)]
    p2 = head.stage2_.predict_proba(X_te)
    np.testing.assert_allclose(proba[:, classes.index("sad")], p1, atol=1e-12)
    for j, c in enumerate(head.stage2_.classes_):
        np.testing.assert_allclose(proba[:, classes.index(c)], (1 - p1) * p2[:, j], atol=1e-12)
