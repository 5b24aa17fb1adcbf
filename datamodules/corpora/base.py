"""What every corpus parser returns, plus the small helpers they share.

A parser never drops an item silently: anything it cannot turn into a `ClipRecord` goes into
`ParseResult.skipped` with a reason, so the manifest summary can say exactly what was left out
and why (missing audio for a labelled utterance, unknown label, unparseable file name, ...).
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional

from datamodules.records import FOUR_CLASSES, ClipRecord

# Canonical emotion vocabulary (lower-case English words) shared by all parsers.
CANONICAL_EMOTIONS = (
    "angry", "happy", "neutral", "sad", "fear", "disgust", "surprise", "calm", "boredom",
    "excited", "frustrated", "contempt", "other", "no_agreement",
)

# Spellings found in corpora and user folder trees -> canonical word.
EMOTION_ALIASES = {
    "ang": "angry", "anger": "angry", "angry": "angry", "mad": "angry",
    "hap": "happy", "happy": "happy", "happiness": "happy", "joy": "happy",
    "neu": "neutral", "neutral": "neutral",
    "sad": "sad", "sadness": "sad",
    "fea": "fear", "fear": "fear", "fearful": "fear", "afraid": "fear",
    "dis": "disgust", "disgust": "disgust", "disgusted": "disgust",
    "sur": "surprise", "surprise": "surprise", "surprised": "surprise",
    "cal": "calm", "calm": "calm",
    "bor": "boredom", "boredom": "boredom", "bored": "boredom",
    "exc": "excited", "excited": "excited",
    "fru": "frustrated", "frustrated": "frustrated", "frustration": "frustrated",
    "con": "contempt", "contempt": "contempt",
    "oth": "other", "other": "other",
    "xxx": "no_agreement", "no_agreement": "no_agreement",
}

# Extensions of files read as audio. libsndfile reads the format from the content, not the name (a FLAC
# copy named .wav decodes); m4a is listed so VoxCeleb2's AAC files are found and reported (or replaced
# by a same-stem .wav conversion, see datamodules/audio.resolve_audio_path).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".snd",
                    ".w64", ".rf64", ".caf", ".m4a")
# When one clip exists in several formats (a release's .wav next to a .flac conversion), this one is used.
FORMAT_PREFERENCE = (".wav", ".flac")


def normalize_emotion(raw: str) -> Optional[str]:
    """Canonical word for a raw label, or None when the spelling is not known."""
    return EMOTION_ALIASES.get(raw.strip().lower())


def to_emotion4(emotion: Optional[str], merge_excited: bool = False) -> Optional[str]:
    """Four-class label (angry/happy/neutral/sad) or None; IEMOCAP merges excited into happy."""
    if emotion is None:
        return None
    if merge_excited and emotion == "excited":
        return "happy"
    return emotion if emotion in FOUR_CLASSES else None


@dataclass
class ParseResult:
    corpus: str
    root: Path
    records: list[ClipRecord] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path-or-id, reason)
    warnings: list[str] = field(default_factory=list)
    # Known sizes of the full corpus, checked by the manifest; keys use `count_records`' grammar.
    expected_counts: dict[str, int] = field(default_factory=dict)

    def skip(self, item: str | Path, reason: str) -> None:
        self.skipped.append((str(item), reason))

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    @property
    def skip_counts(self) -> Counter:
        return Counter(reason for _, reason in self.skipped)


def count_records(records: Iterable[ClipRecord], key: str) -> int:
    """Evaluate an expected-count key on records.

    Grammar: `WHAT[@FIELD=VALUE]` where WHAT is `total` (clips), `emotion4` (clips with a
    4-class label), `speakers` (distinct speakers) or `emotion=<label>`; the optional filter keeps
    records whose FIELD (a ClipRecord attribute) equals VALUE. E.g. `emotion4@session=Session1`.
    """
    what, _, where = key.partition("@")
    recs = list(records)
    if where:
        fname, _, value = where.partition("=")
        recs = [r for r in recs if str(getattr(r, fname)) == value]
    if what == "total":
        return len(recs)
    if what == "emotion4":
        return sum(r.emotion4 is not None for r in recs)
    if what == "speakers":
        return len({r.speaker for r in recs})
    if what.startswith("emotion="):
        label = what.split("=", 1)[1]
        return sum(r.emotion == label for r in recs)
    raise ValueError(f"expected-count key {key!r}: unknown quantity {what!r}; expected total, emotion4, speakers or emotion=<label>")


def check_expected_counts(records: list[ClipRecord], expected: dict[str, int]) -> list[str]:
    """One message per expected count that the records do not reproduce."""
    problems = []
    for key, want in expected.items():
        got = count_records(records, key)
        if got != want:
            problems.append(f"{key}: expected {want}, found {got} (difference {got - want:+d})")
    return problems


def require_dir(path: Path, corpus: str, expected: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{corpus}: root {path} does not exist; expected {expected}")
    if not path.is_dir():
        raise NotADirectoryError(f"{corpus}: root {path} is not a folder; expected {expected}")
    return path


def walk_files(root: Path, extensions: Optional[Iterable[str]] = AUDIO_EXTENSIONS) -> Iterator[Path]:
    """Files under root with one of the extensions (any file with `extensions=None`), in a stable (sorted) order.

    Skips macOS AppleDouble files (`._name`) and hidden folders, which unpacked archives often carry.
    """
    exts = tuple(e.lower() for e in extensions) if extensions is not None else ("",)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("._") or name.startswith("."):
                continue
            if name.lower().endswith(exts):
                yield Path(dirpath) / name


def read_text_any(path: Path) -> str:
    """Decode a small text file whose encoding varies across releases (UTF-8 / UTF-16, BOM or not)."""
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    if b"\x00" in data[:4096]:
        head = data[:4096]
        odd_zeros = head[1::2].count(0)
        even_zeros = head[0::2].count(0)
        return data.decode("utf-16-le" if odd_zeros >= even_zeros else "utf-16-be")
    for enc in ("utf-8", "gb18030"):
        try:
            return data.decode(enc)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def speaker_id(corpus: str, local: str) -> str:
    return f"{corpus}:{local}"


def _format_rank(path: Path) -> int:
    ext = path.suffix.lower()
    return FORMAT_PREFERENCE.index(ext) if ext in FORMAT_PREFERENCE else len(FORMAT_PREFERENCE)


def one_per_clip(paths: Iterable[Path], result: ParseResult) -> list[Path]:
    """One file per clip (same folder + stem): the preferred format; every other copy is skipped with a reason.

    Clips keep the order in which their first file came.
    """
    groups: dict[tuple[Path, str], list[Path]] = {}
    for p in paths:
        groups.setdefault((p.parent, p.stem), []).append(p)
    kept = []
    for group in groups.values():
        group.sort(key=lambda p: (_format_rank(p), p.suffix.lower(), p.name))
        kept.append(group[0])
        for other in group[1:]:
            result.skip(other, f"same clip as {group[0].name} in another format")
    return kept


def find_audio(folder: Path, stem: str) -> Optional[Path]:
    """The audio file `folder/stem.<ext>` in the preferred format, whatever the release's extension was."""
    for ext in sorted(AUDIO_EXTENSIONS, key=lambda e: _format_rank(Path(e))):
        candidate = folder / f"{stem}{ext}"
        if candidate.is_file():
            return candidate
    return None
