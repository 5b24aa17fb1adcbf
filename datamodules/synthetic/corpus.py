"""The built-in synthetic emotional speech corpus: generated once into a cache folder, then read like any corpus.

Layout (`<root>/<config-hash>/`):
    wav/spkNNN/spkNNN_<emotion>_NNN.wav   16-bit PCM mono
    manifest.jsonl                         one ClipRecord per clip
    speakers.json                          each speaker's voice parameters
    config.json                            the generating config (+ generator version and hash)

The folder appears only when complete (generated in a temporary sibling, then renamed), and a lock
file serialises concurrent callers (e.g. DDP ranks), so a killed run never leaves a corpus that looks
finished and two ranks never write the same files.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import soundfile as sf

from datamodules.records import FOUR_CLASSES, ClipRecord, read_jsonl, write_jsonl
from datamodules.synthetic.synthesizer import ALL_EMOTIONS, sample_speaker, synthesize_clip

# Bump whenever the synthesiser's output changes, so old caches are not silently reused.
GENERATOR_VERSION = 1
CORPUS_NAME = "synthetic"
MANIFEST_NAME = "manifest.jsonl"

# Stable per-emotion stream ids: adding or removing emotions from a config never changes other clips.
_EMOTION_STREAM = {name: i for i, name in enumerate(ALL_EMOTIONS)}


@dataclass
class SyntheticCorpusConfig:
    n_speakers: int = 24
    clips_per_emotion: int = 4  # per speaker per emotion
    emotions: Sequence[str] = FOUR_CLASSES  # any subset of ALL_EMOTIONS (the 7-class set)
    sample_rate: int = 16000
    clip_seconds: Sequence[float] = (1.5, 3.0)  # (min, max) duration, drawn uniformly per clip
    seed: int = 0

    def __post_init__(self) -> None:
        # Accept Hydra ListConfig / lists; store plain tuples so hashing and equality are stable.
        self.emotions = tuple(str(e).lower() for e in self.emotions)
        self.clip_seconds = tuple(float(x) for x in self.clip_seconds)
        unknown = [e for e in self.emotions if e not in ALL_EMOTIONS]
        if unknown or not self.emotions:
            raise ValueError(f"SyntheticCorpusConfig.emotions={list(self.emotions)}: unknown {unknown}; "
                             f"expected a non-empty subset of {list(ALL_EMOTIONS)}")
        if len(set(self.emotions)) != len(self.emotions):
            raise ValueError(f"SyntheticCorpusConfig.emotions={list(self.emotions)} has duplicates")
        if len(self.clip_seconds) != 2 or not 0.5 <= self.clip_seconds[0] <= self.clip_seconds[1]:
            raise ValueError(f"SyntheticCorpusConfig.clip_seconds={list(self.clip_seconds)}: expected (min, max) "
                             "with 0.5 <= min <= max")
        for name in ("n_speakers", "clips_per_emotion"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"SyntheticCorpusConfig.{name}={getattr(self, name)}: expected >= 1")
        if int(self.sample_rate) < 8000:
            raise ValueError(f"SyntheticCorpusConfig.sample_rate={self.sample_rate}: expected >= 8000 Hz")
        if self.n_speakers > 1000 or self.clips_per_emotion > 1000:
            raise ValueError("SyntheticCorpusConfig: n_speakers and clips_per_emotion must be <= 1000 "
                             "(file names use three digits)")
        self.n_speakers, self.clips_per_emotion = int(self.n_speakers), int(self.clips_per_emotion)
        self.sample_rate, self.seed = int(self.sample_rate), int(self.seed)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["emotions"], d["clip_seconds"] = list(self.emotions), list(self.clip_seconds)
        return d

    def digest(self) -> str:
        """Short hash naming the cache folder; covers the generator version too."""
        payload = json.dumps({**self.to_dict(), "generator_version": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def speaker_name(index: int) -> str:
    return f"spk{index:03d}"


def speaker_gender(index: int) -> str:
    """Alternating genders keep any prefix of the speaker list balanced."""
    return "M" if index % 2 == 0 else "F"


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, *stream])))


def corpus_dir(root: str | Path, cfg: SyntheticCorpusConfig) -> Path:
    return Path(root).expanduser().resolve() / cfg.digest()


def generate_corpus(root: str | Path, cfg: SyntheticCorpusConfig | None = None, progress: bool = True) -> Path:
    """Generate the corpus under `root` unless a complete copy for this config is cached; return the manifest path."""
    cfg = cfg or SyntheticCorpusConfig()
    final = corpus_dir(root, cfg)
    manifest = final / MANIFEST_NAME
    if _is_complete(final, cfg):
        return manifest
    final.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(final.parent / f".{final.name}.lock") as locked:
        if _is_complete(final, cfg):  # another process finished while we waited
            return manifest
        if locked:  # nobody else can be writing: leftovers are from killed runs
            for stale in final.parent.glob(f".{final.name}.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            _write_corpus(tmp, final, cfg, progress)
            try:
                os.rename(tmp, final)
            except OSError:
                if not _is_complete(final, cfg):  # lost a race against a process without the lock
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _is_complete(folder: Path, cfg: SyntheticCorpusConfig) -> bool:
    manifest, config = folder / MANIFEST_NAME, folder / "config.json"
    if not manifest.exists():
        if folder.exists():
            raise RuntimeError(f"synthetic corpus folder {folder} exists but has no {MANIFEST_NAME}; it was not "
                               "written by generate_corpus (which renames a finished folder into place). Delete it.")
        return False
    stored = json.loads(config.read_text()) if config.exists() else {}
    if stored.get("config") != cfg.to_dict() or stored.get("generator_version") != GENERATOR_VERSION:
        raise RuntimeError(f"synthetic corpus cache {folder}: config.json {stored} does not match the requested "
                           f"config {cfg.to_dict()} (generator_version {GENERATOR_VERSION}); delete the folder.")
    return True


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[bool]:
    """flock-based inter-process lock; yields False (no lock) where the filesystem does not support it."""
    try:
        import fcntl
    except ImportError:  # non-POSIX: rely on the atomic rename alone
        yield False
        return
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _write_corpus(tmp: Path, final: Path, cfg: SyntheticCorpusConfig, progress: bool) -> None:
    from tqdm.auto import tqdm

    speakers = [sample_speaker(_rng(cfg.seed, 0, i), speaker_name(i), speaker_gender(i)) for i in range(cfg.n_speakers)]
    records: list[ClipRecord] = []
    total = cfg.n_speakers * len(cfg.emotions) * cfg.clips_per_emotion
    lo, hi = cfg.clip_seconds
    with tqdm(total=total, desc=f"synthetic corpus {final.name}", unit="clip", disable=not progress) as bar:
        for i, speaker in enumerate(speakers):
            (tmp / "wav" / speaker.speaker_id).mkdir(parents=True, exist_ok=True)
            for emotion in cfg.emotions:
                for j in range(cfg.clips_per_emotion):
                    rng = _rng(cfg.seed, 1, i, _EMOTION_STREAM[emotion], j)
                    n = int(round(rng.uniform(lo, hi) * cfg.sample_rate))
                    audio, info = synthesize_clip(speaker, emotion, n / cfg.sample_rate, cfg.sample_rate, rng)
                    utt_id = f"{speaker.speaker_id}_{emotion}_{j:03d}"
                    relative = Path("wav") / speaker.speaker_id / f"{utt_id}.wav"
                    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)
                    sf.write(str(tmp / relative), pcm, cfg.sample_rate, subtype="PCM_16", format="WAV")
                    records.append(ClipRecord(
                        path=str(final / relative), speaker=f"{CORPUS_NAME}:{speaker.speaker_id}", corpus=CORPUS_NAME,
                        utt_id=utt_id, emotion=emotion, emotion4=emotion if emotion in FOUR_CLASSES else None,
                        gender=speaker.gender, duration=len(pcm) / cfg.sample_rate, sample_rate=cfg.sample_rate,
                        extra={"f0_mean": round(info["f0_mean"], 3), "intensity": round(info["intensity"], 4),
                               "syllable_rate": round(info["syllable_rate"], 4), "rms_dbfs": round(info["rms_dbfs"], 3)},
                    ))
                    bar.update(1)
    (tmp / "speakers.json").write_text(json.dumps([dataclasses.asdict(s) for s in speakers], indent=1))
    (tmp / "config.json").write_text(json.dumps(
        {"config": cfg.to_dict(), "generator_version": GENERATOR_VERSION, "hash": cfg.digest()}, indent=1))
    write_jsonl(records, tmp / MANIFEST_NAME)  # last: its presence marks the folder complete


def parse_synthetic(root: str | Path) -> list[ClipRecord]:
    """Read a generated corpus back. `root`: the corpus folder (`<cache>/<hash>`) or its manifest.jsonl.

    Paths are re-rooted at the folder the manifest is in, so a cache folder can be moved or mounted elsewhere.
    """
    root = Path(root).expanduser().resolve()
    manifest = root if root.is_file() else root / MANIFEST_NAME
    if not manifest.exists():
        candidates = sorted(str(p.parent) for p in root.glob(f"*/{MANIFEST_NAME}")) if root.is_dir() else []
        hint = (f" It holds generated corpora in: {candidates}; pass one of them." if candidates
                else " Generate one first with generate_corpus(root, cfg).")
        raise FileNotFoundError(f"parse_synthetic: no {MANIFEST_NAME} at {manifest}.{hint}")
    records = read_jsonl(manifest)
    missing = []
    for record in records:
        original = Path(record.path)
        record.path = str(manifest.parent / "wav" / original.parent.name / original.name)
        if not Path(record.path).exists():
            missing.append(record.path)
    if missing:
        raise FileNotFoundError(f"parse_synthetic: {len(missing)} of {len(records)} audio files listed in {manifest} "
                                f"are missing, e.g. {missing[:5]}; delete {manifest.parent} to regenerate it.")
    return records
