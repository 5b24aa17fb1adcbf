from __future__ import annotations

import logging

import numpy as np
import pytest

from evaluation.embeddings_io import synthetic_set
from evaluation.heads import HEADS, DetectionHead, SadFirstHead, SVMHead, make_head
from evaluation.metrics import compute_metrics
from sklearn.base import clone


def _split(sep: float, seed: int = 0, **kw):
    """Train on the first 8 speakers, test on the last 4 (speaker-independent)."""
    s = synthetic_set(n_speakers=12, clips_per_speaker=24, dim=16, separation=sep, seed=seed, **kw)
    train = np.isin(s.speaker, [f"spk{k:03d}" for k in range(8)])
    return s.embeddings[train], s.emotion[train], s.speaker[train], s.embeddings[~train], s.emotion[~train]


def _ua(head, X_te, y_te) -> float:
    labels = head.scoring_order(sorted(set(y_te.tolist())))
    return compute_metrics(head.scoring_labels(y_te), head.predict(X_te), labels)["ua"]


@pytest.mark.parametrize("name", sorted(HEADS))
def test_heads_learn_separable_emotion(name):
    X, y, spk, X_te, y_te = _split(sep=1.0)
    head = make_head(name).fit(X, y, groups=spk)
    chance = 1 / len(head.scoring_order(sorted(set(y.tolist()))))
    assert _ua(head, X_te, y_te) > chance + 0.6 * (1 - chance)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_heads_are_at_chance_without_emotion_signal(name):
    X, y, spk, X_te, y_te = _split(sep=0.0, seed=3)
    head = make_head(name).fit(X, y, groups=spk)
    chance = 1 / len(head.scoring_order(sorted(set(y.tolist()))))
    assert abs(_ua(head, X_te, y_te) - chance) < 0.12


def test_detection_is_scored_on_the_binary_task():
    X, y, spk, X_te, y_te = _split(sep=1.0)
    head = DetectionHead().fit(X, y)
    assert sorted(head.classes_.tolist()) == ["emotional", "neutral"]
    assert set(head.predict(X_te).tolist()) <= {"neutral", "emotional"}
    assert head.scoring_labels(["sad", "neutral", "angry"]).tolist() == ["emotional", "neutral", "emotional"]
    assert head.model_.named_steps["logreg"].class_weight == "balanced"
    with pytest.raises(ValueError, match="'neutral' not in the training labels"):
        DetectionHead().fit(X[y != "neutral"], y[y != "neutral"])


def test_sad_first_stage2_sees_only_non_sad_rows_and_routing_is_respected():
    # Sad far from the rest: stage 1 should be perfect; the other classes overlap a bit.
    X, y, spk, X_te, y_te = _split(sep=0.6, seed=1)
    X, X_te = X.copy(), X_te.copy()
    X[y == "sad", 0] += 5.0
    X_te[y_te == "sad", 0] += 5.0
    head = SadFirstHead().fit(X, y, groups=spk)
    assert "sad" not in head.stage2_.classes_.tolist()
    assert head.stage2_.model_.named_steps["svm"].shape_fit_[0] == int((y != "sad").sum())
    routed, pred = head.predict_stages(X_te)
    np.testing.assert_array_equal(routed, y_te == "sad")  # stage 1 perfect on this data
    assert (pred[routed] == "sad").all()
    np.testing.assert_array_equal(pred[~routed], head.stage2_.predict(X_te[~routed]))
    np.testing.assert_array_equal(head.predict(X_te), pred)


def test_sad_first_routing_with_imperfect_stage1():
    X, y, spk, X_te, y_te = _split(sep=0.3, seed=2)
    head = SadFirstHead().fit(X, y)
    routed, pred = head.predict_stages(X_te)
    assert 0 < routed.sum() < len(X_te)
    np.testing.assert_array_equal(routed, head.stage1_.predict(X_te) == 1)
    assert (pred[routed] == "sad").all() and not (pred[~routed] == "sad").any()


def test_sad_first_without_sad_label():
    X, y, *_ = _split(sep=1.0)
    keep = y != "sad"
    with pytest.raises(ValueError, match="'sad' not in the training labels"):
        SadFirstHead().fit(X[keep], y[keep])


