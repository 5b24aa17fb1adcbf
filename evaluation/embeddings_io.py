"""Extracted embeddings plus their labels, as one validated object and one `.npz` file.

Every evaluation (classifier heads, verification analysis) reads an `EmbeddingSet`, so the
checks live here once: a silently misaligned label array would corrupt every number downstream.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

# Official-split values the protocols understand; anything else must be mapped by the extractor.
# "unused": in the corpus's own split but in neither part (e.g. MSP-Podcast Development); the
# official protocol leaves it out (counted), k-fold uses it like any other row.
UNUSED_SPLIT = "unused"
VALID_SPLITS = ("train", "test", UNUSED_SPLIT)
_OPTIONAL = ("split", "session", "utt_id")
# Where the embeddings came from (which speakers shaped the encoder, the corpus report): one JSON
# string in the .npz, so a later re-fit from the file is checked like an extraction.
PROVENANCE_KEY = "provenance"
# What the columns are (evaluation/layer_features.py): {"output": "embedding" | "layer_stats", ...}; one
# JSON string too. Files without it (older extractions) hold final embeddings.
FEATURES_KEY = "features"
_METADATA = (PROVENANCE_KEY, FEATURES_KEY)


def _as_str_array(values, name: str) -> np.ndarray:
    """Unicode array (never object dtype) so that `np.load(allow_pickle=False)` can read it back."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"EmbeddingSet.{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind == "U":
        return arr
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"EmbeddingSet.{name}: float labels must be whole numbers, got e.g. {arr[:3].tolist()}")
        arr = arr.astype(np.int64)
    if arr.dtype.kind == "O" and any(v is None for v in arr):
        n = sum(v is None for v in arr)
        raise ValueError(f"EmbeddingSet.{name}: {n} value(s) are None (first at row {[v is None for v in arr].index(True)})")
    return arr.astype(str)


