"""IEMOCAP: labels from `SessionN/dialog/EmoEvaluation/<dialog>.txt`, audio from `sentences/wav/`.

The speaker is the session plus the gender letter of the speaking turn (the utterance id's last
field, `F000` -> F). The letter after `Ses01` in the dialog name only says who wore the motion-capture
markers, so using it would mix the two speakers of a session. Audio in any format libsndfile reads is
accepted (`<utt>.wav` as released, or e.g. `<utt>.flac`).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Optional

from datamodules.corpora.base import ParseResult, find_audio, require_dir, speaker_id, to_emotion4
from datamodules.records import ClipRecord

CORPUS = "iemocap"
EMOTIONS = {
    "neu": "neutral", "hap": "happy", "exc": "excited", "sad": "sad", "ang": "angry",
    "fru": "frustrated", "sur": "surprise", "fea": "fear", "dis": "disgust", "oth": "other",
    "xxx": "no_agreement",
}
# The standard 4-class set (neu, hap+exc, sad, ang) of the full release.
EMOTION4_PER_SESSION = {"Session1": 1085, "Session2": 1023, "Session3": 1151, "Session4": 1031, "Session5": 1241}
EXPECTED_COUNTS = {"emotion4": 5531, "speakers": 10,
                   **{f"emotion4@session={s}": n for s, n in EMOTION4_PER_SESSION.items()}}

_SUMMARY = re.compile(
    r"^\[\s*([\d.]+)\s*-\s*([\d.]+)\s*\]\s+(\S+)\s+(\S+)\s+\[\s*([\d.]+)\s*,\s*([\d.]+)\s*,\s*([\d.]+)\s*\]\s*$"
)


def parse_iemocap(root: str | Path, sessions: Optional[Iterable[int]] = None) -> ParseResult:
    """Parse IEMOCAP_full_release.

    sessions: restrict to these session numbers (1..5); the expected counts follow the restriction.
    """
    root = require_dir(Path(root).expanduser().resolve(), CORPUS, "IEMOCAP_full_release/ with Session1..Session5")
    wanted = sorted(set(sessions)) if sessions is not None else [1, 2, 3, 4, 5]
    bad = [s for s in wanted if s not in range(1, 6)]
    if bad:
        raise ValueError(f"{CORPUS}: sessions must be in 1..5, got {bad}")
    present = [s for s in wanted if (root / f"Session{s}").is_dir()]
    if not present:
        raise FileNotFoundError(f"{CORPUS}: no Session1..5 folders under {root}; point data.root at IEMOCAP_full_release")

    expected = {"emotion4": sum(EMOTION4_PER_SESSION[f"Session{s}"] for s in wanted), "speakers": 2 * len(wanted)}
    expected.update({f"emotion4@session=Session{s}": EMOTION4_PER_SESSION[f"Session{s}"] for s in wanted})
    result = ParseResult(corpus=CORPUS, root=root, expected_counts=expected)
    for s in wanted:
        if s not in present:
            result.warn(f"Session{s} folder missing under {root}")

    seen: set[str] = set()
    for s in present:
        session = f"Session{s}"
        label_dir = root / session / "dialog" / "EmoEvaluation"
        if not label_dir.is_dir():
            result.warn(f"{label_dir} missing: {session} has no labels")
            continue
        label_files = sorted(p for p in label_dir.glob("*.txt") if not p.name.startswith("."))
        if not label_files:
            result.warn(f"no <dialog>.txt label files in {label_dir}")
        for label_file in label_files:
            dialog = label_file.stem
            with open(label_file, encoding="utf-8", errors="replace") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.startswith("["):
                        continue  # header (%), blank, and annotator lines (C-E1:, A-E2:, ...)
                    m = _SUMMARY.match(line.rstrip("\r\n"))
                    if not m:
                        result.skip(f"{label_file}:{lineno}", "unparseable label line")
                        continue
                    start, end, utt, emo, v, a, d = m.groups()
                    if utt in seen:
                        result.skip(f"{label_file}:{lineno} ({utt})", "duplicate utterance id")
                        continue
                    seen.add(utt)
                    emotion = EMOTIONS.get(emo.lower())
                    if emotion is None:
                        result.skip(utt, f"unknown label '{emo}'")
                        continue
                    turn = utt.rsplit("_", 1)[-1]
                    gender = turn[:1].upper()
                    if gender not in ("F", "M"):
                        result.skip(utt, "unparseable utterance id (no F/M turn field)")
                        continue
                    folder = root / session / "sentences" / "wav" / dialog
                    audio = find_audio(folder, utt)
                    if audio is None:
                        result.skip(folder / f"{utt}.wav", "missing audio file")
                        continue
                    result.records.append(ClipRecord(
                        path=str(audio), speaker=speaker_id(CORPUS, f"Ses{s:02d}{gender}"), corpus=CORPUS,
                        utt_id=utt, emotion=emotion, emotion4=to_emotion4(emotion, merge_excited=True),
                        gender=gender, session=session, valence=float(v), arousal=float(a), dominance=float(d),
                        extra={"dialog": dialog, "start": float(start), "end": float(end),
                               "improvised": "impro" in dialog},
                    ))
    return result
