"""MSP-Podcast: `Labels/labels_consensus.csv` (1.8 spells it `labels_concensus.csv`) + `Audios/**`.

Clips whose `SpkrID` is `Unknown` each get their own speaker id (`msp:unknown:<file>`, flagged with
`extra["speaker_unknown"]`), so they never pool into one giant pseudo-speaker in speaker-grouped folds.
Their real speaker may still be a test speaker, so the flag (not the id's spelling) is what the
evaluation reads (`EmbeddingSet.speaker_unknown`): such clips are never tested; they train only
under the official split, whose Train/Test sets the corpus authors made speaker-disjoint; k-fold
leaves them out of both sides by default (`eval.unknown_speakers_train`), counted in metrics.json.
`Split_Set` values (Train, Development, Test1, Test2, Test3) are kept verbatim as `split`.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

from datamodules.corpora.base import ParseResult, require_dir, speaker_id, to_emotion4, walk_files
from datamodules.records import ClipRecord

CORPUS = "msp_podcast"
SPEAKER_PREFIX = "msp"
EMOTIONS = {
    "A": "angry", "S": "sad", "H": "happy", "U": "surprise", "F": "fear", "D": "disgust",
    "C": "contempt", "N": "neutral", "O": "other", "X": "no_agreement",
}
LABEL_FILES = ("labels_consensus.csv", "labels_concensus.csv")
REQUIRED_COLUMNS = ("FileName", "EmoClass", "SpkrID")


def _float_or_none(value: Optional[str]) -> Optional[float]:
    value = (value or "").strip()
    return float(value) if value else None


def parse_msp_podcast(root: str | Path, labels_file: str | Path | None = None) -> ParseResult:
    """Parse an MSP-Podcast release.

    root: the release folder holding `Audios/` and `Labels/`.
    labels_file: explicit consensus CSV (otherwise `Labels/labels_consensus.csv` or the 1.8 spelling).
    """
    root = require_dir(Path(root).expanduser().resolve(), CORPUS, "the MSP-Podcast folder with Audios/ and Labels/")
    if labels_file is not None:
        labels = Path(labels_file).expanduser().resolve()
        if not labels.is_file():
            raise FileNotFoundError(f"{CORPUS}: labels_file {labels} does not exist")
    else:
        candidates = [root / "Labels" / n for n in LABEL_FILES]
        labels = next((p for p in candidates if p.is_file()), None)
        if labels is None:
            raise FileNotFoundError(f"{CORPUS}: none of {[str(c) for c in candidates]} exists; point data.root at the "
                                    "MSP-Podcast folder that contains Labels/ and Audios/")
    audio_dir = root / "Audios"
    if not audio_dir.is_dir():
        raise FileNotFoundError(f"{CORPUS}: no Audios/ folder under {root}")

    result = ParseResult(corpus=CORPUS, root=root)
    audio: dict[str, Path] = {}
    duplicates = 0
    for p in walk_files(audio_dir, (".wav", ".flac")):
        if p.stem in audio:
            duplicates += 1
            continue
        audio[p.stem] = p
    if duplicates:
        result.warn(f"{duplicates} audio file name(s) occur more than once under {audio_dir}; the first (sorted) copy is used")

    with open(labels, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing_cols = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing_cols:
            raise ValueError(f"{labels}: missing column(s) {missing_cols}; header is {reader.fieldnames}")
        labelled: set[str] = set()
        for lineno, row in enumerate(reader, 2):
            name = (row["FileName"] or "").strip()
            stem = Path(name).stem
            if not stem:
                result.skip(f"{labels}:{lineno}", "empty FileName")
                continue
            if stem in labelled:
                result.skip(f"{labels}:{lineno} ({name})", "duplicate label row")
                continue
            labelled.add(stem)
            code = (row["EmoClass"] or "").strip().upper()
            emotion = EMOTIONS.get(code)
            if emotion is None:
                result.skip(name, f"unknown label '{code}'")
                continue
            path = audio.get(stem)
            if path is None:
                result.skip(audio_dir / name, "missing audio file")
                continue
            try:
                act, val, dom = (_float_or_none(row.get(k)) for k in ("EmoAct", "EmoVal", "EmoDom"))
            except ValueError:
                result.skip(f"{labels}:{lineno} ({name})", "non-numeric EmoAct/EmoVal/EmoDom")
                continue
            spk = (row["SpkrID"] or "").strip()
            unknown = spk == "" or spk.lower() == "unknown"
            extra = {"speaker_unknown": unknown}
            gender = {"male": "M", "female": "F"}.get((row.get("Gender") or "").strip().lower())
            result.records.append(ClipRecord(
                path=str(path), speaker=speaker_id(SPEAKER_PREFIX, f"unknown:{stem}" if unknown else spk), corpus=CORPUS,
                utt_id=stem, emotion=emotion, emotion4=to_emotion4(emotion), gender=gender,
                split=(row.get("Split_Set") or "").strip() or None, arousal=act, valence=val, dominance=dom,
                extra=extra,
            ))
    n_unlabelled = len(set(audio) - labelled)
    if n_unlabelled:
        result.warn(f"{n_unlabelled} audio file(s) under {audio_dir} have no row in {labels.name} (not used)")
    return result
