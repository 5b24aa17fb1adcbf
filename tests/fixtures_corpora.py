"""Build tiny corpus trees in each corpus's exact shipped layout (names, metadata formats, quirks).

Audio is 0.3 s of seeded noise (long enough to pass the manifest's audio-quality checks, whose
default minimum is 0.25 s of speech), so the trees are fast to write yet every file has distinct,
checkable content. Each builder returns the root a user would point `data.root` at.
"""
from __future__ import annotations

import functools
import io
import os
import shutil
import zlib
from pathlib import Path
from typing import Iterable

import numpy as np
import soundfile as sf

SHARED_CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"


CLIP_SAMPLES = 4800  # 0.3 s at 16 kHz


def write_wav(path: Path, n: int = CLIP_SAMPLES, sr: int = 16000, channels: int = 1, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    data = (0.1 * rng.standard_normal((n, channels))).astype("float32")
    fmt = "FLAC" if path.suffix.lower() == ".flac" else "WAV"
    sf.write(str(path), data if channels > 1 else data[:, 0], sr, format=fmt, subtype="PCM_16")
    return path


@functools.lru_cache(maxsize=None)
def tiny_wav_bytes(n: int = CLIP_SAMPLES, sr: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(n, dtype="float32") + 0.01, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def write_many(paths: Iterable[Path], n: int = CLIP_SAMPLES, sr: int = 16000) -> None:
    """Same tiny WAV at many paths: hard links to one file (thousands per second), copies as fallback."""
    data = tiny_wav_bytes(n, sr)
    first: Path | None = None
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        if first is not None:
            try:
                os.link(first, p)
                continue
            except OSError:
                pass
        p.write_bytes(data)
        first = first or p


# ----------------------------------------------------------------------------------------- CREMA-D
def build_cremad(root: Path, names: Iterable[str], metadata_from: Path | None = None,
                 processed_results_layout: bool = True) -> Path:
    """root/AudioWAV/<name>.wav for each name; CSVs copied from `metadata_from` (the real ones) if given."""
    audio = root / "AudioWAV"
    audio.mkdir(parents=True, exist_ok=True)
    write_many(audio / f"{n}.wav" for n in names)
    if metadata_from is not None:
        shutil.copy(metadata_from / "VideoDemographics.csv", root / "VideoDemographics.csv")
        shutil.copy(metadata_from / "SentenceFilenames.csv", root / "SentenceFilenames.csv")
        dest = root / "processedResults" if processed_results_layout else root
        dest.mkdir(exist_ok=True)
        shutil.copy(metadata_from / "summaryTable.csv", dest / "summaryTable.csv")
    return root


# ----------------------------------------------------------------------------------------- IEMOCAP
IEMOCAP_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"


def iemocap_block(utt: str, emo: str, vad=(2.5, 2.5, 2.5), start: float = 1.0) -> str:
    v, a, d = vad
    return (f"[{start:.4f} - {start + 1.5:.4f}]\t{utt}\t{emo}\t[{v:.4f}, {a:.4f}, {d:.4f}]\n"
            f"C-E1:\tNeutral;\t()\n"
            f"C-E2:\tNeutral;\tAnger;\t(a comment)\n"
            f"A-E1:\tval 3; act 2; dom  2;\t()\n\n")


def build_iemocap(root: Path, sessions: dict[int, dict[str, list[tuple[str, str]]]],
                  missing_audio: Iterable[str] = ()) -> Path:
    """sessions: {session number: {dialog: [(utt_id, emo code), ...]}}; utterances in `missing_audio` get no wav."""
    missing = set(missing_audio)
    for s, dialogs in sessions.items():
        sess = root / f"Session{s}"
        label_dir = sess / "dialog" / "EmoEvaluation"
        label_dir.mkdir(parents=True, exist_ok=True)
        (label_dir / "Categorical").mkdir(exist_ok=True)  # real release has these sub-folders
        (label_dir / "Categorical" / f"{next(iter(dialogs))}_e1_cat.txt").write_text("noise that is not a summary\n")
        for dialog, utts in dialogs.items():
            text = IEMOCAP_HEADER + "".join(iemocap_block(u, e, (2.0 + i % 3, 3.0, 3.5), 1.0 + 2 * i)
                                            for i, (u, e) in enumerate(utts))
            (label_dir / f"{dialog}.txt").write_text(text)
            for utt, _ in utts:
                if utt not in missing:
                    write_wav(sess / "sentences" / "wav" / dialog / f"{utt}.wav", seed=zlib.crc32(utt.encode()))
    return root


# ----------------------------------------------------------------------------------------- MSP-Podcast
MSP_COLUMNS = "FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set"


def build_msp(root: Path, rows: list[tuple], misspelt: bool = False, nested: bool = True,
              missing_audio: Iterable[str] = (), unlabelled_audio: Iterable[str] = ()) -> Path:
    """rows: (FileName, EmoClass, act, val, dom, SpkrID, Gender, Split_Set)."""
    labels = root / "Labels"
    labels.mkdir(parents=True, exist_ok=True)
    name = "labels_concensus.csv" if misspelt else "labels_consensus.csv"
    lines = [MSP_COLUMNS] + [",".join(str(x) for x in r) for r in rows]
    (labels / name).write_text("\n".join(lines) + "\n")
    missing = set(missing_audio)
    for i, r in enumerate(rows):
        if r[0] in missing:
            continue
        sub = f"{i % 2:04d}" if nested else ""
        write_wav(root / "Audios" / sub / r[0], seed=i)
    for extra in unlabelled_audio:
        write_wav(root / "Audios" / extra)
    (root / "Audios").mkdir(parents=True, exist_ok=True)
    return root


# ----------------------------------------------------------------------------------------- RAVDESS
def ravdess_name(modality=3, channel=1, emotion=1, intensity=1, statement=1, repetition=1, actor=1) -> str:
    return f"{modality:02d}-{channel:02d}-{emotion:02d}-{intensity:02d}-{statement:02d}-{repetition:02d}-{actor:02d}.wav"


def build_ravdess(root: Path, files: list[dict], stereo: Iterable[str] = (), extra_names: Iterable[str] = ()) -> Path:
    """files: kwargs of `ravdess_name`; stored in Audio_Speech_Actors_01-24/Actor_NN/ at 48 kHz."""
    base = root / "Audio_Speech_Actors_01-24"
    stereo = set(stereo)
    for i, kw in enumerate(files):
        name = ravdess_name(**kw)
        write_wav(base / f"Actor_{kw.get('actor', 1):02d}" / name, n=14400, sr=48000,
                  channels=2 if name in stereo else 1, seed=i)
    for name in extra_names:
        write_wav(base / "Actor_01" / name, n=14400, sr=48000)
    return root


# ----------------------------------------------------------------------------------------- ESD
ESD_EMOTIONS = ("Neutral", "Angry", "Happy", "Sad", "Surprise")


def build_esd(root: Path, speakers: Iterable[str], per_emotion: int = 2, split_folders: bool = False,
              utf16_speakers: Iterable[str] = (), nest_in_dataset_folder: bool = True) -> Path:
    """Files SSSS_NNNNNN.wav numbered like ESD (350 per emotion: Neutral 1-350, Angry 351-700, ...).

    With split_folders the first utterance of each emotion goes to train/, the second evaluation/, the
    third test/ (cycling). Returns the folder a user would pass (the parent of 'Emotion Speech Dataset').
    """
    data = root / "Emotion Speech Dataset" if nest_in_dataset_folder else root
    utf16 = set(utf16_speakers)
    splits = ("train", "evaluation", "test")
    for spk in speakers:
        lines = []
        for e, emo in enumerate(ESD_EMOTIONS):
            for k in range(per_emotion):
                utt = f"{spk}_{350 * e + k + 1:06d}"
                sub = splits[k % 3] if split_folders else ""
                write_wav(data / spk / emo / sub / f"{utt}.wav", seed=int(spk) * 1000 + 350 * e + k)
                lines.append(f"{utt}\ttranscript {utt} ü\t{emo}")
        text = "\n".join(lines) + "\n"
        (data / spk / f"{spk}.txt").write_bytes(text.encode("utf-16") if spk in utf16 else text.encode("utf-8"))
    return root if nest_in_dataset_folder else data


# ----------------------------------------------------------------------------------------- VoxCeleb
def build_voxceleb(root: Path, utts: list[str], m4a_with_wav: Iterable[str] = (), m4a_only: Iterable[str] = (),
                   iden_split: dict[str, int] | None = None, trials: list[tuple[int, str, str]] | None = None) -> Path:
    """utts: 'idNNNNN/yt/NNNNN' written as wav under wav/; m4a ones go under dev/aac/ (fake m4a bytes)."""
    for i, u in enumerate(utts):
        write_wav(root / "wav" / f"{u}.wav", seed=i)
    for u in m4a_with_wav:
        p = root / "dev" / "aac" / f"{u}.m4a"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"\x00\x00\x00\x20ftypM4A fake aac payload")
        write_wav(p.with_suffix(".wav"), seed=7)
    for u in m4a_only:
        p = root / "dev" / "aac" / f"{u}.m4a"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"\x00\x00\x00\x20ftypM4A fake aac payload")
    if iden_split is not None:
        (root / "iden_split.txt").write_text("".join(f"{s} {u}.wav\n" for u, s in iden_split.items()))
    if trials is not None:
        (root / "veri_test2.txt").write_text("".join(f"{l} {a} {b}\n" for l, a, b in trials))
    return root


