"""EmoDB (Berlin): `wav/SSTTTEV.wav`; labels, speaker and text from the file name only.

Any format libsndfile reads is accepted whatever the extension (e.g. a FLAC copy of the release).

When the corpus's `erkennung.txt` (listener recognition / naturalness rates, Latin-1, decimal comma)
is present, its two rates go in `extra` so users can filter on recognisability as in the literature.
"""
from __future__ import annotations

import re
from pathlib import Path

from datamodules.corpora.base import (
    AUDIO_EXTENSIONS, ParseResult, one_per_clip, require_dir, speaker_id, to_emotion4, walk_files,
)
from datamodules.records import ClipRecord

CORPUS = "emodb"
EMOTIONS = {"W": "angry", "L": "boredom", "E": "disgust", "A": "fear", "F": "happy", "T": "sad", "N": "neutral"}
GENDERS = {"03": "M", "08": "F", "09": "F", "10": "M", "11": "M", "12": "M", "13": "F", "14": "F", "15": "M", "16": "F"}
EXPECTED_COUNTS = {"total": 535, "speakers": 10, "emotion=angry": 127, "emotion=boredom": 81, "emotion=disgust": 46,
                   "emotion=fear": 69, "emotion=happy": 71, "emotion=sad": 62, "emotion=neutral": 79}

_NAME = re.compile(r"^(\d\d)([ab]\d\d)([A-Z])([a-z])$")


def _read_ratings(path: Path) -> dict[str, tuple[float, float]]:
    out = {}
    for line in path.read_text(encoding="latin-1").splitlines()[1:]:
        parts = [p.strip() for p in line.split("\t")]
        if len(parts) >= 4 and parts[1].endswith(".wav"):
            try:
                out[Path(parts[1]).stem] = (float(parts[2].replace(",", ".")), float(parts[3].replace(",", ".")))
            except ValueError:
                continue  # optional metadata: an odd row only loses its rates
    return out


def parse_emodb(root: str | Path) -> ParseResult:
    """root: the EmoDB folder holding `wav/` (or the `wav/` folder itself)."""
    root = require_dir(Path(root).expanduser().resolve(), CORPUS, "the EmoDB folder containing wav/")
    wav_dir = root / "wav"
    if not wav_dir.is_dir():
        if root.name == "wav" or any(_NAME.match(p.stem) for p in root.iterdir()
                                     if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS):
            wav_dir, root = root, root.parent
        else:
            raise FileNotFoundError(f"{CORPUS}: no wav/ folder under {root}; point data.root at the EmoDB folder "
                                    "that contains wav/")
    result = ParseResult(corpus=CORPUS, root=root, expected_counts=dict(EXPECTED_COUNTS))
    ratings_file = root / "erkennung.txt"
    ratings = _read_ratings(ratings_file) if ratings_file.is_file() else {}
    for path in one_per_clip(walk_files(wav_dir, AUDIO_EXTENSIONS), result):
        m = _NAME.match(path.stem)
        if not m:
            result.skip(path, "unparseable file name")
            continue
        spk, text, letter, version = m.groups()
        emotion = EMOTIONS.get(letter)
        if emotion is None:
            result.skip(path, f"unknown label '{letter}'")
            continue
        if spk not in GENDERS:
            result.warn(f"{path}: speaker {spk} is not one of EmoDB's ten actors; gender left empty")
        extra: dict = {"text": text, "version": version}
        if path.stem in ratings:
            extra["recognition"], extra["naturalness"] = ratings[path.stem]
        result.records.append(ClipRecord(
            path=str(path), speaker=speaker_id(CORPUS, spk), corpus=CORPUS, utt_id=path.stem,
            emotion=emotion, emotion4=to_emotion4(emotion), gender=GENDERS.get(spk), extra=extra,
        ))
    return result
