"""RAVDESS: `Actor_NN/MM-VV-EE-II-SS-RR-NN.wav`, found anywhere under the root.

Labels come from the seven file-name fields. Calm is kept as its own emotion (no 4-class label);
song files are counted as skipped unless `include_song=True`; video-only files are always skipped.
Any format libsndfile reads is accepted whatever the extension (e.g. a FLAC copy of the release).
"""
from __future__ import annotations

import re
from pathlib import Path

from datamodules.corpora.base import (
    AUDIO_EXTENSIONS, ParseResult, one_per_clip, require_dir, speaker_id, to_emotion4, walk_files,
)
from datamodules.records import ClipRecord

CORPUS = "ravdess"
EMOTIONS = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry", "06": "fear",
            "07": "disgust", "08": "surprise"}
MODALITIES = {"01": "audio-video", "02": "video-only", "03": "audio-only"}
CHANNELS = {"01": "speech", "02": "song"}
INTENSITIES = {"01": "normal", "02": "strong"}
# Speech: 24 actors x 60 files; song: 23 actors (actor 18 has none) x 44 files.
SPEECH_FILES, SONG_FILES = 1440, 1012

_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")


def parse_ravdess(root: str | Path, include_song: bool = False) -> ParseResult:
    """Parse RAVDESS audio (any distribution: flat Actor_NN folders or Audio_Speech_Actors_01-24/...)."""
    root = require_dir(Path(root).expanduser().resolve(), CORPUS, "a folder containing the Actor_NN folders")
    files = list(walk_files(root, AUDIO_EXTENSIONS))
    if not any(p.parent.name.startswith("Actor_") for p in files):
        raise FileNotFoundError(f"{CORPUS}: no Actor_NN/ audio files under {root}; point data.root at the RAVDESS "
                                "folder (e.g. Audio_Speech_Actors_01-24)")
    expected = {"total": SPEECH_FILES + (SONG_FILES if include_song else 0), "speakers": 24}
    result = ParseResult(corpus=CORPUS, root=root, expected_counts=expected)
    seen: dict[str, Path] = {}
    for path in one_per_clip(files, result):
        m = _NAME.match(path.stem)
        if not m:
            result.skip(path, "unparseable file name")
            continue
        modality, channel, emo, intensity, statement, repetition, actor = m.groups()
        if path.stem in seen:
            result.skip(path, f"duplicate of {seen[path.stem]}")
            continue
        if modality == "02":
            result.skip(path, "video-only modality")
            continue
        if modality not in MODALITIES or channel not in CHANNELS or intensity not in INTENSITIES:
            result.skip(path, "unparseable file name")
            continue
        if channel == "02" and not include_song:
            result.skip(path, "song")
            continue
        emotion = EMOTIONS.get(emo)
        if emotion is None:
            result.skip(path, f"unknown label '{emo}'")
            continue
        seen[path.stem] = path
        if path.parent.name.startswith("Actor_") and path.parent.name != f"Actor_{actor}":
            result.warn(f"{path}: actor {actor} in the file name but folder {path.parent.name}; the file name wins")
        result.records.append(ClipRecord(
            path=str(path), speaker=speaker_id(CORPUS, actor), corpus=CORPUS, utt_id=path.stem,
            emotion=emotion, emotion4=to_emotion4(emotion), gender="M" if int(actor) % 2 else "F",
            extra={"modality": MODALITIES[modality], "vocal_channel": CHANNELS[channel],
                   "intensity": INTENSITIES[intensity], "statement": int(statement), "repetition": int(repetition)},
        ))
    return result