# ----------------------------------------------------------------------------------------- LibriSpeech
SPEAKERS_TXT = """\
; Some comment lines
;ID  |SEX| SUBSET           |MINUTES| NAME
14   | F | train-clean-360  | 25.03 | Kristin LeMoine
16   | F | train-clean-360  | 25.11 | Alys AtteWater
19   | F | train-clean-100  | 25.19 | Kara Shallenberg
60   | M | train-clean-100  | 20.18 | |CBW|Simon
"""


def build_librispeech(root: Path, utts: dict[str, list[str]], transcripts: bool = True) -> Path:
    """utts: {subset: ['spk-chap-utt', ...]} written as LibriSpeech/<subset>/<spk>/<chap>/<id>.flac."""
    base = root / "LibriSpeech"
    base.mkdir(parents=True, exist_ok=True)
    (base / "SPEAKERS.TXT").write_text(SPEAKERS_TXT)
    for subset, ids in utts.items():
        chapters: dict[Path, list[str]] = {}
        for i, uid in enumerate(ids):
            spk, chap, _ = uid.split("-")
            folder = base / subset / spk / chap
            write_wav(folder / f"{uid}.flac", seed=i)
            chapters.setdefault(folder, []).append(uid)
        if transcripts:
            for folder, chapter_ids in chapters.items():
                spk, chap = folder.parent.name, folder.name
                (folder / f"{spk}-{chap}.trans.txt").write_text("".join(f"{u} WORDS OF {u}\n" for u in chapter_ids))
    return base


