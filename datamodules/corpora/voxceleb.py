"""VoxCeleb 1/2 for speaker training: `.../idNNNNN/<youtube_id>/NNNNN.{wav,m4a}` anywhere under the root.

VoxCeleb1 ships `wav/`, VoxCeleb2 `dev/aac/` with m4a (which soundfile cannot decode); when a
same-stem `.wav` sits next to an m4a the record points at the wav and the m4a is not listed twice.
`iden_split.txt` (1 train, 2 dev, 3 test) sets `split`; utt ids are `idNNNNN/<yt>/NNNNN`, the form
trial lists use.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from datamodules.corpora.base import ParseResult, require_dir, speaker_id, walk_files
from datamodules.records import ClipRecord

CORPUS = "voxceleb"
IDEN_SPLITS = {"1": "train", "2": "dev", "3": "test"}
_SPEAKER = re.compile(r"^id\d{5}$")
_UTT = re.compile(r"^\d{5}$")


def _read_iden_split(path: Path) -> dict[str, str]:
    out = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in IDEN_SPLITS:
            raise ValueError(f"{path}:{lineno}: expected 'S id/yt/NNNNN.wav' with S in 1/2/3, got {line!r}")
        out[parts[1].rsplit(".", 1)[0]] = IDEN_SPLITS[parts[0]]
    return out


def parse_voxceleb(root: str | Path, iden_split: str | Path | None = None) -> ParseResult:
    """root: a VoxCeleb folder (containing wav/ or dev/aac/ ...); iden_split: defaults to root/iden_split.txt."""
    root = require_dir(Path(root).expanduser().resolve(), CORPUS, "a VoxCeleb folder with idNNNNN/<yt>/NNNNN.wav files")
    splits: dict[str, str] = {}
    split_file: Optional[Path] = Path(iden_split).expanduser().resolve() if iden_split else root / "iden_split.txt"
    if iden_split and not split_file.is_file():
        raise FileNotFoundError(f"{CORPUS}: iden_split file {split_file} does not exist")
    if split_file.is_file():
        splits = _read_iden_split(split_file)

    result = ParseResult(corpus=CORPUS, root=root)
    chosen: dict[str, Path] = {}  # utt id -> file (a wav beats an m4a with the same stem)
    originals: dict[str, Path] = {}
    for path in walk_files(root, (".wav", ".m4a", ".flac")):
        parts = path.parts
        spk, yt, utt = parts[-3], parts[-2], path.stem
        if not (_SPEAKER.match(spk) and _UTT.match(utt)):
            result.skip(path, "unparseable path (expected idNNNNN/<youtube_id>/NNNNN.wav)")
            continue
        key = f"{spk}/{yt}/{utt}"
        prev = chosen.get(key)
        if prev is None:
            chosen[key] = path
        elif prev.parent == path.parent and {prev.suffix.lower(), path.suffix.lower()} == {".wav", ".m4a"}:
            wav, m4a = (prev, path) if prev.suffix.lower() == ".wav" else (path, prev)
            chosen[key], originals[key] = wav, m4a  # a conversion next to its original: one clip
        else:
            result.skip(path, f"duplicate utterance {key} (kept {prev})")
    if not chosen and not result.skipped:
        raise FileNotFoundError(f"{CORPUS}: no idNNNNN/<youtube_id>/NNNNN.(wav|m4a) files under {root}")
    for key, path in sorted(chosen.items()):
        spk = key.split("/", 1)[0]
        extra = {"youtube_id": key.split("/")[1]}
        if key in originals:
            extra["original_path"] = str(originals[key])
        result.records.append(ClipRecord(path=str(path), speaker=speaker_id(CORPUS, spk), corpus=CORPUS,
                                         utt_id=key, split=splits.get(key), extra=extra))
    if splits:
        missing = sum(1 for r in result.records if r.split is None)
        if missing:
            result.warn(f"{missing} utterance(s) are not listed in {split_file.name}; split left empty")
    return result


def load_trials(path: str | Path) -> list[tuple[int, str, str]]:
    """Read a verification trial list (`L path1 path2`, L = 1 same speaker / 0 different), e.g. veri_test2.txt.

    Paths are returned as written (relative `idNNNNN/<yt>/NNNNN.wav`); strip the extension to match utt ids.
    """
    path = Path(path)
    trials = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3 or parts[0] not in ("0", "1"):
            raise ValueError(f"{path}:{lineno}: expected 'L path1 path2' with L in 0/1, got {line!r}")
        trials.append((int(parts[0]), parts[1], parts[2]))
    if not trials:
        raise ValueError(f"{path}: no trials")
    return trials
