"""Train/test partitions of an `EmbeddingSet`. Speaker-independent by construction: a speaker in
both parts would let a speaker-embedding head recognise the speaker rather than the emotion.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from evaluation.embeddings_io import EmbeddingSet

log = logging.getLogger(__name__)

PROTOCOLS = ("auto", "kfold", "official", "loso", "speakers")


@dataclass(frozen=True)
class Fold:
    name: str
    train_idx: np.ndarray
    test_idx: np.ndarray
    test_speakers: tuple[str, ...]

    def describe(self) -> dict:
        return {"name": self.name, "n_train": int(len(self.train_idx)), "n_test": int(len(self.test_idx)),
                "test_speakers": list(self.test_speakers)}


def resolve_protocol(emb_set: EmbeddingSet, protocol: str, test_speakers: Sequence[str] | None = None) -> str:
    """"auto": explicit test speakers if given, else the official split if the set has one, else k-fold."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {list(PROTOCOLS)}")
    if protocol != "auto":
        return protocol
    if test_speakers is not None:
        return "speakers"
    return "official" if emb_set.split is not None else "kfold"


def _fold(name: str, emb_set: EmbeddingSet, test_mask: np.ndarray, train_mask: np.ndarray | None = None) -> Fold:
    train_mask = ~test_mask if train_mask is None else train_mask
    test_idx, train_idx = np.flatnonzero(test_mask), np.flatnonzero(train_mask)
    if not len(test_idx) or not len(train_idx):
        raise ValueError(f"fold {name}: empty {'test' if not len(test_idx) else 'train'} part")
    n_train_classes = len(np.unique(emb_set.emotion[train_idx]))
    if n_train_classes < 2:
        raise ValueError(f"fold {name}: training part has only {n_train_classes} emotion class")
    return Fold(name, train_idx, test_idx, tuple(sorted(set(emb_set.speaker[test_idx].tolist()))))


def make_folds(
    emb_set: EmbeddingSet,
    protocol: str = "auto",
    n_folds: int = 5,
    seed: int = 0,
    test_speakers: Sequence[str] | None = None,
) -> list[Fold]:
    """Folds for `protocol`:

    kfold: `n_folds` speaker-disjoint folds (StratifiedGroupKFold over speakers, shuffled with `seed`);
        every row is tested exactly once.
    official: the set's `split` column (train / test).
    loso: leave-one-session-out, one fold per `session` value (IEMOCAP: 5 sessions).
    speakers: a single fold testing on the given `test_speakers`.
    """
    emb_set.validate()
    classes = np.unique(emb_set.emotion)
    if len(classes) < 2:
        raise ValueError(f"need at least 2 emotion classes to evaluate, the set has only {classes.tolist()}")
    protocol = resolve_protocol(emb_set, protocol, test_speakers)
    if protocol == "kfold":
        return _kfold(emb_set, n_folds, seed)
    if protocol == "official":
        if emb_set.split is None:
            raise ValueError("protocol 'official' needs a `split` array; this set has none (use protocol='kfold')")
        fold = _fold("official", emb_set, emb_set.split == "test", emb_set.split == "train")
        shared = set(fold.test_speakers) & set(emb_set.speaker[fold.train_idx].tolist())
        if shared:
            log.warning("official split: %d speaker(s) are in both train and test, e.g. %s", len(shared), sorted(shared)[:5])
        return [fold]
    if protocol == "loso":
        if emb_set.session is None:
            raise ValueError("protocol 'loso' needs a `session` array; this set has none")
        sessions = sorted(set(emb_set.session.tolist()))
        if len(sessions) < 2:
            raise ValueError(f"protocol 'loso' needs at least 2 sessions, got {sessions}")
        return [_fold(f"session={s}", emb_set, emb_set.session == s) for s in sessions]
    # protocol == "speakers"
    if not test_speakers:
        raise ValueError("protocol 'speakers' needs a non-empty test_speakers list")
    requested = [str(s) for s in test_speakers]
    known = set(emb_set.speaker.tolist())
    unknown = [s for s in requested if s not in known]
    if unknown:
        raise ValueError(f"test speaker(s) {unknown} not in the set; known speakers: {sorted(known)}")
    return [_fold("speakers", emb_set, np.isin(emb_set.speaker, requested))]


def _kfold(emb_set: EmbeddingSet, n_folds: int, seed: int) -> list[Fold]:
    n_speakers = len(np.unique(emb_set.speaker))
    if n_folds < 2:
        raise ValueError(f"kfold needs n_folds >= 2, got {n_folds}")
    if n_speakers < n_folds:
        raise ValueError(f"kfold: {n_speakers} speakers < n_folds={n_folds}; lower n_folds to at most {n_speakers}")
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    dummy = np.zeros((len(emb_set), 1))
    folds = []
    for k, (_, test_idx) in enumerate(splitter.split(dummy, emb_set.emotion, groups=emb_set.speaker)):
        mask = np.zeros(len(emb_set), dtype=bool)
        mask[test_idx] = True
        folds.append(_fold(f"fold{k}", emb_set, mask))
    return folds
