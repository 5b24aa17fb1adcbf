"""CREMA-D: `AudioWAV/AAAA_SSS_EEE_LL.wav`, labels from the file name (the acted emotion).

Metadata CSVs are optional: `VideoDemographics.csv` gives gender, `SentenceFilenames.csv` lists every
clip (so a listed clip without audio is reported), and `processedResults/summaryTable.csv` gives the
crowd-perceived voice-only label, kept in `extra` because the acted label is the standard target.
Any format libsndfile reads is accepted whatever the extension (e.g. a FLAC copy of the release).
"""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Optional

from datamodules.corpora.base import (
    AUDIO_EXTENSIONS, ParseResult, one_per_clip, require_dir, speaker_id, to_emotion4, walk_files,
)
from datamodules.records import ClipRecord

CORPUS = "cremad"
EMOTIONS = {"ANG": "angry", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
VOTE_LETTERS = {"A": "angry", "D": "disgust", "F": "fear", "H": "happy", "N": "neutral", "S": "sad"}
INTENSITIES = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified"}
SENTENCES = ("IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI")
EXPECTED_COUNTS = {"total": 7442, "speakers": 91}

_NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")


def _find_csv(name: str, folders: list[Path]) -> Optional[Path]:
    for folder in folders:
        p = folder / name
        if p.is_file():
            return p
    return None


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f))


def parse_cremad(root: str | Path, metadata_dir: str | Path | None = None) -> ParseResult:
    """Parse CREMA-D.

    root: the folder holding `AudioWAV/` (or `AudioWAV` itself).
    metadata_dir: where the CSVs live when not next to `AudioWAV/` (searched first).
    """
    root = require_dir(Path(root).expanduser().resolve(), CORPUS, "the CREMA-D folder containing AudioWAV/")
    audio_dir = root / "AudioWAV"
    if not audio_dir.is_dir():
        if root.name == "AudioWAV":
            audio_dir, root = root, root.parent
        else:
            raise FileNotFoundError(f"{CORPUS}: no AudioWAV/ folder under {root}; point data.root at the CREMA-D "
                                    "folder that contains AudioWAV/")
    folders = ([Path(metadata_dir).expanduser().resolve()] if metadata_dir else []) + [root, root / "processedResults"]
    if metadata_dir and not folders[0].is_dir():
        raise FileNotFoundError(f"{CORPUS}: metadata_dir {folders[0]} does not exist")

    result = ParseResult(corpus=CORPUS, root=root, expected_counts=dict(EXPECTED_COUNTS))

    gender: dict[str, str] = {}
    demo = _find_csv("VideoDemographics.csv", folders)
    if demo is None:
        result.warn("VideoDemographics.csv not found: gender left empty")
    else:
        for row in _read_csv(demo):
            sex = (row.get("Sex") or "").strip().lower()
            gender[str(row["ActorID"]).strip()] = {"male": "M", "female": "F"}.get(sex)

    votes: dict[str, dict] = {}
    summary = _find_csv("summaryTable.csv", folders)
    if summary is not None:
        for row in _read_csv(summary):
            votes[row["FileName"].strip()] = row

    audio: dict[str, Path] = {}
    for p in one_per_clip(walk_files(audio_dir, AUDIO_EXTENSIONS), result):
        if p.stem in audio:
            result.skip(p, f"duplicate of {audio[p.stem]}")
            continue
        audio[p.stem] = p
    listed: Optional[list[str]] = None
    names_csv = _find_csv("SentenceFilenames.csv", folders)
    if names_csv is not None:
        listed = [row["Filename"].strip() for row in _read_csv(names_csv)]
        for name in listed:
            if name not in audio:
                result.skip(audio_dir / f"{name}.wav", "missing audio file")
        extra_names = sorted(set(audio) - set(listed))
        if extra_names:
            result.warn(f"{len(extra_names)} audio file(s) not listed in SentenceFilenames.csv (kept), e.g. {extra_names[:3]}")

    for stem, path in sorted(audio.items()):
        m = _NAME.match(stem)
        if not m:
            result.skip(path, "unparseable file name")
            continue
        actor, sentence, emo_code, level = m.groups()
        emotion = EMOTIONS.get(emo_code)
        if emotion is None:
            result.skip(path, f"unknown label '{emo_code}'")
            continue
        extra: dict = {"sentence": sentence, "intensity": INTENSITIES.get(level, level)}
        vote = votes.get(stem)
        if vote is not None:
            letters = [v for v in (vote.get("VoiceVote") or "").split(":") if v]
            extra["voice_vote"] = [VOTE_LETTERS.get(v, v) for v in letters]
            try:
                extra["voice_level"] = float(vote["VoiceLevel"])
            except (KeyError, TypeError, ValueError):
                pass  # level is informative only; a blank cell just leaves it out
        result.records.append(ClipRecord(
            path=str(path), speaker=speaker_id(CORPUS, actor), corpus=CORPUS, utt_id=stem,
            emotion=emotion, emotion4=to_emotion4(emotion), gender=gender.get(actor), extra=extra,
        ))
    if gender:
        missing = sorted({r.speaker for r in result.records if r.gender is None})
        if missing:
            result.warn(f"{len(missing)} actor(s) absent from VideoDemographics.csv: {missing[:5]}")
    return result
