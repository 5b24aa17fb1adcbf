"""Any corpus laid out as folders or with labels in file names, so new data needs no new code.

Default layout: `<root>/<emotion>/[<speaker>/]<clip>.wav`. With `emotion_regex` / `speaker_regex`
the labels are read from the file name (or from the path relative to the root with
`regex_target="relpath"`), using the named group `emotion` / `speaker` or else group 1.
Raw labels go through `label_map` (raw -> canonical; map to None to exclude a label) and then the
shared alias table (ang/anger -> angry, ...); a label neither knows is skipped as unknown.

Speaker: from `speaker_regex`, else the clip's parent folder (when it is not the emotion folder),
else the file stem — with a warning, since speaker-independent folds are then impossible.

Files without an audio extension are skipped and reported ("not an audio file (.txt)"); a clip present
in two formats (x.wav and x.flac) is used once (the .wav), the other copy reported.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Literal, Mapping, Optional

from datamodules.corpora.base import (
    AUDIO_EXTENSIONS, ParseResult, normalize_emotion, one_per_clip, require_dir, speaker_id, to_emotion4, walk_files,
)
from datamodules.records import ClipRecord


def _compile(pattern: Optional[str], group: str, option: str) -> Optional[re.Pattern]:
    if pattern is None:
        return None
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"folders: {option}={pattern!r} is not a valid regular expression: {e}") from e
    if group not in rx.groupindex and rx.groups < 1:
        raise ValueError(f"folders: {option}={pattern!r} needs a named group (?P<{group}>...) or a capture group")
    return rx


def _extract(rx: re.Pattern, text: str, group: str) -> Optional[str]:
    m = rx.search(text)
    if not m:
        return None
    value = m.group(group) if group in rx.groupindex else m.group(1)
    return value or None


def parse_folders(
    root: str | Path,
    emotion_regex: Optional[str] = None,
    speaker_regex: Optional[str] = None,
    label_map: Optional[Mapping[str, Optional[str]]] = None,
    extensions: Iterable[str] = AUDIO_EXTENSIONS,
    regex_target: Literal["name", "relpath"] = "name",
    corpus_name: str = "folders",
    merge_excited: bool = False,
) -> ParseResult:
    root = require_dir(Path(root).expanduser().resolve(), corpus_name,
                       "a folder of <emotion>/<clip>.wav or clips whose names carry the label")
    if regex_target not in ("name", "relpath"):
        raise ValueError(f"folders: regex_target must be 'name' or 'relpath', got {regex_target!r}")
    emo_rx = _compile(emotion_regex, "emotion", "emotion_regex")
    spk_rx = _compile(speaker_regex, "speaker", "speaker_regex")
    label_map = dict(label_map or {})
    lower_map = {str(k).lower(): v for k, v in label_map.items()}
    result = ParseResult(corpus=corpus_name, root=root)
    exts = tuple(e.lower() for e in extensions)
    files = []
    for path in walk_files(root, None):  # a user-made tree: every other file is reported, not ignored
        if path.name.lower().endswith(exts):
            files.append(path)
        else:
            result.skip(path, f"not an audio file ({path.suffix.lower() or 'no extension'})")
    if not files:
        raise FileNotFoundError(f"{corpus_name}: no audio files with extensions {exts} under {root}")
    files = one_per_clip(files, result)
    stem_speakers = 0
    for path in files:
        rel = path.relative_to(root)
        target = path.name if regex_target == "name" else rel.as_posix()
        if emo_rx is not None:
            raw = _extract(emo_rx, target, "emotion")
            if raw is None:
                result.skip(path, "emotion not parseable by emotion_regex")
                continue
        else:
            if len(rel.parts) < 2:
                result.skip(path, "clip not inside an <emotion>/ folder")
                continue
            raw = rel.parts[0]
        if raw in label_map or raw.lower() in lower_map:
            mapped = label_map[raw] if raw in label_map else lower_map[raw.lower()]
            if mapped is None:
                result.skip(path, f"label '{raw}' excluded by label_map")
                continue
            emotion = normalize_emotion(str(mapped)) or str(mapped).strip().lower()
        else:
            emotion = normalize_emotion(raw)
            if emotion is None:
                result.skip(path, f"unknown label '{raw}' (add it to label_map)")
                continue

        if spk_rx is not None:
            spk = _extract(spk_rx, target, "speaker")
            if spk is None:
                result.skip(path, "speaker not parseable by speaker_regex")
                continue
        else:
            min_depth = 2 if emo_rx is not None else 3  # the parent must not be the emotion folder
            if len(rel.parts) >= min_depth:
                spk = rel.parts[-2]
            else:
                spk = path.stem
                stem_speakers += 1
        result.records.append(ClipRecord(
            path=str(path), speaker=speaker_id(corpus_name, spk), corpus=corpus_name,
            utt_id=rel.with_suffix("").as_posix(), emotion=emotion,
            emotion4=to_emotion4(emotion, merge_excited=merge_excited), extra={"raw_label": raw},
        ))
    if stem_speakers:
        result.warn(f"{stem_speakers} clip(s) have no speaker folder and no speaker_regex: each file stem is its own "
                    "speaker, so speaker-independent folds are impossible; set speaker_regex or add <speaker>/ folders")
    return result
