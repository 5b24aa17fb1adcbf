"""ASED (Amharic Speech Emotion Dataset v1): `0N<Emotion>/xN-SS-RR-GG-PP.wav`, labels from folder + name.

65 speakers, 2,474 files as published, five emotions (neutral, fearful, happy, sad, angry), semi-natural.
`x` is the emotion letter (n f h s a; one file of the release has it upper-case) and `N` the folder
number; both must agree with the folder, else the clip is skipped with the disagreement named.
`SS` sentence, `RR` repetition, `GG` gender code (01 female, 02 male), `PP` speaker 01..65.

Caveats of the release, handled here and reported, never hidden:
- Five speaker numbers (09 15 21 23 25) appear with both gender codes, each on a single file. The speaker
  number identifies the speaker (the corpus describes 65 participants, 25 F + 40 M, which is what the
  per-speaker majority code gives); `gender` is that majority, the file's own code stays in
  `extra["gender_code"]`, and a warning names every such speaker with its file counts.
- Four files are byte-identical copies of another file (the same recording filed as repetitions 01 and
  02). With `skip_duplicates=True` (default) the later copy in sorted order is skipped as "byte-identical
  duplicate of a kept file" and a warning names each pair; the expected counts then are 2,470 clips.
  `skip_duplicates=False` keeps both copies (the published 2,474) and still names the pairs.
Any format libsndfile reads is accepted whatever its extension (the shared copy is FLAC).
"""
from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from pathlib import Path

from datamodules.corpora.base import (
    AUDIO_EXTENSIONS, ParseResult, one_per_clip, require_dir, speaker_id, to_emotion4, walk_files,
)
from datamodules.records import ClipRecord

CORPUS = "ased"
FOLDERS = {"01Neutral": "neutral", "02Fearful": "fear", "03Happy": "happy", "04Sad": "sad", "05Angry": "angry"}
LETTERS = {"n": "01Neutral", "f": "02Fearful", "h": "03Happy", "s": "04Sad", "a": "05Angry"}
GENDER_CODES = {"01": "F", "02": "M"}
# Files per folder as published, and the byte-identical duplicates among them (see the module docstring).
PUBLISHED = {"neutral": 522, "fear": 510, "happy": 486, "sad": 470, "angry": 486}
DUPLICATES = {"neutral": 1, "fear": 0, "happy": 1, "sad": 1, "angry": 1}

_NAME = re.compile(r"^([A-Za-z])(\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")


def expected_counts(skip_duplicates: bool = True) -> dict[str, int]:
    per_emotion = {e: n - (DUPLICATES[e] if skip_duplicates else 0) for e, n in PUBLISHED.items()}
    return {"total": sum(per_emotion.values()), "speakers": 65, "speakers@gender=F": 25, "speakers@gender=M": 40,
            **{f"emotion={e}": n for e, n in per_emotion.items()}}


def _digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _byte_duplicates(paths: list[Path]) -> dict[Path, Path]:
    """{later copy: first file with the same bytes}; only files of equal size are hashed."""
    by_size: dict[int, list[Path]] = defaultdict(list)
    for p in paths:
        by_size[p.stat().st_size].append(p)
    copies: dict[Path, Path] = {}
    for group in by_size.values():
        if len(group) < 2:
            continue
        first_of: dict[str, Path] = {}
        for p in sorted(group):
            first = first_of.setdefault(_digest(p), p)
            if first is not p:
                copies[p] = first
    return copies


def parse_ased(root: str | Path, skip_duplicates: bool = True) -> ParseResult:
    """root: the ASED folder holding 01Neutral ... 05Angry."""
    root = require_dir(Path(root).expanduser().resolve(), CORPUS, "the ASED folder containing 01Neutral ... 05Angry")
    if not any((root / f).is_dir() for f in FOLDERS):
        raise FileNotFoundError(f"{CORPUS}: none of the emotion folders {', '.join(FOLDERS)} under {root}; point "
                                "data.root at the ASED folder that contains them")
    result = ParseResult(corpus=CORPUS, root=root, expected_counts=expected_counts(skip_duplicates))
    files = one_per_clip(walk_files(root, AUDIO_EXTENSIONS), result)
    copies = _byte_duplicates(files)
    if copies:
        pairs = ", ".join(f"{c.relative_to(root).as_posix()} = {o.relative_to(root).as_posix()}"
                          for c, o in sorted(copies.items()))
        action = "the first copy is kept, the other skipped" if skip_duplicates else "both kept (skip_duplicates=false)"
        result.warn(f"{len(copies)} byte-identical duplicate file(s), {action}: {pairs}")

    parsed = []
    for path in files:
        folder = path.parent.name
        if path.parent.parent != root or folder not in FOLDERS:
            result.skip(path, "not in an ASED emotion folder (01Neutral ... 05Angry)")
            continue
        m = _NAME.match(path.stem)
        if not m:
            result.skip(path, "unparseable file name (expected xN-SS-RR-GG-PP)")
            continue
        letter, number, sentence, repetition, gender_code, spk = m.groups()
        if LETTERS.get(letter.lower()) != folder or folder[:2] != f"0{number}":
            result.skip(path, f"emotion letter '{letter}{number}' does not match folder {folder}")
            continue
        if gender_code not in GENDER_CODES:
            result.skip(path, f"unknown gender code '{gender_code}' (expected 01 or 02)")
            continue
        if skip_duplicates and path in copies:
            result.skip(path, "byte-identical duplicate of a kept file")
            continue
        parsed.append((path, FOLDERS[folder], int(sentence), int(repetition), gender_code, spk))

    codes: dict[str, Counter] = defaultdict(Counter)
    for *_, gender_code, spk in parsed:
        codes[spk][GENDER_CODES[gender_code]] += 1
    gender_of = {}
    for spk, count in codes.items():
        (top, n), *rest = count.most_common()
        gender_of[spk] = None if rest and rest[0][1] == n else top
    conflicts = sorted(s for s, c in codes.items() if len(c) > 1)
    if conflicts:
        listed = ", ".join(f"{speaker_id(CORPUS, s)} ({codes[s]['F']} F / {codes[s]['M']} M files)" for s in conflicts)
        result.warn(f"{len(conflicts)} speaker number(s) appear with both gender codes: {listed}. The speaker number "
                    "identifies the speaker; gender is each speaker's majority code (the file's own code is in "
                    "extra.gender_code)")

    for path, emotion, sentence, repetition, gender_code, spk in parsed:
        result.records.append(ClipRecord(
            path=str(path), speaker=speaker_id(CORPUS, spk), corpus=CORPUS, utt_id=path.stem,
            emotion=emotion, emotion4=to_emotion4(emotion), gender=gender_of[spk],
            extra={"sentence": sentence, "repetition": repetition, "gender_code": gender_code},
        ))
    return result
