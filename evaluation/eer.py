"""Equal error rate of verification scores: the operating point where false accepts equal false rejects."""
from __future__ import annotations

import numpy as np


def compute_eer(scores, labels) -> float:
    """EER (fraction) of `scores` (higher = same) for binary `labels` (1 = same speaker).

    Read off sklearn's ROC curve, which puts tied scores at one operating point, so the result
    does not depend on the order of the trials (all-tied scores give 0.5); between two ROC points
    the EER is the linear interpolation where the false-reject and false-accept rates cross.
    """
    from sklearn.metrics import roc_curve

    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    if scores.shape != labels.shape:
        raise ValueError(f"compute_eer: scores {scores.shape} and labels {labels.shape} differ in shape")
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"compute_eer needs both target and non-target trials, got {n_pos} target and {n_neg} non-target")
    far, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    frr = 1.0 - tpr
    # far rises and frr falls along the curve: the first point with frr <= far ends the crossing segment.
    i = int(np.argmax(frr <= far))
    if i == 0 or frr[i] == far[i]:
        return float(far[i])
    d0, d1 = frr[i - 1] - far[i - 1], frr[i] - far[i]
    t = d0 / (d0 - d1)
    return float(far[i - 1] + t * (far[i] - far[i - 1]))


def pairwise_trials(embeddings: np.ndarray, speakers, max_pairs: int | None = None, seed: int = 0):
    """All (or a seeded sample of) unordered pairs: cosine scores and same-speaker labels."""
    e = np.asarray(embeddings, dtype=np.float32)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    spk = np.asarray(speakers)
    n = len(e)
    n_pairs = n * (n - 1) // 2
    if max_pairs is not None and n_pairs > max_pairs:
        # Sample pair ranks without materialising all n^2/2 index pairs, then unrank them.
        r = np.sort(np.random.default_rng(seed).choice(n_pairs, size=max_pairs, replace=False))
        i = (n - 2 - np.floor(np.sqrt(-8 * r + 4 * n * (n - 1) - 7) / 2 - 0.5)).astype(np.int64)
        j = (r + i + 1 - n * (n - 1) // 2 + (n - i) * ((n - i) - 1) // 2).astype(np.int64)
    else:
        i, j = np.triu_indices(n, k=1)
    scores = np.empty(len(i), dtype=np.float64)
    for s in range(0, len(i), 1_000_000):  # chunked: bounded memory for large sets
        scores[s : s + 1_000_000] = np.einsum("nd,nd->n", e[i[s : s + 1_000_000]], e[j[s : s + 1_000_000]])
    return scores, (spk[i] == spk[j]).astype(np.int64), i, j
