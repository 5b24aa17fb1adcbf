"""Train/test partitions of an `EmbeddingSet`. Speaker-independent by construction: a speaker in
both parts would let a speaker-embedding head recognise the speaker rather than the emotion.

The rules (see docs/evaluation.md):
- a partition whose train and test parts share a speaker is never reported as speaker-independent:
  `auto` falls back from such an official split to speaker k-fold; an explicit protocol with shared
  speakers is refused unless `allow_speaker_overlap=True`, and the plan then says so;
- rows flagged `speaker_unknown` (e.g. MSP-Podcast's `Unknown` speakers, each its own pseudo-speaker,
  so possibly the same person as a test speaker) are never tested; they train only under the
  official split (whose authors made Train/Test speaker-disjoint) unless told otherwise;
- k-fold can be repeated with seeds seed, seed + 1, ...; the other protocols are deterministic and
  run once whatever `repeats` says (the plan records it instead of faking variance), and so does
  leave-one-speaker-out (k-fold with as many folds as speakers: every seed gives the same folds).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from evaluation.embeddings_io import UNUSED_SPLIT, EmbeddingSet

log = logging.getLogger(__name__)

PROTOCOLS = ("auto", "kfold", "official", "loso", "speakers", "cross_corpus")
REPEATABLE = ("kfold",)


@dataclass(frozen=True)
class Fold:
    name: str
    train_idx: np.ndarray
    test_idx: np.ndarray
    test_speakers: tuple[str, ...]
    repeat: int = 0

    def describe(self) -> dict:
        return {"name": self.name, "repeat": self.repeat, "n_train": int(len(self.train_idx)),
                "n_test": int(len(self.test_idx)), "test_speakers": list(self.test_speakers)}


@dataclass
class FoldPlan:
    """The folds of one evaluation and everything a reader needs to judge them."""

    protocol: str  # what ran: kfold | official | loso | speakers
    requested: str
    folds: list[Fold]
    repeats: int = 1
    speaker_independent: bool = True
    notes: list[str] = field(default_factory=list)
    left_out: dict[str, int] = field(default_factory=dict)  # rows in no fold's test part, by reason
    fallback: str | None = None  # why `auto` did not use the official split
    leave_one_speaker_out: bool = False  # kfold with one speaker per fold (runs once whatever `repeats`)

    @property
    def folds_per_repeat(self) -> int:
        return len(self.folds) // self.repeats

    def describe(self) -> dict:
        return {"name": self.protocol, "requested": self.requested, "repeats": self.repeats,
                "folds_per_repeat": self.folds_per_repeat, "speaker_independent": self.speaker_independent,
                "fallback": self.fallback, "leave_one_speaker_out": self.leave_one_speaker_out,
                "notes": list(self.notes), "left_out": dict(self.left_out)}


def resolve_protocol(emb_set: EmbeddingSet, protocol: str, test_speakers: Sequence[str] | None = None) -> str:
    """"auto": explicit test speakers if given, else the official split if the set has one, else k-fold.

    (`plan_folds` may still fall back from the official split to k-fold when it shares speakers.)
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {list(PROTOCOLS)}")
    if protocol != "auto":
        return protocol
    if test_speakers is not None:
        return "speakers"
    return "official" if emb_set.split is not None else "kfold"


def _shared_speakers(emb_set: EmbeddingSet, train_mask: np.ndarray, test_mask: np.ndarray) -> list[str]:
    return sorted(set(emb_set.speaker[train_mask].tolist()) & set(emb_set.speaker[test_mask].tolist()))


def _fold(name: str, emb_set: EmbeddingSet, test_mask: np.ndarray, train_mask: np.ndarray, repeat: int = 0) -> Fold:
    test_idx, train_idx = np.flatnonzero(test_mask), np.flatnonzero(train_mask)
    if not len(test_idx) or not len(train_idx):
        raise ValueError(f"fold {name}: empty {'test' if not len(test_idx) else 'train'} part")
    n_train_classes = len(np.unique(emb_set.emotion[train_idx]))
    if n_train_classes < 2:
        raise ValueError(f"fold {name}: training part has only {n_train_classes} emotion class")
    return Fold(name, train_idx, test_idx, tuple(sorted(set(emb_set.speaker[test_idx].tolist()))), repeat)


