"""What validation scores, on held-out validation speakers only: verification EER and an emotion probe.

The probe answers the question emotion objectives are selected on: how well does a linear classifier
read emotion from the embeddings of speakers it never saw? Every validation clip is predicted by a
standardised logistic regression fitted on the OTHER validation speakers (GroupKFold over speakers),
and the predictions are scored as evaluate.py scores them: UA = mean per-class recall over the classes
present (`evaluation.metrics.unweighted_accuracy`), WA = accuracy. Nothing here ever sees a test speaker:
callers pass validation speakers' data only.

The verification EER is `evaluation.eer.compute_eer`, the one EER (evaluate.py's too).
"""
from __future__ import annotations

import numpy as np

from evaluation.metrics import unweighted_accuracy


def speaker_independent_probe(x: np.ndarray, y: np.ndarray, speakers: np.ndarray, n_folds: int = 5,
                              C: float = 1.0) -> np.ndarray:
    """Out-of-fold emotion predictions: each row comes from a probe fitted on other speakers only."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y, speakers = np.asarray(x, dtype=np.float64), np.asarray(y), np.asarray(speakers)
    n_speakers = len(np.unique(speakers))
    if n_speakers < 2:
        raise ValueError(f"speaker_independent_probe needs at least 2 speakers, got {n_speakers}")
    pred = np.empty_like(y)
    for train, test in GroupKFold(n_splits=min(int(n_folds), n_speakers)).split(x, y, speakers):
        classes = np.unique(y[train])
        if len(classes) == 1:
            pred[test] = classes[0]
            continue
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
        pred[test] = probe.fit(x[train], y[train]).predict(x[test])
    return pred


def unweighted_weighted_accuracy(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """(UA, WA): UA averages per-class recall over the classes present in `target` (evaluation/metrics.py)."""
    pred, target = np.asarray(pred), np.asarray(target)
    return unweighted_accuracy(target, pred), float(np.mean(pred == target))
