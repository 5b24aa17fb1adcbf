"""Every parser reads a corpus stored in another format than its release (the shared copies are FLAC
where releases ship WAV): same records, only the paths' extensions differ."""
from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf

from datamodules.corpora.cremad import parse_cremad
from datamodules.corpora.emodb import parse_emodb
from datamodules.corpora.esd import parse_esd
from datamodules.corpora.iemocap import parse_iemocap
from datamodules.corpora.ravdess import parse_ravdess
from tests.fixtures_corpora import build_cremad, build_esd, build_iemocap, build_ravdess, write_wav


def _to_flac(root: Path) -> int:
    """Re-encode every .wav under root as .flac next to it and delete the .wav."""
    n = 0
    for wav in sorted(root.rglob("*.wav")):
        data, sr = sf.read(str(wav), dtype="int16", always_2d=True)
        sf.write(str(wav.with_suffix(".flac")), data, sr, format="FLAC", subtype="PCM_16")
        wav.unlink()
        n += 1
    return n


def _same_but_flac(wav_result, flac_result) -> None:
    assert len(wav_result.records) > 0
    assert [r.path.endswith(".flac") for r in flac_result.records] == [True] * len(flac_result.records)
    as_wav = [r.__class__(**{**r.to_dict(), "path": r.path[: -len(".flac")] + ".wav"}) for r in flac_result.records]
    assert as_wav == wav_result.records
    assert flac_result.skip_counts == wav_result.skip_counts


def _emodb(root: Path) -> Path:
    for name in ("03a01Wa", "08b02Tb", "16a05Fc"):
        write_wav(root / "wav" / f"{name}.wav")
    return root


def _ravdess(root: Path) -> Path:
    return build_ravdess(root, [dict(emotion=1, actor=1), dict(emotion=5, actor=2), dict(channel=2, actor=2)])


def _cremad(root: Path) -> Path:
    return build_cremad(root, ["1001_DFA_ANG_XX", "1002_IEO_SAD_HI", "1003_TIE_NEU_XX"])


def _iemocap(root: Path) -> Path:
    return build_iemocap(root, {1: {"Ses01F_impro01": [("Ses01F_impro01_F000", "neu"), ("Ses01F_impro01_M001", "exc")]}})


def _esd(root: Path) -> Path:
    return build_esd(root, ["0001", "0011"], per_emotion=3, split_folders=True)


@pytest.mark.parametrize("build,parse", [(_emodb, parse_emodb), (_ravdess, parse_ravdess), (_cremad, parse_cremad),
                                         (_iemocap, parse_iemocap), (_esd, parse_esd)],
                         ids=["emodb", "ravdess", "cremad", "iemocap", "esd"])
def test_flac_copy_parses_like_the_wav_release(tmp_path, build, parse):
    root = build(tmp_path / "corpus")
    wav_result = parse(root)
    assert _to_flac(root) == len(wav_result.records) + sum(
        1 for _, reason in wav_result.skipped if reason == "song")  # every audio file was converted
    _same_but_flac(wav_result, parse(root))


def test_one_clip_in_two_formats_is_read_once_and_reported(tmp_path):
    root = _emodb(tmp_path / "emodb")
    write_wav(root / "wav" / "03a01Wa.flac")
    result = parse_emodb(root)
    assert [r.utt_id for r in result.records] == ["03a01Wa", "08b02Tb", "16a05Fc"]
    assert result.records[0].path.endswith(".wav")
    assert result.skip_counts == {"same clip as 03a01Wa.wav in another format": 1}


def test_librispeech_flac_with_a_wav_conversion_beside_it_is_one_clip(tmp_path):
    from datamodules.corpora.librispeech import parse_librispeech
    from tests.fixtures_corpora import build_librispeech

    base = build_librispeech(tmp_path / "ls", {"train-clean-100": ["19-198-0001", "19-198-0002"]})
    write_wav(base / "train-clean-100" / "19" / "198" / "19-198-0001.wav")
    result = parse_librispeech(base)
    assert sorted(r.utt_id for r in result.records) == ["19-198-0001", "19-198-0002"]
    assert result.skip_counts == {"same clip as 19-198-0001.wav in another format": 1}