def plan_folds(
    emb_set: EmbeddingSet,
    protocol: str = "auto",
    n_folds: int = 5,
    seed: int = 0,
    test_speakers: Sequence[str] | None = None,
    repeats: int = 1,
    allow_speaker_overlap: bool = False,
    unknown_speakers_train: bool | None = None,
    cross_corpus: dict | None = None,
) -> FoldPlan:
    """Folds for `protocol`:

    kfold: `n_folds` speaker-disjoint folds, roughly class-stratified (`seeded_group_folds`); every
        (known-speaker) row is tested exactly once per repeat; repeat r uses seed + r.
    official: the set's `split` column (train / test; `unused` rows are in neither part).
    loso: leave-one-session-out, one fold per `session` value (IEMOCAP: 5 sessions).
    speakers: a single fold testing on the given `test_speakers`.
    cross_corpus: train on the clips of `cross_corpus["train"]` corpora, test on `cross_corpus["test"]`
        (lists of corpus names, the prefix of the corpus-qualified speaker ids; e.g. a `data=pooled` set);
        one fold, speaker-independent because no two corpora share a speaker.
    unknown_speakers_train: may rows flagged `speaker_unknown` train? None: only under `official`.
    """
    emb_set.validate()
    classes = np.unique(emb_set.emotion)
    if len(classes) < 2:
        raise ValueError(f"need at least 2 emotion classes to evaluate, the set has only {classes.tolist()}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    requested = protocol
    protocol = resolve_protocol(emb_set, protocol, test_speakers)
    plan = FoldPlan(protocol=protocol, requested=requested, folds=[])
    if protocol == "official" and requested == "auto":
        shared = _official_overlap(emb_set)
        if shared:
            plan.protocol = protocol = "kfold"
            plan.fallback = (f"the official split shares {len(shared)} speaker(s) between train and test "
                             f"(e.g. {shared[:5]}), so it is not speaker-independent: speaker k-fold used instead")
            log.warning("protocol auto: %s", plan.fallback)
            plan.notes.append(plan.fallback)

    unknown = emb_set.unknown_speaker_mask()
    known = ~unknown
    train_unknown = (protocol == "official") if unknown_speakers_train is None else bool(unknown_speakers_train)
    trainable = known | unknown if train_unknown else known

    if protocol == "kfold":
        n_speakers = len(set(emb_set.speaker[known].tolist()))
        if repeats > 1 and n_folds == n_speakers:
            # leave-one-speaker-out: every seed gives the same folds; counting them R times would shrink the interval
            plan.notes.append(f"leave-one-speaker-out (n_folds = the {n_speakers} speakers): every fold seed gives "
                              f"the same folds, so they ran once (repeats={repeats} does not apply)")
            log.info("protocol kfold: %s", plan.notes[-1])
            plan.leave_one_speaker_out = True
        elif repeats > 1:
            plan.repeats = repeats
        for r in range(plan.repeats):
            for k, test_mask in enumerate(_kfold_masks(emb_set, known, n_folds, seed + r)):
                name = f"fold{k}" if plan.repeats == 1 else f"r{r}.fold{k}"
                plan.folds.append(_fold(name, emb_set, test_mask, trainable & ~test_mask, repeat=r))
    elif protocol == "official":
        if emb_set.split is None:
            raise ValueError("protocol 'official' needs a `split` array; this set has none (use protocol='kfold')")
        test_mask = (emb_set.split == "test") & known
        plan.folds.append(_fold("official", emb_set, test_mask, (emb_set.split == "train") & trainable))
        n_unused = int((emb_set.split == UNUSED_SPLIT).sum())
        if n_unused:
            plan.left_out["official_split_unused"] = n_unused
    elif protocol == "loso":
        if emb_set.session is None:
            raise ValueError("protocol 'loso' needs a `session` array; this set has none")
        sessions = sorted(set(emb_set.session[known].tolist()))
        if len(sessions) < 2:
            raise ValueError(f"protocol 'loso' needs at least 2 sessions, got {sessions}")
        for s in sessions:
            in_session = emb_set.session == s
            plan.folds.append(_fold(f"session={s}", emb_set, in_session & known, ~in_session & trainable))
    elif protocol == "cross_corpus":
        plan.folds.append(_cross_corpus_fold(emb_set, cross_corpus, known, trainable))
    else:  # protocol == "speakers"
        if not test_speakers:
            raise ValueError("protocol 'speakers' needs a non-empty test_speakers list")
        requested_spk = [str(s) for s in test_speakers]
        known_spk = set(emb_set.speaker[known].tolist())
        missing = [s for s in requested_spk if s not in known_spk]
        if missing:
            raise ValueError(f"test speaker(s) {missing} not in the set (or flagged speaker_unknown, never tested); "
                             f"known speakers: {sorted(known_spk)}")
        test_mask = np.isin(emb_set.speaker, requested_spk)
        plan.folds.append(_fold("speakers", emb_set, test_mask, ~test_mask & trainable))

    if repeats > 1 and protocol not in REPEATABLE:
        plan.notes.append(f"protocol {protocol} is deterministic: repeats={repeats} does not apply, it ran once")
    _check_overlap(plan, emb_set, allow_speaker_overlap)
    n_unknown = int(unknown.sum())
    if n_unknown:
        n_trained = int((unknown & trainable).sum()) if protocol != "official" else int(
            (unknown & trainable & (emb_set.split == "train")).sum())
        plan.left_out["unknown_speaker"] = n_unknown - n_trained
        if n_trained:
            plan.left_out["unknown_speaker_train_only"] = n_trained
        plan.notes.append(f"{n_unknown} clip(s) of unknown speakers are never tested ({n_trained} of them train)")
    return plan


def _cross_corpus_fold(emb_set: EmbeddingSet, spec: dict | None, known: np.ndarray, trainable: np.ndarray) -> Fold:
    spec = dict(spec or {})
    train_c, test_c = [str(c) for c in spec.get("train") or []], [str(c) for c in spec.get("test") or []]
    if not train_c or not test_c:
        raise ValueError("protocol 'cross_corpus' needs eval.cross_corpus.train and eval.cross_corpus.test "
                         f"(lists of corpus names), got {spec}")
    if set(train_c) & set(test_c):
        raise ValueError(f"protocol 'cross_corpus': {sorted(set(train_c) & set(test_c))} both trains and tests")
    corpus = np.array([str(s).split(":", 1)[0] for s in emb_set.speaker])
    present = sorted(set(corpus.tolist()))
    missing = [c for c in train_c + test_c if c not in present]
    if missing:
        raise ValueError(f"protocol 'cross_corpus': corpus {missing} not in the evaluated set (it has {present}; "
                         "evaluate a data=pooled set that includes it)")
    name = f"{'+'.join(train_c)}->{'+'.join(test_c)}"
    return _fold(name, emb_set, np.isin(corpus, test_c) & known, np.isin(corpus, train_c) & trainable)


def make_folds(
    emb_set: EmbeddingSet,
    protocol: str = "auto",
    n_folds: int = 5,
    seed: int = 0,
    test_speakers: Sequence[str] | None = None,
    **kwargs,
) -> list[Fold]:
    """The folds of `plan_folds` (same arguments), for callers that need only the partitions."""
    return plan_folds(emb_set, protocol, n_folds=n_folds, seed=seed, test_speakers=test_speakers, **kwargs).folds


def _official_overlap(emb_set: EmbeddingSet) -> list[str]:
    if emb_set.split is None:
        return []
    known = ~emb_set.unknown_speaker_mask()
    return _shared_speakers(emb_set, (emb_set.split == "train") & known, (emb_set.split == "test") & known)


def _check_overlap(plan: FoldPlan, emb_set: EmbeddingSet, allow: bool) -> None:
    shared: set[str] = set()
    for f in plan.folds:
        shared |= set(f.test_speakers) & set(emb_set.speaker[f.train_idx].tolist())
    if not shared:
        return
    example = sorted(shared)[:5]
    if not allow:
        raise ValueError(
            f"protocol {plan.protocol!r}: {len(shared)} speaker(s) are in both the training and the test part "
            f"(e.g. {example}), so the score would not be speaker-independent. Use protocol 'kfold' (eval.protocol=kfold), "
            "or opt in with allow_speaker_overlap=True (eval.allow_speaker_overlap=true) to run it labelled "
            "NOT speaker-independent")
    plan.speaker_independent = False
    note = f"NOT speaker-independent: {len(shared)} speaker(s) are in both training and test parts (e.g. {example})"
    log.warning("protocol %s: %s", plan.protocol, note)
    plan.notes.append(note)


def _kfold_masks(emb_set: EmbeddingSet, eligible: np.ndarray, n_folds: int, seed: int) -> list[np.ndarray]:
    rows = np.flatnonzero(eligible)
    n_speakers = len(np.unique(emb_set.speaker[rows]))
    if n_folds < 2:
        raise ValueError(f"kfold needs n_folds >= 2, got {n_folds}")
    if n_speakers < n_folds:
        raise ValueError(f"kfold: {n_speakers} speakers < n_folds={n_folds}; lower n_folds to at most {n_speakers}")
    assignment = seeded_group_folds(emb_set.emotion[rows], emb_set.speaker[rows], n_folds, seed)
    masks = []
    for k in range(n_folds):
        mask = np.zeros(len(emb_set), dtype=bool)
        mask[rows[assignment == k]] = True
        masks.append(mask)
    return masks


def seeded_group_folds(y: np.ndarray, groups: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold index (0..n_folds-1) of every row: whole groups per fold, class mix kept close to the whole.

    sklearn's StratifiedGroupKFold(shuffle=True) visits groups in order of decreasing class-count
    spread and shuffles only ties of that order, so with a few speakers of uneven class mixes every
    seed gives one and the same partition (EmoDB: 1 assignment over 20 seeds). Here the groups are
    visited in a seeded random order instead, each joining the fold that keeps sklearn's criterion
    (mean over classes of the std across folds of each fold's share of the class) lowest; ties go
    to the fold with fewer rows, then to a seeded random one. Folds are numbered by their first row.
    """
    classes, y_inv = np.unique(np.asarray(y), return_inverse=True)
    names, g_inv = np.unique(np.asarray(groups), return_inverse=True)
    counts = np.zeros((len(names), len(classes)))
    np.add.at(counts, (g_inv, y_inv), 1)
    totals = counts.sum(axis=0)
    per_fold = np.zeros((n_folds, len(classes)))
    fold_of_group = np.empty(len(names), dtype=np.int64)
    rng = np.random.default_rng(seed)
    for g in rng.permutation(len(names)):
        best, best_key = -1, (np.inf, np.inf)
        for f in rng.permutation(n_folds):
            per_fold[f] += counts[g]
            cost = float(np.mean(np.std(per_fold / totals, axis=0)))
            per_fold[f] -= counts[g]
            key = (round(cost, 12), per_fold[f].sum())
            if key < best_key:
                best, best_key = int(f), key
        per_fold[best] += counts[g]
        fold_of_group[g] = best
    fold_of_row = fold_of_group[g_inv]
    first_row = {f: int(np.flatnonzero(fold_of_row == f)[0]) for f in range(n_folds) if (fold_of_row == f).any()}
    if len(first_row) < n_folds:  # cannot happen with >= n_folds groups: every empty fold wins a group
        raise RuntimeError(f"seeded_group_folds: only {len(first_row)} of {n_folds} folds received a group")
    renumber = {f: k for k, f in enumerate(sorted(first_row, key=first_row.get))}
    return np.array([renumber[f] for f in fold_of_row], dtype=np.int64)
