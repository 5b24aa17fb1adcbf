"""LibriSpeech for speaker training: `<subset>/<speaker>/<chapter>/<spk>-<chap>-<utt>.flac`.

Gender from `SPEAKERS.TXT` (`ID | SEX | SUBSET | MINUTES | NAME`, `;` comments; NAME may itself
contain `|`), the subset folder as `split`, transcripts from `<spk>-<chap>.trans.txt` when asked.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Optional

from datamodules.corpora.base import ParseResult, one_per_clip, require_dir, speaker_id, walk_files
from datamodules.records import ClipRecord

CORPUS = "librispeech"
_NAME = re.compile(r"^(\d+)-(\d+)-(\d+)$")


def read_speakers(path: Path) -> dict[str, dict]:
    out = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        parts = [p.strip() for p in line.split("|", 4)]
        if len(parts) < 3 or not parts[0].isdigit():
            raise ValueError(f"{path}:{lineno}: expected 'ID | SEX | SUBSET | MINUTES | NAME', got {line!r}")
        out[parts[0]] = {"gender": parts[1].upper() if parts[1].upper() in ("F", "M") else None, "subset": parts[2]}
    return out


def parse_librispeech(root: str | Path, subsets: Optional[Iterable[str]] = None, transcripts: bool = False) -> ParseResult:
    """root: the LibriSpeech folder (holding subsets and SPEAKERS.TXT) or one subset folder.

    subsets: only these subset folders (e.g. ["train-clean-100"]).
    """
    root = require_dir(Path(root).expanduser().resolve(), CORPUS, "the LibriSpeech folder (with train-clean-100/ ...)")
    wanted = set(subsets) if subsets is not None else None
    speakers_file = next((p for p in (root / "SPEAKERS.TXT", root.parent / "SPEAKERS.TXT") if p.is_file()), None)
    speakers = read_speakers(speakers_file) if speakers_file else {}
    result = ParseResult(corpus=CORPUS, root=root)
    if speakers_file is None:
        result.warn(f"SPEAKERS.TXT not found in {root} or its parent: gender left empty")
    texts: dict[str, str] = {}
    loaded_chapters: set[Path] = set()
    unlisted: set[str] = set()
    for path in one_per_clip(walk_files(root, (".flac", ".wav")), result):
        m = _NAME.match(path.stem)
        parts = path.parts
        if not m or len(parts) < 4 or parts[-3] != m.group(1) or parts[-2] != m.group(2):
            result.skip(path, "unparseable path (expected <subset>/<spk>/<chap>/<spk>-<chap>-<utt>.flac)")
            continue
        subset = parts[-4]  # the subset folder, or the root itself when it is one subset
        if wanted is not None and subset not in wanted:
            continue  # user-requested restriction, not a data problem
        spk = m.group(1)
        extra: dict = {"chapter": m.group(2)}
        if transcripts:
            if path.parent not in loaded_chapters:
                loaded_chapters.add(path.parent)
                trans = path.parent / f"{spk}-{m.group(2)}.trans.txt"
                if trans.is_file():
                    for line in trans.read_text(encoding="utf-8").splitlines():
                        utt, _, text = line.partition(" ")
                        texts[utt] = text
            if path.stem in texts:
                extra["transcript"] = texts[path.stem]
        if speakers and spk not in speakers and spk not in unlisted:
            unlisted.add(spk)
            result.warn(f"speaker {spk} not in SPEAKERS.TXT; gender left empty")
        result.records.append(ClipRecord(
            path=str(path), speaker=speaker_id(CORPUS, spk), corpus=CORPUS, utt_id=path.stem,
            gender=speakers.get(spk, {}).get("gender"), split=subset, extra=extra,
        ))
    if not result.records and not result.skipped:
        raise FileNotFoundError(f"{CORPUS}: no <spk>/<chap>/<spk>-<chap>-<utt>.flac files under {root}"
                                + (f" in subsets {sorted(wanted)}" if wanted else ""))
    return result
