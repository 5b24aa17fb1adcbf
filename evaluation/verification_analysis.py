"""The seed paper's analysis of how emotion disturbs speaker verification with the same embeddings:
same-speaker cosine scores grouped by the pair's emotions, and EER when target trials share an
emotion vs when they do not (against the same non-target trials, so only the targets differ)."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from evaluation.eer import compute_eer, pairwise_trials
from evaluation.embeddings_io import EmbeddingSet

log = logging.getLogger(__name__)

DIFFERENT_SPEAKERS = "different speakers"


def _score_stats(scores: np.ndarray) -> dict:
    q25, median, q75 = np.percentile(scores, [25, 50, 75])
    return {"n": int(len(scores)), "mean": float(scores.mean()), "std": float(scores.std()),
            "median": float(median), "q25": float(q25), "q75": float(q75)}


def _eer_or_none(scores: np.ndarray, labels: np.ndarray, what: str) -> float | None:
    if labels.all() or not labels.any():
        log.warning("verification analysis: no %s trials, EER left empty", what)
        return None
    return compute_eer(scores, labels)


def run_verification_analysis(
    emb_set: EmbeddingSet,
    out_dir: str | Path | None = None,
    max_pairs: int | None = 200_000,
    max_clips: int = 10_000,
    seed: int = 0,
    class_order: Sequence[str] | None = None,
) -> dict:
    """Score clip pairs by cosine similarity and return (and write) the emotion-mismatch analysis.

    max_pairs: seeded sample of all unordered pairs; pairwise_trials gathers both embeddings of
        every pair in float64 (200k pairs x 256-d ~ 0.8 GB), so None (every pair) only for small sets. max_clips: above this many clips a seeded random subset of clips
        is used (all-pairs indexing grows as N^2); the number used is recorded in the result.
    """
    emb_set.validate()
    n_total = len(emb_set)
    unknown_speaker = emb_set.unknown_speaker_mask()
    if unknown_speaker.any():  # placeholder ids: their trials would count as "different speakers" whoever spoke
        log.info("verification analysis: %d clip(s) of unknown speakers left out", int(unknown_speaker.sum()))
        emb_set = emb_set.subset(np.flatnonzero(~unknown_speaker))
    if len(emb_set) > max_clips:
        keep = np.sort(np.random.default_rng(seed).choice(len(emb_set), size=max_clips, replace=False))
        log.warning("verification analysis: using a random %d of %d clips (max_clips)", max_clips, len(emb_set))
        emb_set = emb_set.subset(keep)
    emotion = emb_set.emotion
    order = list(class_order) if class_order is not None else emb_set.classes
    unknown = sorted(set(emotion.tolist()) - set(order))
    if unknown:
        raise ValueError(f"verification analysis: labels {unknown} not in class_order {order}")
    rank = {c: k for k, c in enumerate(order)}

    scores, labels, i, j = pairwise_trials(emb_set.embeddings, emb_set.speaker, max_pairs=max_pairs, seed=seed)
    target = labels == 1
    if not target.any():
        raise ValueError("verification analysis: no same-speaker pairs (does every speaker have a single clip, "
                         "or is max_pairs too small?)")
    same_emotion = emotion[i] == emotion[j]
    nontarget = ~target
    sel_match = (target & same_emotion) | nontarget
    sel_mismatch = (target & ~same_emotion) | nontarget

    # Unordered emotion pair of each target trial, named in class order ("neutral-angry" style);
    # same-emotion pairs first so the box plot reads matched | mismatched.
    pairs = [(a, b) if rank[a] <= rank[b] else (b, a)
             for a, b in zip(emotion[i][target].tolist(), emotion[j][target].tolist(), strict=True)]
    pair_names = np.array([f"{a}-{b}" for a, b in pairs])
    target_scores = scores[target]
    ordered_pairs = [f"{a}-{b}" for a, b in sorted(set(pairs), key=lambda p: (p[0] != p[1], rank[p[0]], rank[p[1]]))]
    by_pair = {p: _score_stats(target_scores[pair_names == p]) for p in ordered_pairs}

    result = {
        "n_clips": n_total,
        "n_clips_unknown_speaker_left_out": int(unknown_speaker.sum()),
        "n_clips_used": len(emb_set),
        "max_pairs": max_pairs,
        "seed": seed,
        "n_trials": int(len(scores)),
        "n_target": int(target.sum()),
        "n_nontarget": int(nontarget.sum()),
        "n_target_emotion_match": int((target & same_emotion).sum()),
        "n_target_emotion_mismatch": int((target & ~same_emotion).sum()),
        "eer": compute_eer(scores, labels) if nontarget.any() else None,
        "eer_emotion_match": _eer_or_none(scores[sel_match], labels[sel_match], "emotion-matched target"),
        "eer_emotion_mismatch": _eer_or_none(scores[sel_mismatch], labels[sel_mismatch], "emotion-mismatched target"),
        "same_speaker_scores_by_emotion_pair": by_pair,
        "different_speaker_scores": _score_stats(scores[nontarget]) if nontarget.any() else None,
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / "verification.json.tmp"
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(out_dir / "verification.json")
        groups = {p: target_scores[pair_names == p] for p in ordered_pairs}
        if nontarget.any():
            groups[DIFFERENT_SPEAKERS] = scores[nontarget]
        _boxplot(groups, out_dir / "verification_boxplot.png", result)
    return result


def _boxplot(groups: dict[str, np.ndarray], path: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(groups)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(names) + 2), 4.5))
    ax.boxplot([groups[n] for n in names], showfliers=False)
    ax.set_xticks(range(1, len(names) + 1), [f"{n}\n(n={len(groups[n])})" for n in names], rotation=60,
                  ha="right", fontsize=7)
    ax.set_ylabel("cosine score")

    def pct(v):
        return "n/a" if v is None else f"{100 * v:.2f}%"

    ax.set_title(f"same-speaker scores by emotion pair — EER all {pct(result['eer'])}, "
                 f"match {pct(result['eer_emotion_match'])}, mismatch {pct(result['eer_emotion_mismatch'])}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
