"""One record per audio clip: the common currency between corpus parsers, datamodules and evaluation.

Every corpus parser yields `ClipRecord`s; everything downstream (manifests, samplers, shards,
evaluation protocols) reads only these fields, so adding a corpus never touches the rest.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

# The four-class set used by the seed papers (IEMOCAP merges excited into happy).
FOUR_CLASSES = ("angry", "happy", "neutral", "sad")


@dataclass
class ClipRecord:
    path: str  # absolute path of the audio file (or member name inside a shard)
    speaker: str  # corpus-qualified speaker id, e.g. "emodb:03"; never shared across corpora
    corpus: str
    utt_id: str  # unique within the corpus
    emotion: Optional[str] = None  # the corpus's own label, lower-case English (e.g. "boredom")
    emotion4: Optional[str] = None  # one of FOUR_CLASSES or None when outside the 4-class set
    gender: Optional[str] = None  # "F" / "M" / None
    session: Optional[str] = None  # IEMOCAP session, ESD language group, ...
    split: Optional[str] = None  # official split name where the corpus defines one
    arousal: Optional[float] = None
    valence: Optional[float] = None
    dominance: Optional[float] = None
    duration: Optional[float] = None  # seconds, filled when the manifest is built
    sample_rate: Optional[int] = None  # native rate, filled when the manifest is built
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ClipRecord":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"ClipRecord: unknown field(s) {sorted(unknown)}; expected a subset of {sorted(known)}")
        return cls(**d)


def write_jsonl(records: Iterable[ClipRecord], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps(r.to_dict()) + "\n")
    tmp.replace(path)


def read_jsonl(path: str | Path) -> list[ClipRecord]:
    out = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(ClipRecord.from_dict(json.loads(line)))
            except (ValueError, TypeError) as e:
                raise ValueError(f"{path}:{lineno}: bad manifest line: {e}") from e
    return out