# ----------------------------------------------------------------------------------------- ASED
ASED_FOLDERS = {"n": "01Neutral", "f": "02Fearful", "h": "03Happy", "s": "04Sad", "a": "05Angry"}


def ased_name(emotion: str = "n", sentence: int = 1, repetition: int = 1, gender: int = 1, speaker: int = 1) -> str:
    """File stem `xN-SS-RR-GG-PP` (x: n f h s a, N: the folder number); an upper-case x is kept as given."""
    number = list(ASED_FOLDERS).index(emotion.lower()) + 1
    return f"{emotion}{number}-{sentence:02d}-{repetition:02d}-{gender:02d}-{speaker:02d}"


def build_ased(root: Path, files: list[dict], ext: str = ".flac", duplicates: dict[str, str] | None = None,
               folder_of: dict[str, str] | None = None) -> Path:
    """files: kwargs of `ased_name`, written as root/0N<Emotion>/<stem><ext> (the shared copy's FLAC by default).

    duplicates: {new stem: existing stem} written as byte-identical copies; folder_of: {stem: folder} to put a
    file in another emotion's folder than its letter says.
    """
    folder_of = dict(folder_of or {})
    paths: dict[str, Path] = {}
    for i, kw in enumerate(files):
        stem = ased_name(**kw)
        folder = folder_of.get(stem, ASED_FOLDERS[stem[0].lower()])
        paths[stem] = write_wav(root / folder / f"{stem}{ext}", seed=1000 + i)
    for new, existing in (duplicates or {}).items():
        folder = folder_of.get(new, ASED_FOLDERS[new[0].lower()])
        target = root / folder / f"{new}{ext}"
        target.write_bytes(paths[existing].read_bytes())
    (root / "README.md").write_text("ASED test tree\n")
    return root


# ----------------------------------------------------------------------------------------- CASIA
CASIA_EMOTIONS = ("angry", "fear", "happy", "neutral", "sad", "surprise")


def build_casia(root: Path, speakers: Iterable[str], sentences: Iterable[int] = (201, 202),
                emotions: Iterable[str] = CASIA_EMOTIONS, ext: str = ".flac") -> Path:
    """root/<speaker>/<emotion>/<sentence><ext>, plus the release's .lab side file next to each clip."""
    sentences, emotions = list(sentences), list(emotions)
    for s, spk in enumerate(speakers):
        for e, emo in enumerate(emotions):
            for sentence in sentences:
                clip = write_wav(root / spk / emo / f"{sentence}{ext}", seed=10000 * s + 100 * e + sentence)
                clip.with_suffix(".lab").write_text("0 1000 sil\n")
    return root
