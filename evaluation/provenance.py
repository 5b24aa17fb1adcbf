"""Which speakers shaped the encoder that made the embeddings, and whether a fold tests on them.

A checkpoint trained on a corpus has heard (and, for some objectives, been labelled with) its
training and validation speakers; folding that same corpus over those speakers scores a model on
audio it was fitted to: a transductive figure, not a speaker-independent one. Checkpoints record
`seen_speakers` (sorted corpus-qualified ids, exactly `ClipRecord.speaker`) and `seen_corpora`
({corpus: data root}); extractions copy them into the embeddings `.npz`, so a re-fit is checked too.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from common.errors import ConfigError, TransductiveEvaluationError, UnknownProvenanceError  # noqa: F401

log = logging.getLogger(__name__)

SEEN_SPEAKERS_KEY = "seen_speakers"
SEEN_CORPORA_KEY = "seen_corpora"
UNKNOWN_FROM_KEY = "provenance_unknown_from"  # warm-start sources that recorded no speakers
FOLD_WISE_ROUTE = "crossval.py"



@dataclass(frozen=True)
class Provenance:
    source: str  # "checkpoint" | "backbone" | "npz" (a file without provenance) | ...
    path: str | None = None
    seen_speakers: tuple[str, ...] | None = None  # None: not recorded, so leakage cannot be ruled out
    seen_corpora: dict | None = None
    note: str = ""

    @property
    def known(self) -> bool:
        return self.seen_speakers is not None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["seen_speakers"] = None if self.seen_speakers is None else list(self.seen_speakers)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Provenance":
        seen = d.get("seen_speakers")
        return cls(source=str(d.get("source", "unknown")), path=d.get("path"),
                   seen_speakers=None if seen is None else tuple(str(s) for s in seen),
                   seen_corpora=d.get("seen_corpora"), note=str(d.get("note", "")))

    def summary(self) -> dict:
        """What metrics.json records: counts and a few ids (the full list stays in the checkpoint/npz)."""
        return {"source": self.source, "path": self.path, "known": self.known,
                "n_seen_speakers": None if self.seen_speakers is None else len(self.seen_speakers),
                "seen_corpora": self.seen_corpora, "note": self.note}


def checkpoint_provenance(ckpt: dict, ckpt_path: str | Path) -> Provenance:
    """The speakers a checkpoint dict already loaded was shaped by (a file: `read_checkpoint(path).provenance`,
    lightning_modules/checkpoints.py)."""
    seen = ckpt.get(SEEN_SPEAKERS_KEY)
    corpora = ckpt.get(SEEN_CORPORA_KEY)
    unknown = list(ckpt.get(UNKNOWN_FROM_KEY) or [])
    if seen is not None and unknown:
        log.warning("%s was warm-started from %s, which record(s) no '%s': cannot tell whether the encoder heard the "
                    "test speakers; results are labelled 'provenance unknown'", ckpt_path, unknown, SEEN_SPEAKERS_KEY)
        return Provenance("checkpoint", str(ckpt_path), None, corpora,
                          note=f"warm-started from {unknown}, which record(s) no '{SEEN_SPEAKERS_KEY}': leakage cannot "
                               "be ruled out")
    if seen is None:
        log.warning("%s records no '%s' (an older checkpoint?): cannot tell whether the encoder heard the test "
                    "speakers; results are labelled 'provenance unknown'", ckpt_path, SEEN_SPEAKERS_KEY)
        return Provenance("checkpoint", str(ckpt_path), None, corpora,
                          note=f"checkpoint without '{SEEN_SPEAKERS_KEY}': leakage cannot be ruled out")
    if isinstance(seen, (str, bytes)) or not all(isinstance(s, str) for s in seen):
        raise ValueError(f"{ckpt_path}: '{SEEN_SPEAKERS_KEY}' must be a list of speaker id strings, got {type(seen).__name__}")
    return Provenance("checkpoint", str(ckpt_path), tuple(sorted(seen)), dict(corpora) if corpora else None)


def check_leakage(fold_test_speakers: Sequence[Sequence[str]], provenance: Provenance | None,
                  allow_transductive: bool = False) -> dict:
    """Refuse folds whose test speakers the encoder saw, unless allowed; return the record of it.

    status: "speaker-independent encoder" (nothing seen is tested), "transductive" (opted in),
    "unknown" (provenance not recorded) or "not given" (library call without provenance).
    """
    if provenance is None:
        return {"status": "not given", "transductive": None}
    if not provenance.known:
        return {"status": "unknown", "transductive": None, "note": provenance.note}
    seen = set(provenance.seen_speakers)
    hit = [sorted(seen.intersection(spk)) for spk in fold_test_speakers]
    tested = sorted(set().union(*map(set, fold_test_speakers))) if fold_test_speakers else []
    seen_tested = sorted(set().union(*map(set, hit))) if hit else []
    record = {"status": "speaker-independent encoder", "transductive": False,
              "n_test_speakers": len(tested), "n_seen_test_speakers": len(seen_tested),
              "seen_test_speakers": seen_tested[:20], "folds_affected": sum(bool(h) for h in hit)}
    if not seen_tested:
        return record
    message = (f"the encoder ({provenance.source} {provenance.path or ''}) was trained on audio of "
               f"{len(seen_tested)} of the {len(tested)} test speakers (e.g. {seen_tested[:5]}; "
               f"{record['folds_affected']} fold(s) affected): folds over them are transductive, not "
               f"speaker-independent. For unseen-speaker figures train one encoder per fold on its training "
               f"speakers only ({FOLD_WISE_ROUTE}) or evaluate on a corpus the encoder never heard; "
               "eval.allow_transductive=true runs it anyway, labelled transductive")
    if not allow_transductive:
        raise TransductiveEvaluationError(message)
    log.warning("TRANSDUCTIVE evaluation (allowed): %s", message)
    record.update(status="transductive", transductive=True)
    return record


def check_chain(chain: Sequence[dict], test_speakers: Sequence[str], allow_unknown: bool = False,
                where: str = "") -> dict:
    """Refuse a model whose checkpoint chain heard a test speaker; refuse (or, opted in, label) one whose
    chain records no speakers somewhere. Returns what was checked, for the results."""
    test = set(test_speakers)
    for entry in chain:
        hit = sorted(test & set(entry.get("seen") or []))
        if hit:
            raise TransductiveEvaluationError(
                f"{where}the checkpoint {entry['path']} was trained on audio or labels of test speaker(s) {hit[:5]} "
                f"(its seen_speakers): this fold would not be speaker-independent. Warm-start from a checkpoint that "
                "never met this corpus's test speakers, or run the pretraining inside the folds (crossval.pretrain)")
    unknown = [e["path"] + (" (missing)" if e.get("missing") else "") for e in chain
               if e.get("missing") or e.get("seen") is None or e.get("unknown_from")]
    unknown += [src for e in chain for src in e.get("unknown_from") or []]
    unknown = list(dict.fromkeys(unknown))
    if unknown and not allow_unknown:
        raise UnknownProvenanceError(
            f"{where}cannot tell whether the model heard the test speakers: {unknown[:3]} record(s) no "
            f"'{SEEN_SPEAKERS_KEY}' (a checkpoint from elsewhere or an older one, or a warm start from one). "
            "crossval.allow_unknown_provenance=true runs it anyway, with every result labelled 'provenance unknown'")
    return {"status": "provenance unknown" if unknown else "clean", "checked": [e["path"] for e in chain],
            "unknown": unknown}
