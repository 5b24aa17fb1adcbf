from __future__ import annotations

import pytest

from evaluation.balancing import balance_training, undersample_indices
from evaluation.metrics import compute_metrics, summarize_folds

# Hand-made case: truth a,a,a,b,b,c; predicted a,a,b,b,c,c.
# Confusion rows (truth) a:[2,1,0] b:[0,1,1] c:[0,0,1]; recalls 2/3, 1/2, 1; precisions 1, 1/2, 1/2.
# F1: a = 2*(1*2/3)/(1+2/3) = 4/5, b = 1/2, c = 2*(1/2*1)/(3/2) = 2/3.
Y_TRUE = ["a", "a", "a", "b", "b", "c"]
Y_PRED = ["a", "a", "b", "b", "c", "c"]


def test_hand_made_confusion_values():
    m = compute_metrics(Y_TRUE, Y_PRED, ["a", "b", "c"])
    assert m["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["wa"] == pytest.approx(4 / 6)
    assert m["ua"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert m["per_class_f1"] == pytest.approx({"a": 4 / 5, "b": 1 / 2, "c": 2 / 3})
    assert m["macro_f1"] == pytest.approx((4 / 5 + 1 / 2 + 2 / 3) / 3)
    assert m["weighted_f1"] == pytest.approx((3 * 4 / 5 + 2 * 1 / 2 + 1 * 2 / 3) / 6)


def test_label_order_is_fixed_and_absent_labels_do_not_dilute_averages():
    m = compute_metrics(Y_TRUE, Y_PRED, ["c", "d", "a", "b"])
    assert list(m["per_class_f1"]) == ["c", "d", "a", "b"]
    assert m["per_class_f1"]["d"] == 0.0
    assert m["confusion"][0] == [1, 0, 0, 0]  # row c
    assert m["confusion"][1] == [0, 0, 0, 0]  # row d
    assert m["macro_f1"] == pytest.approx((4 / 5 + 1 / 2 + 2 / 3) / 3)
    assert m["ua"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)


def test_unknown_predicted_label_is_an_error():
    with pytest.raises(ValueError, match=r"\['z'\] not in the label order"):
        compute_metrics(["a", "b"], ["a", "z"], ["a", "b"])


def test_summarize_mean_std_and_summed_confusion():
    f1 = compute_metrics(Y_TRUE, Y_PRED, ["a", "b", "c"])
    f2 = compute_metrics(Y_TRUE, Y_TRUE, ["a", "b", "c"])
    s = summarize_folds([f1, f2], ["a", "b", "c"])
    assert s["wa"] == pytest.approx((4 / 6 + 1) / 2)
    assert s["wa_std"] == pytest.approx((1 - 4 / 6) / 2)
    assert s["per_class_f1"]["b"] == pytest.approx((1 / 2 + 1) / 2)
    assert s["confusion"] == [[5, 1, 0], [0, 3, 1], [0, 0, 2]]


def test_undersample_counts_and_seed():
    labels = ["a"] * 10 + ["b"] * 3 + ["c"] * 7
    idx = undersample_indices(labels, seed=1)
    picked = [labels[i] for i in idx]
    assert {c: picked.count(c) for c in "abc"} == {"a": 3, "b": 3, "c": 3}
    assert (idx == undersample_indices(labels, seed=1)).all()
    assert not (idx == undersample_indices(labels, seed=2)).all()
    assert [i for i in idx if labels[i] == "b"] == [10, 11, 12]  # the minority is kept whole


def test_balance_training_modes():
    labels = ["a"] * 4 + ["b"] * 2
    idx, cw = balance_training(labels, "none")
    assert idx.tolist() == list(range(6)) and cw is None
    idx, cw = balance_training(labels, "class_weight")
    assert idx.tolist() == list(range(6)) and cw == "balanced"
    idx, cw = balance_training(labels, "undersample", seed=0)
    assert len(idx) == 4 and cw is None
    with pytest.raises(ValueError, match="unknown balancing 'oversample'"):
        balance_training(labels, "oversample")


def test_unweighted_accuracy_is_sklearns_balanced_accuracy_to_the_last_bit():
    """The one UA (evaluate.py, crossval.py, the validation probe) equals sklearn's balanced accuracy exactly,
    also when a class is only predicted (a wrong guess, not a class of its own), without sklearn's warning."""
    import warnings

    import numpy as np
    from sklearn.metrics import balanced_accuracy_score

    from evaluation.metrics import unweighted_accuracy

    rng = np.random.default_rng(0)
    for n_classes, n in [(2, 7), (4, 50), (7, 333)]:
        y_true = rng.integers(0, n_classes - 1, n)  # the last class never occurs in the truth
        y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, n_classes, n))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = balanced_accuracy_score(y_true, y_pred)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert unweighted_accuracy(y_true, y_pred) == expected
            names = np.array(["angry", "happy", "neutral", "sad", "x", "y", "z"])
            assert unweighted_accuracy(names[y_true], names[y_pred]) == expected
    assert unweighted_accuracy([0, 0, 0, 0, 1, 1, 2, 2], [0, 0, 0, 0, 0, 1, 2, 3]) == pytest.approx((1 + 0.5 + 0.5) / 3)
    with pytest.raises(ValueError, match="non-empty"):
        unweighted_accuracy([], [])
