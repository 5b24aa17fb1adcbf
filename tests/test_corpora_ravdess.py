from __future__ import annotations

from collections import Counter

import pytest
import soundfile as sf

from datamodules.corpora.base import check_expected_counts
from datamodules.corpora.ravdess import parse_ravdess
from tests.fixtures_corpora import build_ravdess, ravdess_name

FILES = [
    dict(emotion=1, actor=1), dict(emotion=2, intensity=2, actor=1), dict(emotion=5, statement=2, actor=1),
    dict(emotion=3, actor=2), dict(emotion=8, repetition=2, actor=2),
    dict(channel=2, emotion=3, actor=2),   # song
    dict(modality=2, emotion=4, actor=2),  # video only
]
STEREO = ravdess_name(emotion=5, statement=2, actor=1)


@pytest.fixture()
def root(tmp_path):
    return build_ravdess(tmp_path / "RAVDESS", FILES, stereo=[STEREO], extra_names=["readme-like.wav", "03-01-09-01-01-01-01.wav"])


def test_speech_only_by_default(root):
    result = parse_ravdess(root)
    recs = {r.utt_id: r for r in result.records}
    assert len(recs) == 5
    calm = recs[ravdess_name(emotion=2, intensity=2, actor=1)[:-4]]
    assert (calm.emotion, calm.emotion4, calm.gender, calm.speaker) == ("calm", None, "M", "ravdess:01")
    assert calm.extra["intensity"] == "strong" and calm.extra["vocal_channel"] == "speech"
    assert recs[ravdess_name(emotion=8, repetition=2, actor=2)[:-4]].gender == "F"
    assert recs[ravdess_name(emotion=8, repetition=2, actor=2)[:-4]].emotion == "surprise"
    assert Counter(r.emotion4 for r in result.records) == {"neutral": 1, None: 2, "angry": 1, "happy": 1}
    assert result.skip_counts == {"song": 1, "video-only modality": 1, "unparseable file name": 1,
                                  "unknown label '09'": 1}
    assert any(p.startswith("total: expected 1440, found 5") for p in
               check_expected_counts(result.records, result.expected_counts))


def test_include_song(root):
    result = parse_ravdess(root, include_song=True)
    song = [r for r in result.records if r.extra["vocal_channel"] == "song"]
    assert len(song) == 1 and len(result.records) == 6
    assert result.expected_counts["total"] == 1440 + 1012


def test_stereo_48k_file_is_listed_with_its_path(root):
    recs = {r.utt_id: r for r in parse_ravdess(root).records}
    info = sf.info(recs[STEREO[:-4]].path)
    assert (info.samplerate, info.channels) == (48000, 2)


def test_not_ravdess(tmp_path):
    (tmp_path / "x.wav").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="Actor_NN"):
        parse_ravdess(tmp_path)
