from __future__ import annotations

from collections import Counter

import pytest

from datamodules.corpora.base import check_expected_counts
from datamodules.corpora.emodb import parse_emodb
from tests.fixtures_corpora import SHARED_CORPORA, write_wav

EMODB = SHARED_CORPORA / "emodb"


@pytest.fixture(scope="module")
def real():
    if not (EMODB / "wav").is_dir():
        pytest.skip(f"{EMODB} not available")
    return parse_emodb(EMODB)


def test_real_corpus_counts(real):
    recs = real.records
    assert real.skipped == [] and real.warnings == []
    assert len(recs) == 535
    assert len({r.speaker for r in recs}) == 10
    assert Counter(r.emotion for r in recs) == {"angry": 127, "boredom": 81, "disgust": 46, "fear": 69,
                                                "happy": 71, "sad": 62, "neutral": 79}
    assert Counter(r.emotion4 for r in recs if r.emotion4) == {"angry": 127, "happy": 71, "neutral": 79, "sad": 62}
    assert sum(r.emotion4 is not None for r in recs) == 339
    assert check_expected_counts(recs, real.expected_counts) == []
    genders = {r.speaker: r.gender for r in recs}
    assert sorted(s for s, g in genders.items() if g == "F") == ["emodb:08", "emodb:09", "emodb:13", "emodb:14", "emodb:16"]


def test_real_record_fields(real):
    r = next(r for r in real.records if r.utt_id == "03a01Fa")
    assert (r.speaker, r.emotion, r.gender, r.extra["text"], r.extra["version"]) == ("emodb:03", "happy", "M", "a01", "a")
    # erkennung.txt: 03a01Fa.wav recognised 90,00 %, naturalness 75,00
    assert (r.extra["recognition"], r.extra["naturalness"]) == (90.0, 75.0)


def test_fixture_skips_and_wav_root(tmp_path):
    wav = tmp_path / "emodb" / "wav"
    write_wav(wav / "03a01Wa.wav")
    write_wav(wav / "17b02Ta.wav")  # not one of the ten actors: kept, gender unknown, warned
    write_wav(wav / "03a01Qa.wav")  # unknown emotion letter
    write_wav(wav / "readme.wav")
    result = parse_emodb(wav)  # pointing at wav/ itself works too
    assert [r.utt_id for r in result.records] == ["03a01Wa", "17b02Ta"]
    assert result.records[1].gender is None and any("17" in w for w in result.warnings)
    assert result.skip_counts == {"unknown label 'Q'": 1, "unparseable file name": 1}
    with pytest.raises(FileNotFoundError, match="wav/"):
        parse_emodb(tmp_path)
