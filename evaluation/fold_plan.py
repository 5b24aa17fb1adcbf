"""The folds of an evaluation, planned from the corpus's labels and speakers before anything is extracted.

evaluate.py and crossval.py both call `plan_for_config`, so the same `seed`, `eval.n_folds` and
`eval.repeats` give the same test speakers in both (tests/test_crossval.py checks it). Planning needs no
embeddings: a fold count the corpus cannot support fails here, in one line, before a minute of embedding.
"""
from __future__ import annotations

import inspect
import logging
from collections import Counter

import numpy as np
from omegaconf import DictConfig, OmegaConf

from datamodules.records import ClipRecord
from evaluation.embeddings_io import UNUSED_SPLIT, EmbeddingSet
from evaluation.protocols import FoldPlan, plan_folds
from common.errors import ConfigError

log = logging.getLogger(__name__)
NO_LABEL = "<none>"


def load_records(data: DictConfig) -> list[ClipRecord]:
    """Every clip of the configured corpus, in manifest order (the rows of an evaluation)."""
    from datamodules.speaker_datamodule import load_corpus_records

    kwargs = {"quality": OmegaConf.to_container(data.quality, resolve=True) if data.get("quality") is not None else None}
    if "quality" not in inspect.signature(load_corpus_records).parameters:
        kwargs = {}
    options = OmegaConf.to_container(data.corpus_options, resolve=True) if data.get("corpus_options") else {}
    records = load_corpus_records(data.corpus, data.root, data.cache_dir, options, **kwargs)
    if not records:
        raise ValueError(f"corpus {data.corpus} at {data.root} has no clips")
    return records


def official_splits(records: list[ClipRecord], split_map: dict | None) -> list[str] | None:
    """Map a corpus's own split names (MSP-Podcast Train/Test1, ESD train/test, ...) to train/test.

    Clips in other splits (e.g. Development) get "unused": the official protocol leaves them out
    (counted), k-fold uses them like any other clip.
    """
    if not split_map or any(r.split is None for r in records):
        return None
    lookup = {str(name): side for side, names in split_map.items() for name in names}
    mapped = [lookup.get(str(r.split), UNUSED_SPLIT) for r in records]
    return mapped if {"train", "test"} <= set(mapped) else None


def records_to_set(records: list[ClipRecord], embeddings: np.ndarray | None, label_field: str,
                   split_map: dict | None = None) -> EmbeddingSet:
    """The clips as an EmbeddingSet (labels, speakers, splits, sessions); `embeddings` None = no columns yet."""
    if label_field not in ClipRecord.__dataclass_fields__:
        raise ConfigError(f"eval.label_field={label_field!r} is not a record field; use 'emotion4' or 'emotion'")
    labels = [getattr(r, label_field) or NO_LABEL for r in records]
    splits = official_splits(records, split_map)
    if splits is not None and UNUSED_SPLIT in splits:
        unused = Counter(str(r.split) for r, s in zip(records, splits) if s == UNUSED_SPLIT)
        log.info("official split: clips of %s are in neither train nor test (left out by the official protocol)",
                 dict(unused))
    unknown = [bool(r.extra.get("speaker_unknown")) for r in records]
    if embeddings is None:  # planning needs labels and speakers only
        embeddings = np.zeros((len(records), 1), np.float32)
    return EmbeddingSet(
        embeddings=embeddings, emotion=labels, speaker=[r.speaker for r in records],
        split=splits,
        session=[r.session for r in records] if all(r.session for r in records) else None,
        utt_id=[r.utt_id for r in records],
        speaker_unknown=np.array(unknown) if any(unknown) else None)


def label_mask(emb_set: EmbeddingSet, classes: list[str] | None, label_field: str) -> tuple[np.ndarray, dict]:
    """Rows to evaluate and what was left out: clips without a label, clips outside `classes`."""
    present = Counter(emb_set.emotion.tolist())
    no_label = int(present.pop(NO_LABEL, 0))
    left_out: dict = {}
    if no_label:
        left_out["no_label"] = no_label
        log.info("evaluation: %d clips without a %s label left out", no_label, label_field)
    if classes:
        absent = [c for c in classes if c not in present]
        if absent:
            raise ValueError(f"eval.classes: class(es) {absent} not present; present labels: {dict(sorted(present.items()))}")
        outside = {label: n for label, n in sorted(present.items()) if label not in classes}
        if outside:
            left_out["outside_classes"] = outside
            log.info("evaluation keeps classes %s; rows dropped per label: %s", classes, outside)
        return np.isin(emb_set.emotion, classes), left_out
    return emb_set.emotion != NO_LABEL, left_out


def plan_for_config(e: DictConfig, seed: int, emb_set: EmbeddingSet) -> FoldPlan:
    """The folds of `eval` (protocol, n_folds, repeats, ...) over `emb_set`'s labelled rows; a plan the corpus
    cannot support is a ConfigError naming the setting."""
    try:
        return plan_folds(emb_set, e.protocol, n_folds=int(e.n_folds), seed=int(seed), repeats=int(e.get("repeats", 1)),
                          allow_speaker_overlap=bool(e.get("allow_speaker_overlap", False)),
                          unknown_speakers_train=e.get("unknown_speakers_train"),
                          cross_corpus=OmegaConf.to_container(e.cross_corpus) if e.get("cross_corpus") else None)
    except ValueError as err:
        n_spk = len(set(emb_set.speaker.tolist()))
        raise ConfigError(f"{err} (eval.protocol={e.protocol}, eval.n_folds={e.n_folds}; the evaluated set has "
                          f"{n_spk} speakers, {len(emb_set)} clips)") from None


def labelled_rows(records: list[ClipRecord], e: DictConfig) -> tuple[EmbeddingSet, np.ndarray, dict]:
    """(the evaluated rows as a set without columns, their indices into `records`, what was left out)."""
    full = records_to_set(records, None, e.label_field,
                          OmegaConf.to_container(e.split_map, resolve=True) if e.get("split_map") else None)
    keep, left_out = label_mask(full, list(e.classes) if e.get("classes") else None, e.label_field)
    rows = np.flatnonzero(keep)
    return full.subset(rows), rows, left_out
