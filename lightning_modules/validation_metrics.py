"""What validation scores, on held-out validation speakers only: verification EER and an emotion probe.

The probe answers the question emotion objectives are selected on: how well does a linear classifier
read emotion from the embeddings of speakers it never saw? Every validation clip is predicted by a
standardised logistic regression fitted on the OTHER validation speakers (GroupKFold over speakers),
and the predictions are scored with torchmetrics: UA = mean per-class recall over the classes present,
WA = accuracy. Nothing here ever sees a test speaker: callers pass validation speakers' data only.

EER comes from torchmetrics' ROC (tied scores share one operating point); `evaluation/eer.py` remains
the offline implementation used by evaluate.py.
"""
from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.classification import binary_roc, multiclass_accuracy, multiclass_recall


def roc_eer(scores: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> float:
    """Equal error rate of verification scores (higher = same) for binary labels (1 = same speaker),
    linearly interpolated where the false-reject and false-accept rates cross."""
    scores = torch.as_tensor(np.asarray(scores), dtype=torch.float64)
    labels = torch.as_tensor(np.asarray(labels)).long()
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == len(labels):
        raise ValueError(f"roc_eer needs target and non-target trials, got {n_pos} of {len(labels)} targets")
    span = scores.max() - scores.min()
    # torchmetrics reads scores outside [0, 1] as logits (sigmoid): rescale instead (monotonic, ties kept).
    scores = (scores - scores.min()) / span if span > 0 else torch.zeros_like(scores)
    far, tpr, _ = binary_roc(scores, labels, thresholds=None)
    far, frr = far.double(), 1.0 - tpr.double()
    i = int(torch.nonzero(frr <= far)[0])  # far rises, frr falls: the first crossing point
    if i == 0 or frr[i] == far[i]:
        return float(far[i])
    d0, d1 = frr[i - 1] - far[i - 1], frr[i] - far[i]
    t = d0 / (d0 - d1)
    return float(far[i - 1] + t * (far[i] - far[i - 1]))


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
    """(UA, WA) with torchmetrics: UA averages per-class recall over the classes present in `target`."""
    pred_t, target_t = torch.as_tensor(np.asarray(pred)).long(), torch.as_tensor(np.asarray(target)).long()
    n_classes = int(max(pred_t.max(), target_t.max())) + 1
    recall = multiclass_recall(pred_t, target_t, num_classes=n_classes, average=None)
    present = torch.bincount(target_t, minlength=n_classes) > 0
    wa = multiclass_accuracy(pred_t, target_t, num_classes=n_classes, average="micro")
    return float(recall[present].mean()), float(wa)
