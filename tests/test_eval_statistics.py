"""Intervals over folds x repeats and the paired comparison of two embedding sets on the same folds."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from evaluation.statistics import corrected_t_interval, paired_comparison


def test_corrected_interval_is_the_nadeau_bengio_t_interval():
    scores = np.array([0.71, 0.80, 0.64, 0.77, 0.69, 0.74, 0.82, 0.66, 0.70, 0.79])
    ci = corrected_t_interval(scores, test_train_ratio=0.25)
    se = np.sqrt((1 / 10 + 0.25) * scores.var(ddof=1))
    half = stats.t.ppf(0.975, 9) * se
    assert ci["low"] == pytest.approx(scores.mean() - half) and ci["high"] == pytest.approx(scores.mean() + half)
    assert ci["n"] == 10 and ci["confidence"] == 0.95 and "Nadeau" in ci["method"]
    # with no train/test overlap correction it is the textbook t-interval
    plain = corrected_t_interval(scores, test_train_ratio=0.0)
    lo, hi = stats.t.interval(0.95, 9, loc=scores.mean(), scale=stats.sem(scores))
    assert (plain["low"], plain["high"]) == (pytest.approx(lo), pytest.approx(hi))
    assert ci["high"] - ci["low"] > plain["high"] - plain["low"]
    assert corrected_t_interval([0.7], test_train_ratio=0.25) is None  # one fold: no interval
    # a score that cannot exceed 1: the interval is cut to the range and says so
    high = corrected_t_interval([0.99, 0.80, 1.0, 0.95], test_train_ratio=0.25, bounds=(0.0, 1.0))
    assert high["high"] == 1.0 and high["clipped"] and not ci["clipped"]
    assert corrected_t_interval([0.99, 0.80, 1.0, 0.95], test_train_ratio=0.25)["high"] > 1.0


def test_paired_comparison_finds_a_consistent_gain():
    rng = np.random.default_rng(0)
    b = rng.uniform(0.6, 0.8, size=25)
    a = b + 0.04 + rng.normal(scale=0.01, size=25)
    out = paired_comparison(a, b, test_train_ratio=0.25)
    assert out["n"] == 25 and out["mean_difference"] == pytest.approx(np.mean(a - b))
    assert out["wins_a"] == 25 and out["wins_b"] == 0
    assert out["wilcoxon"]["p_value"] < 0.001
    assert out["corrected_t"]["p_value"] < 0.01
    lo, hi = out["bootstrap"]["low"], out["bootstrap"]["high"]
    assert 0 < lo < out["mean_difference"] < hi
    assert out["significant"] and out["verdict"].startswith("A > B")
    flipped = paired_comparison(b, a, test_train_ratio=0.25)
    assert flipped["verdict"].startswith("B > A") and flipped["mean_difference"] == pytest.approx(-out["mean_difference"])


def test_paired_comparison_reports_noise_as_noise():
    rng = np.random.default_rng(1)
    b = rng.uniform(0.6, 0.8, size=25)
    a = b + rng.normal(scale=0.03, size=25)
    out = paired_comparison(a, b, test_train_ratio=0.25)
    assert not out["significant"] and "no significant difference" in out["verdict"]
    assert out["corrected_t"]["p_value"] > 0.05
    same = paired_comparison(b, b, test_train_ratio=0.25)  # every difference zero: no test can reject
    assert same["wilcoxon"]["p_value"] == 1.0 and same["corrected_t"]["p_value"] == 1.0 and not same["significant"]


def test_paired_comparison_without_fold_sizes_skips_the_corrected_test():
    out = paired_comparison([0.7, 0.8, 0.75], [0.6, 0.7, 0.7])
    assert out["corrected_t"] is None and "test_train_ratio" in out["notes"][0]


def test_paired_comparison_needs_aligned_scores():
    with pytest.raises(ValueError, match="3 and 2 scores"):
        paired_comparison([0.1, 0.2, 0.3], [0.1, 0.2])
    with pytest.raises(ValueError, match="at least 2"):
        paired_comparison([0.1], [0.2])
