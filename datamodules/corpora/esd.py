"""ESD: `Emotion Speech Dataset/SSSS/<Emotion>/[train|evaluation|test/]SSSS_NNNNNN.wav`.

The emotion comes from the folder; the official split from the `train/evaluation/test` subfolder
when the release has one (split is None in flat releases). Speakers 0001-0010 speak Mandarin and
0011-0020 English (`extra["language"]`). Transcripts from `SSSS/SSSS.txt` (UTF-8 or UTF-16) go in
`extra["transcript"]`.
"""
from __future__ import annotations

import re
from pathlib import Path

from datamodules.corpora.base import (
    AUDIO_EXTENSIONS, ParseResult, one_per_clip, read_text_any, require_dir, speaker_id, to_emotion4, walk_files,
)
from datamodules.records import ClipRecord

CORPUS = "esd"
DATASET_FOLDER = "Emotion Speech Dataset"
EMOTIONS = {"neutral": "neutral", "angry": "angry", "happy": "happy", "sad": "sad", "surprise": "surprise"}
SPLITS = ("train", "evaluation", "test")
# 20 speakers x 5 emotions x 350 utterances; official split 300 / 20 / 30 per speaker and emotion.
EXPECTED_COUNTS = {"total": 35000, "speakers": 20}
EXPECTED_SPLIT_COUNTS = {"total@split=train": 30000, "total@split=evaluation": 2000, "total@split=test": 3000}

_SPEAKER_DIR = re.compile(r"^\d{4}$")
_NAME = re.compile(r"^(\d{4})_(\d{6})$")


def _dataset_dir(root: Path) -> Path:
    def has_speakers(p: Path) -> bool:
        return p.is_dir() and any(_SPEAKER_DIR.match(c.name) and c.is_dir() for c in p.iterdir())

    for candidate in (root, root / DATASET_FOLDER):
        if has_speakers(candidate):
            return candidate
    raise FileNotFoundError(f"{CORPUS}: no speaker folders (0001..0020) under {root} or {root / DATASET_FOLDER}; "
                            f"point data.root at the '{DATASET_FOLDER}' folder or its parent")


def _read_transcripts(path: Path, result: ParseResult) -> dict[str, str]:
    out = {}
    for lineno, line in enumerate(read_text_any(path).splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            result.warn(f"{path}:{lineno}: transcript line without a tab ignored: {line[:60]!r}")
            continue
        out[parts[0].strip()] = parts[1].strip()
    return out


def parse_esd(root: str | Path, transcripts: bool = True) -> ParseResult:
    root = require_dir(Path(root).expanduser().resolve(), CORPUS, f"the '{DATASET_FOLDER}' folder or its parent")
    data = _dataset_dir(root)
    result = ParseResult(corpus=CORPUS, root=data, expected_counts=dict(EXPECTED_COUNTS))
    for spk_dir in sorted(p for p in data.iterdir() if p.is_dir() and _SPEAKER_DIR.match(p.name)):
        spk = spk_dir.name
        language = "Mandarin" if int(spk) <= 10 else "English"
        texts: dict[str, str] = {}
        txt = spk_dir / f"{spk}.txt"
        if transcripts and txt.is_file():
            texts = _read_transcripts(txt, result)
        for emo_dir in sorted(p for p in spk_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            emotion = EMOTIONS.get(emo_dir.name.lower())
            for path in one_per_clip(walk_files(emo_dir, AUDIO_EXTENSIONS), result):
                if emotion is None:
                    result.skip(path, f"unknown label '{emo_dir.name}'")
                    continue
                m = _NAME.match(path.stem)
                if not m:
                    result.skip(path, "unparseable file name")
                    continue
                if m.group(1) != spk:
                    result.skip(path, f"file name speaker {m.group(1)} differs from folder {spk}")
                    continue
                sub = path.parent.relative_to(emo_dir).parts
                split = sub[0].lower() if sub else None
                if split is not None and split not in SPLITS:
                    result.skip(path, f"unknown split folder '{sub[0]}'")
                    continue
                extra = {"language": language}
                if path.stem in texts:
                    extra["transcript"] = texts[path.stem]
                result.records.append(ClipRecord(
                    path=str(path), speaker=speaker_id(CORPUS, spk), corpus=CORPUS, utt_id=path.stem,
                    emotion=emotion, emotion4=to_emotion4(emotion), split=split, extra=extra,
                ))
    if any(r.split for r in result.records):
        result.expected_counts.update(EXPECTED_SPLIT_COUNTS)
    return result