@dataclass
class EmbeddingSet:
    """N clips: `embeddings` (N, D) float32 and per-clip labels as unicode arrays.

    `emotion` ints are kept as their decimal strings ("0", "1", ...) so labels have one type.
    `speaker_unknown` (bool, optional): rows whose real speaker is unknown (their speaker id is a
    per-clip placeholder), which the protocols never test. `provenance` (not a per-row array): where
    the embeddings came from, see `evaluation.provenance`. `features` (not a per-row array either):
    what the columns are, see `evaluation.layer_features` (None: final embeddings).
    """

    embeddings: np.ndarray
    emotion: np.ndarray
    speaker: np.ndarray
    split: Optional[np.ndarray] = None
    session: Optional[np.ndarray] = None
    utt_id: Optional[np.ndarray] = None
    speaker_unknown: Optional[np.ndarray] = None
    provenance: Optional[dict] = field(default=None, compare=False)
    features: Optional[dict] = field(default=None, compare=False)

    def __post_init__(self) -> None:
        self.embeddings = np.asarray(self.embeddings, dtype=np.float32)
        self.emotion = _as_str_array(self.emotion, "emotion")
        self.speaker = _as_str_array(self.speaker, "speaker")
        for name in _OPTIONAL:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, _as_str_array(value, name))
        if self.speaker_unknown is not None:
            flags = np.asarray(self.speaker_unknown)
            if flags.ndim != 1 or flags.dtype.kind not in "bi" or not np.isin(flags, (0, 1)).all():
                raise ValueError(f"EmbeddingSet.speaker_unknown must be a 1-D boolean array, got {flags.dtype} {flags.shape}")
            self.speaker_unknown = flags.astype(bool)

    def __len__(self) -> int:
        return int(self.embeddings.shape[0]) if self.embeddings.ndim >= 1 else 0

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.emotion.tolist()))

    def arrays(self) -> dict[str, np.ndarray]:
        """The present per-row arrays by field name (absent optional fields left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in _METADATA and getattr(self, f.name) is not None}

    def unknown_speaker_mask(self) -> np.ndarray:
        """Rows whose real speaker is unknown (all False when the set has no such flag)."""
        return np.zeros(len(self), dtype=bool) if self.speaker_unknown is None else self.speaker_unknown

    def subset(self, idx) -> "EmbeddingSet":
        idx = np.asarray(idx)
        return EmbeddingSet(**{name: arr[idx] for name, arr in self.arrays().items()}, provenance=self.provenance,
                            features=self.features)

    def validate(self) -> "EmbeddingSet":
        """Raise ValueError naming the offending array/rows; returns self so calls can chain."""
        if self.embeddings.ndim != 2:
            raise ValueError(f"EmbeddingSet.embeddings must be 2-D (N, D), got shape {self.embeddings.shape}")
        n = self.embeddings.shape[0]
        if n == 0:
            raise ValueError("EmbeddingSet is empty: 0 rows")
        if self.embeddings.shape[1] == 0:
            raise ValueError("EmbeddingSet.embeddings has 0 columns (D == 0)")
        lengths = {name: len(arr) for name, arr in self.arrays().items()}
        if len(set(lengths.values())) != 1:
            described = ", ".join(f"{k}={v}" for k, v in lengths.items())
            raise ValueError(f"EmbeddingSet arrays differ in length: {described}")
        bad_rows = np.flatnonzero(~np.all(np.isfinite(self.embeddings), axis=1))
        if bad_rows.size:
            raise ValueError(
                f"EmbeddingSet.embeddings has {bad_rows.size} row(s) with NaN/inf, e.g. rows {bad_rows[:10].tolist()}"
                + (f" (utt_id {self.utt_id[bad_rows[:10]].tolist()})" if self.utt_id is not None else "")
            )
        empty_spk = np.flatnonzero(np.char.str_len(np.char.strip(self.speaker)) == 0)
        if empty_spk.size:
            raise ValueError(f"EmbeddingSet.speaker is empty for {empty_spk.size} row(s), e.g. rows {empty_spk[:10].tolist()}")
        empty_emo = np.flatnonzero(np.char.str_len(np.char.strip(self.emotion)) == 0)
        if empty_emo.size:
            raise ValueError(f"EmbeddingSet.emotion is empty for {empty_emo.size} row(s), e.g. rows {empty_emo[:10].tolist()}")
        from evaluation.layer_features import check_columns

        check_columns(self.features, self.embeddings.shape[1], "EmbeddingSet.features")
        if self.split is not None:
            unknown = sorted(set(self.split.tolist()) - set(VALID_SPLITS))
            if unknown:
                raise ValueError(f"EmbeddingSet.split has unknown value(s) {unknown}; expected only {list(VALID_SPLITS)}")
        return self


def save_npz(emb_set: EmbeddingSet, path: str | Path) -> Path:
    """Write atomically (tmp file + rename) so a crashed extraction never leaves a half file."""
    emb_set.validate()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    arrays = dict(emb_set.arrays())
    for key in _METADATA:
        value = getattr(emb_set, key)
        if value is not None:
            arrays[key] = np.array(json.dumps(value, sort_keys=True, default=str))
    with open(tmp, "wb") as f:  # a file handle stops numpy from appending ".npz"
        np.savez(f, **arrays)
    tmp.replace(path)
    return path


def load_npz(path: str | Path) -> EmbeddingSet:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embeddings file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except ValueError as e:  # object arrays need pickle: refuse rather than execute code
        raise ValueError(f"{path}: cannot load without pickle ({e}); save labels as unicode (<U) arrays") from e
    allowed = {f.name for f in fields(EmbeddingSet)}
    missing = [k for k in ("embeddings", "emotion", "speaker") if k not in arrays]
    if missing:
        raise ValueError(f"{path}: missing array(s) {missing}; file holds {sorted(arrays)}")
    unknown = sorted(set(arrays) - allowed)
    if unknown:
        raise ValueError(f"{path}: unknown array(s) {unknown}; expected a subset of {sorted(allowed)}")
    metadata: dict = {}
    for key in _METADATA:
        if key not in arrays:
            continue
        raw = arrays.pop(key)
        try:
            metadata[key] = json.loads(str(raw.item()) if raw.ndim == 0 else "")
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: array '{key}' must hold one JSON string ({e})") from e
        if not isinstance(metadata[key], dict):
            raise ValueError(f"{path}: array '{key}' must hold a JSON object, got {type(metadata[key]).__name__}")
    try:
        return EmbeddingSet(**arrays, **metadata).validate()
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


def filter_labels(emb_set: EmbeddingSet, classes: Iterable[str]) -> tuple[EmbeddingSet, dict[str, int]]:
    """Keep rows whose emotion is in `classes`; return the kept set and {dropped label: rows removed}."""
    classes = [str(c) for c in classes]
    present = Counter(emb_set.emotion.tolist())
    absent = [c for c in classes if c not in present]
    if absent:
        raise ValueError(f"filter_labels: class(es) {absent} not present; present labels: {dict(sorted(present.items()))}")
    keep = np.isin(emb_set.emotion, classes)
    dropped = {label: n for label, n in sorted(present.items()) if label not in classes}
    return emb_set.subset(np.flatnonzero(keep)), dropped


def synthetic_set(
    n_speakers: int = 10,
    clips_per_speaker: int = 40,
    classes: Sequence[str] = ("angry", "happy", "neutral", "sad"),
    dim: int = 32,
    separation: float = 1.0,
    speaker_scale: float = 1.0,
    n_sessions: int | None = None,
    seed: int = 0,
) -> EmbeddingSet:
    """Gaussian clusters for tests and benchmarks: emotion mean (scaled by `separation`; 0 makes
    emotion unpredictable) + speaker offset + unit noise, L2-normalised like real speaker embeddings.
    Speakers get clips of every class in turn; with `n_sessions`, speakers are dealt to sessions."""
    rng = np.random.default_rng(seed)
    class_means = rng.normal(size=(len(classes), dim)) * separation
    speaker_means = rng.normal(size=(n_speakers, dim)) * speaker_scale
    spk = np.repeat(np.arange(n_speakers), clips_per_speaker)
    emo = np.tile(np.arange(clips_per_speaker) % len(classes), n_speakers)
    x = class_means[emo] + speaker_means[spk] + rng.normal(size=(len(spk), dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    session = None if n_sessions is None else np.array([f"s{k % n_sessions + 1}" for k in spk])
    return EmbeddingSet(
        embeddings=x.astype(np.float32),
        emotion=np.asarray(classes)[emo],
        speaker=np.array([f"spk{k:03d}" for k in spk]),
        session=session,
        utt_id=np.array([f"u{k:06d}" for k in range(len(spk))]),
    )
