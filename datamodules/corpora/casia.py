"""CASIA Chinese emotional speech, public subset: `<speaker>/<emotion>/<sentence>.wav`.

4 professional Mandarin speakers x 6 emotions (angry fear happy neutral sad surprise) x the same 50
sentences (201-250) = 1,200 clips. Labels come from the folders; the release's `.lab`/`.peak`/`.tag`
side files are not audio and are not read. Any format libsndfile reads is accepted whatever its
extension (the shared copy is FLAC). The expected counts are the public subset's: a fuller CASIA
release is parsed the same way and reported as differing from them.

Gender is not stated in the release. The literature describes two female and two male speakers, and
the median F0 of eight neutral clips per speaker agrees (measured with torchaudio's
`detect_pitch_frequency`: ZhaoZuoxiang 119 Hz, wangzhe 108 Hz, liuchanhg 180 Hz, zhaoquanyin 169 Hz);
a speaker not in this table gets no gender and a warning.
"""
from __future__ import annotations

import re
from pathlib import Path

from datamodules.corpora.base import (
    AUDIO_EXTENSIONS, ParseResult, one_per_clip, require_dir, speaker_id, to_emotion4, walk_files,
)
from datamodules.records import ClipRecord

CORPUS = "casia"
EMOTIONS = {"angry": "angry", "fear": "fear", "happy": "happy", "neutral": "neutral", "sad": "sad",
            "surprise": "surprise"}
GENDERS = {"ZhaoZuoxiang": "M", "wangzhe": "M", "liuchanhg": "F", "zhaoquanyin": "F"}
EXPECTED_COUNTS = {"total": 1200, "speakers": 4, **{f"emotion={e}": 200 for e in EMOTIONS}}

_NAME = re.compile(r"^\d+$")


def parse_casia(root: str | Path) -> ParseResult:
    """root: the folder holding the speaker folders (each with angry/ fear/ ... surprise/)."""
    root = require_dir(Path(root).expanduser().resolve(), CORPUS,
                       "the CASIA folder containing <speaker>/<emotion>/<sentence>.wav")
    files = list(walk_files(root, AUDIO_EXTENSIONS))
    if not any(len(p.relative_to(root).parts) >= 3 and p.parent.name.lower() in EMOTIONS for p in files):
        raise FileNotFoundError(f"{CORPUS}: no <speaker>/<emotion>/<sentence>.wav files under {root} (emotion folders: "
                                f"{', '.join(EMOTIONS)}); point data.root at the folder holding the speaker folders")
    result = ParseResult(corpus=CORPUS, root=root, expected_counts=dict(EXPECTED_COUNTS))
    unknown_speakers = set()
    for path in one_per_clip(files, result):
        rel = path.relative_to(root)
        if len(rel.parts) < 3:
            result.skip(path, "not in a <speaker>/<emotion>/ folder")
            continue
        emotion = EMOTIONS.get(path.parent.name.lower())
        if emotion is None:
            result.skip(path, f"unknown emotion folder '{path.parent.name}'")
            continue
        if not _NAME.match(path.stem):
            result.skip(path, "unparseable file name (expected <sentence number>)")
            continue
        spk = path.parent.parent.name
        if spk not in GENDERS:
            unknown_speakers.add(spk)
        result.records.append(ClipRecord(
            path=str(path), speaker=speaker_id(CORPUS, spk), corpus=CORPUS, utt_id=f"{spk}/{emotion}/{path.stem}",
            emotion=emotion, emotion4=to_emotion4(emotion), gender=GENDERS.get(spk),
            extra={"sentence": int(path.stem)},
        ))
    if unknown_speakers:
        result.warn(f"speaker folder(s) {sorted(unknown_speakers)} are not among CASIA's four speakers "
                    f"({', '.join(GENDERS)}): gender left empty")
    return result
