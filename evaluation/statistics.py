"""Uncertainty of fold-wise scores: intervals over folds x repeats, and "is A better than B?".

Fold scores of (repeated) k-fold are not independent (training parts overlap, repeats reuse the
same rows), so the plain t-interval over folds is too narrow. Both the interval and the paired test
use the Nadeau & Bengio (2003) corrected variance (1/J + n_test/n_train) * s^2 over the J fold
scores, with J - 1 degrees of freedom: the "corrected repeated k-fold cv test" of Bouckaert &
Frank (2004). Wilcoxon's signed-rank test and a bootstrap over folds are reported beside it; both
treat folds as independent and are therefore optimistic.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import stats

INTERVAL_METHOD = "t-interval over folds x repeats with the Nadeau-Bengio corrected variance"


def corrected_t_interval(scores: Sequence[float], test_train_ratio: float, confidence: float = 0.95,
                         bounds: tuple[float, float] | None = None) -> dict | None:
    """Interval for the mean of J fold scores; None for a single fold (no spread to estimate).

    bounds: the range the score cannot leave (e.g. (0, 1) for accuracies): the interval is cut to
    it and `clipped` says so.
    """
    x = np.asarray(scores, dtype=np.float64)
    if len(x) < 2:
        return None
    if test_train_ratio < 0:
        raise ValueError(f"test_train_ratio must be >= 0, got {test_train_ratio}")
    se = np.sqrt((1.0 / len(x) + test_train_ratio) * x.var(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * se)
    mean = float(x.mean())
    low, high = mean - half, mean + half
    clipped = False
    if bounds is not None:
        clipped = low < bounds[0] or high > bounds[1]
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return {"low": low, "high": high, "confidence": confidence, "n": int(len(x)),
            "test_train_ratio": float(test_train_ratio), "method": INTERVAL_METHOD, "clipped": clipped}


def paired_comparison(scores_a: Sequence[float], scores_b: Sequence[float], test_train_ratio: float | None = None,
                      confidence: float = 0.95, n_bootstrap: int = 10_000, seed: int = 0) -> dict:
    """Compare two methods scored on the same folds (scores aligned: fold i of A is fold i of B).

    test_train_ratio: mean test rows / training rows of the folds, for the corrected resampled
        t-test (omitted, with a note, when None). The verdict rests on that test when present,
        otherwise on Wilcoxon and the bootstrap interval together.
    """
    a, b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_comparison needs aligned 1-D per-fold scores, got {a.size} and {b.size} scores")
    if len(a) < 2:
        raise ValueError(f"paired_comparison needs at least 2 folds, got {len(a)}")
    d = a - b
    alpha = 1 - confidence
    out: dict = {"n": int(len(d)), "mean_a": float(a.mean()), "mean_b": float(b.mean()),
                 "mean_difference": float(d.mean()), "std_difference": float(d.std(ddof=1)),
                 "wins_a": int((d > 0).sum()), "wins_b": int((d < 0).sum()), "ties": int((d == 0).sum()),
                 "confidence": confidence, "notes": []}

    if np.all(d == 0):
        out["wilcoxon"] = {"statistic": None, "p_value": 1.0}
    else:
        w = stats.wilcoxon(a, b, zero_method="wilcox", alternative="two-sided")
        out["wilcoxon"] = {"statistic": float(w.statistic), "p_value": float(w.pvalue)}

    if np.ptp(d) == 0:
        lo = hi = float(d[0])
    else:
        boot = stats.bootstrap((d,), np.mean, n_resamples=n_bootstrap, confidence_level=confidence,
                               method="percentile", rng=np.random.default_rng(seed))
        lo, hi = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
    out["bootstrap"] = {"low": lo, "high": hi, "n_resamples": n_bootstrap, "method": "percentile, over folds"}

    if test_train_ratio is None:
        out["corrected_t"] = None
        out["notes"].append("corrected resampled t-test skipped: pass test_train_ratio (mean n_test / n_train)")
        significant = out["wilcoxon"]["p_value"] < alpha and (lo > 0 or hi < 0)
    else:
        var = (1.0 / len(d) + test_train_ratio) * d.var(ddof=1)
        if var == 0:
            t_stat, p = (0.0, 1.0) if d.mean() == 0 else (float(np.sign(d.mean()) * np.inf), 0.0)
        else:
            t_stat = float(d.mean() / np.sqrt(var))
            p = float(2 * stats.t.sf(abs(t_stat), len(d) - 1))
        half = float(stats.t.ppf(0.5 + confidence / 2, len(d) - 1) * np.sqrt(var))
        out["corrected_t"] = {"statistic": t_stat, "p_value": p, "df": int(len(d) - 1),
                              "test_train_ratio": float(test_train_ratio),
                              "low": float(d.mean()) - half, "high": float(d.mean()) + half}
        significant = p < alpha
    out["significant"] = bool(significant)
    pct = f"{100 * confidence:g}%"
    if not significant:
        out["verdict"] = f"no significant difference at {pct}: the gap ({out['mean_difference']:+.4f}) is within the noise"
    else:
        out["verdict"] = f"{'A > B' if d.mean() > 0 else 'B > A'} at {pct} (mean difference {out['mean_difference']:+.4f})"
    return out
