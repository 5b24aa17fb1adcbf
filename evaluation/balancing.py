"""Class balancing of the training part of a fold (never the test part: scores must reflect the corpus).

"undersample" reproduces the seed paper's code (every class cut to the minority count, seeded);
"class_weight" keeps every row and reweights the loss instead (sklearn's "balanced").
"""
from __future__ import annotations

from collections import Counter

import numpy as np

BALANCING = ("none", "undersample", "class_weight")


def check_balancing(balancing: str) -> str:
    if balancing not in BALANCING:
        raise ValueError(f"unknown balancing {balancing!r}; expected one of {list(BALANCING)}")
    return balancing


def undersample_indices(labels, seed: int = 0) -> np.ndarray:
    """Sorted row indices keeping `min class count` rows of every class, chosen with `seed`."""
    labels = np.asarray(labels)
    counts = Counter(labels.tolist())
    if not counts:
        raise ValueError("undersample_indices: no labels")
    n_min = min(counts.values())
    rng = np.random.default_rng(seed)
    keep = [rng.choice(np.flatnonzero(labels == label), size=n_min, replace=False) for label in sorted(counts)]
    return np.sort(np.concatenate(keep))


def balance_training(labels, balancing: str, seed: int = 0) -> tuple[np.ndarray, str | None]:
    """Return (row indices to train on, class_weight for the head or None)."""
    check_balancing(balancing)
    labels = np.asarray(labels)
    if balancing == "undersample":
        return undersample_indices(labels, seed), None
    return np.arange(len(labels)), ("balanced" if balancing == "class_weight" else None)
