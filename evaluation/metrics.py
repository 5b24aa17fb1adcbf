"""SER scores of one fold and their mean/std over folds, in a fixed label order.

WA = accuracy; UA = mean per-class recall over the classes present in the fold's truth
(sklearn's balanced accuracy, the SER "unweighted accuracy"); macro-F1 averages over the labels
seen in truth or predictions (sklearn's default); per-class F1 is reported for every label.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

SCALARS = ("wa", "ua", "macro_f1", "weighted_f1")


def unweighted_accuracy(y_true, y_pred) -> float:
    """UA: the mean recall over the classes present in `y_true`; a class only predicted is a wrong guess, not a
    class of its own. The same arithmetic as sklearn's balanced accuracy (equal to the last bit), without its
    warning for such a class. The one UA: evaluate.py, crossval.py and the validation probe use it."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1 or not len(y_true):
        raise ValueError(f"unweighted_accuracy: y_true {y_true.shape} and y_pred {y_pred.shape} must be equal, "
                         "non-empty 1-D")
    classes, row = np.unique(y_true, return_inverse=True)
    correct = np.bincount(row, weights=(y_true == y_pred), minlength=len(classes))
    return float(np.mean(correct / np.bincount(row, minlength=len(classes))))


def compute_metrics(y_true, y_pred, labels: Sequence[str]) -> dict:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = [str(l) for l in labels]
    if y_true.shape != y_pred.shape or y_true.ndim != 1 or not len(y_true):
        raise ValueError(f"compute_metrics: y_true {y_true.shape} and y_pred {y_pred.shape} must be equal, non-empty 1-D")
    outside = sorted((set(y_true.tolist()) | set(y_pred.tolist())) - set(labels))
    if outside:
        raise ValueError(f"compute_metrics: label(s) {outside} not in the label order {labels}")
    per_class = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    return {
        "wa": float(accuracy_score(y_true, y_pred)),
        "ua": unweighted_accuracy(y_true, y_pred),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
        "per_class_f1": {label: float(v) for label, v in zip(labels, per_class, strict=True)},
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),  # rows = truth, cols = predicted
        "n": int(len(y_true)),
    }


def summarize_folds(fold_metrics: Sequence[dict], labels: Sequence[str]) -> dict:
    """Mean and (population, ddof=0) std of the scalars over folds, mean per-class F1, summed confusion."""
    if not fold_metrics:
        raise ValueError("summarize_folds: no folds")
    out: dict = {}
    for key in SCALARS:
        values = np.array([m[key] for m in fold_metrics], dtype=np.float64)
        out[key] = float(values.mean())
        out[f"{key}_std"] = float(values.std())
    out["per_class_f1"] = {l: float(np.mean([m["per_class_f1"][l] for m in fold_metrics])) for l in labels}
    out["confusion"] = np.sum([np.asarray(m["confusion"]) for m in fold_metrics], axis=0).tolist()
    out["labels"] = list(labels)
    return out