def test_nystroem_switch_above_threshold_still_learns(caplog):
    X, y, spk, X_te, y_te = _split(sep=1.0)
    exact = SVMHead(nystroem_threshold=len(X)).fit(X, y)
    assert not exact.uses_nystroem_
    assert type(exact.model_.named_steps["svm"]).__name__ == "SVC"
    with caplog.at_level(logging.WARNING, logger="evaluation.heads"):
        approx = SVMHead(nystroem_threshold=len(X) - 1, nystroem_components=60).fit(X, y)
    assert approx.uses_nystroem_
    assert "Nystroem(n_components=60, gamma=0.1)" in caplog.text
    assert approx.model_.named_steps["nystroem"].n_components == 60
    assert type(approx.model_.named_steps["svm"]).__name__ == "RidgeClassifier"
    assert approx.model_.named_steps["svm"].alpha == pytest.approx(1 / 2000)
    assert _ua(approx, X_te, y_te) > 0.65
    svc = SVMHead(nystroem_threshold=10, nystroem_components=60, nystroem_solver="linear_svc").fit(X, y)
    assert type(svc.model_.named_steps["svm"]).__name__ == "LinearSVC"
    assert _ua(svc, X_te, y_te) > 0.65
    with pytest.raises(ValueError, match="nystroem_solver must be 'ridge' or 'linear_svc', got 'sgd'"):
        SVMHead(nystroem_threshold=10, nystroem_solver="sgd").fit(X, y)


def test_grid_search_uses_speaker_folds_of_training_rows():
    X, y, spk, X_te, y_te = _split(sep=1.0)
    head = SVMHead(param_grid={"C": [1000.0], "gamma": [1e4, 0.1]}, inner_folds=3).fit(X, y, groups=spk)
    assert head.best_params_ == {"C": 1000.0, "gamma": 0.1}  # gamma=1e4: kernel ~ identity, learns nothing
    assert head.gamma_ == 0.1
    assert _ua(head, X_te, y_te) > 0.65
    with pytest.raises(ValueError, match="needs `groups`"):
        SVMHead(param_grid={"C": [1.0]}).fit(X, y)
    with pytest.raises(ValueError, match=r"8 training speakers < inner_folds=9"):
        SVMHead(param_grid={"C": [1.0]}, inner_folds=9).fit(X, y, groups=spk)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['kernel'\]"):
        SVMHead(param_grid={"kernel": ["linear"]}).fit(X, y, groups=spk)


def test_gamma_scale_matches_sklearn_rule():
    X, y, *_ = _split(sep=1.0)
    head = SVMHead(gamma="scale").fit(X, y)
    assert head.gamma_ == pytest.approx(1.0 / (X.shape[1] * X.var()))
    assert SVMHead(gamma="scale", standardize=True).fit(X, y).gamma_ == pytest.approx(1.0 / X.shape[1])
    with pytest.raises(ValueError, match="gamma must be a positive float"):
        SVMHead(gamma=-1.0).fit(X, y)


def test_make_head_rejects_unknown_names_and_arguments():
    with pytest.raises(ValueError, match=r"unknown head 'svn'; available heads: \['auto', 'detection', 'linear', 'sad_first', 'svm', 'weighted_layers'\]"):
        make_head("svn")
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['c'\].*'C'"):
        make_head("svm", c=10)
    head = make_head("sad_first", svm={"C": 5.0}, sad_label="triste")
    assert head.svm == {"C": 5.0} and head.sad_label == "triste"
    assert make_head("svm").get_params()["C"] == 1000.0 and make_head("svm").gamma == 0.1
    with pytest.raises(ValueError, match=r"sad_first.*unknown svm parameter\(s\) \['gama'\].*'gamma'"):
        make_head("sad_first", svm={"gama": 1.0})


def test_sad_first_stages_use_the_one_svm_parameter_group():
    X, y, spk, *_ = _split(sep=1.0)
    group = {"C": 7.0, "gamma": 0.5, "standardize": True, "nystroem_threshold": 10**9}
    head = SadFirstHead(svm=group, random_state=3).fit(X, y, groups=spk)
    for stage in (head.stage1_, head.stage2_):
        assert {k: stage.get_params()[k] for k in group} == group and stage.random_state == 3
    # the defaults are SVMHead's (the paper's C=1000, gamma=0.1)
    default = SadFirstHead().fit(X, y)
    assert (default.stage1_.C, default.stage1_.gamma) == (1000.0, 0.1)
    # sklearn compatibility: get_params / clone keep the group, and a clone fits the same model
    twin = clone(head)
    assert twin.get_params()["svm"] == group and twin.get_params()["svm"] is not group
    np.testing.assert_array_equal(twin.fit(X, y, groups=spk).predict(X), head.predict(X))
    assert set(SadFirstHead().get_params()) == {"sad_label", "svm", "class_weight", "random_state"}


def test_nystroem_is_decided_once_for_grid_search_and_refit(monkeypatch):
    X, y, spk, *_ = _split(sep=1.0)
    decisions = []
    build = SVMHead._build

    def spy(self, X_fit):
        pipe = build(self, X_fit)
        decisions.append((len(X_fit), self.uses_nystroem_))
        return pipe

    monkeypatch.setattr(SVMHead, "_build", spy)
    # inner folds train on ~2/3 of the rows (below the threshold), the refit on all of them (above)
    head = SVMHead(param_grid={"C": [1.0, 1000.0]}, inner_folds=3, nystroem_threshold=len(X) - 1,
                   nystroem_components=30).fit(X, y, groups=spk)
    assert len(decisions) == 2 * 3 + 1 and any(n < len(X) - 1 for n, _ in decisions)
    assert {used for _, used in decisions} == {True}, decisions
    assert head.uses_nystroem_
    decisions.clear()
    SVMHead(use_nystroem=False, nystroem_threshold=0).fit(X, y)  # forced by the caller
    assert decisions == [(len(X), False)]


# ----- features=auto: the pick of every fold, from its training speakers only -----
def _auto_data(signal: str, seed: int = 0):
    """8 speakers x 24 clips, 3 classes; the class shows in the embedding columns, or in layer 2 only."""
    rng = np.random.default_rng(seed)
    n, emb, widths = 192, 8, [6, 6, 6]
    y = np.tile(np.array(["a", "b", "c"]), n // 3)
    groups = np.repeat([f"s{i}" for i in range(8)], n // 8)
    X = rng.normal(size=(n, emb + sum(widths)))
    X += rng.normal(size=(8, X.shape[1]))[np.repeat(np.arange(8), n // 8)]  # speaker offsets, as speech has
    code = {"a": 0, "b": 1, "c": 2}
    lo = 0 if signal == "embedding" else emb + widths[0] + widths[1]
    for i, label in enumerate(y):
        X[i, lo + code[label]] += 3.0
    return X, y, groups, emb, widths


@pytest.mark.parametrize("signal, expected", [("embedding", "embedding/"), ("layer", "layer_stats[")])
def test_auto_picks_the_features_that_carry_the_emotion(signal, expected):
    from evaluation.heads import make_head

    X, y, groups, emb, widths = _auto_data(signal)
    head = make_head("auto", embedding_dim=emb, layer_widths=widths, layer_names=["l0", "l1", "l2"], inner_folds=4)
    head.fit(X[:144], y[:144], groups=groups[:144])  # six training speakers; the last two are the "test" ones
    assert head.pick_.startswith(expected), head.inner_scores_
    if signal == "layer":  # a subset with the one informative layer (l2 alone, or l1 and l2)
        assert "l2" in head.pick_.split("/")[0] and "l0" not in head.pick_.split("/")[0], head.pick_
    assert set(head.inner_scores_) == {c[0] for c in head.candidates()}
    assert (head.predict(X[144:]) == y[144:]).mean() > 0.7  # two unseen speakers, chance 1/3


def test_auto_never_fits_on_a_speaker_outside_its_training_rows(monkeypatch):
    """The inner folds split the training rows by speaker: no candidate is scored on rows it was fit on, and the
    rows of the outer test speakers (not passed in) cannot enter."""
    from evaluation import heads as H

    X, y, groups, emb, widths = _auto_data("embedding")
    seen = []
    real = H.make_head

    def spy(name, **kw):
        h = real(name, **kw)
        fit = h.fit

        def fit_and_record(Xf, yf, groups=None):
            seen.append(set(groups.tolist()) if groups is not None else None)
            return fit(Xf, yf, groups=groups)

        h.fit = fit_and_record
        return h

    monkeypatch.setattr(H, "make_head", spy)
    head = H.AutoFeaturesHead(embedding_dim=emb, layer_widths=widths, inner_folds=3)
    head.fit(X[:144], y[:144], groups=groups[:144])
    train_speakers = set(groups[:144].tolist())
    assert seen and all(s is None or s <= train_speakers for s in seen)
    inner = [s for s in seen if s is not None and s != train_speakers]
    assert inner and all(len(s) == 4 for s in inner)  # 3 inner folds of 6 speakers: 4 fit, 2 scored
