from __future__ import annotations

from collections import Counter

import pytest

from datamodules.corpora.base import check_expected_counts
from datamodules.corpora.iemocap import EXPECTED_COUNTS, parse_iemocap
from tests.fixtures_corpora import build_iemocap

SESSIONS = {
    1: {
        "Ses01F_impro01": [("Ses01F_impro01_F000", "neu"), ("Ses01F_impro01_M000", "exc"), ("Ses01F_impro01_F001", "fru")],
        # The marker letter (M) differs from the speaking turn (F): the speaker is the female actor.
        "Ses01M_script01_1": [("Ses01M_script01_1_F002", "ang"), ("Ses01M_script01_1_M003", "hap"),
                              ("Ses01M_script01_1_F004", "xxx")],
    },
    2: {"Ses02F_impro03": [("Ses02F_impro03_M000", "sad"), ("Ses02F_impro03_F001", "zzz"),
                           ("Ses02F_impro03_F002", "sur")]},
}


@pytest.fixture()
def root(tmp_path):
    return build_iemocap(tmp_path / "IEMOCAP_full_release", SESSIONS, missing_audio=["Ses02F_impro03_F002"])


def test_records_speakers_and_labels(root):
    result = parse_iemocap(root)
    recs = {r.utt_id: r for r in result.records}
    assert len(recs) == 7
    f002 = recs["Ses01M_script01_1_F002"]
    assert (f002.speaker, f002.gender, f002.session, f002.emotion, f002.emotion4) == (
        "iemocap:Ses01F", "F", "Session1", "angry", "angry")
    assert recs["Ses01M_script01_1_M003"].speaker == "iemocap:Ses01M"
    exc = recs["Ses01F_impro01_M000"]
    assert (exc.emotion, exc.emotion4) == ("excited", "happy")
    assert (recs["Ses01F_impro01_F001"].emotion, recs["Ses01F_impro01_F001"].emotion4) == ("frustrated", None)
    assert recs["Ses01M_script01_1_F004"].emotion == "no_agreement"
    # [V, A, D] order: valence first.
    assert (exc.valence, exc.arousal, exc.dominance) == (3.0, 3.0, 3.5)
    assert recs["Ses01F_impro01_F000"].valence == 2.0
    assert exc.extra["dialog"] == "Ses01F_impro01" and exc.extra["improvised"] is True
    assert recs["Ses02F_impro03_M000"].path.endswith("Session2/sentences/wav/Ses02F_impro03/Ses02F_impro03_M000.wav")
    assert Counter(r.speaker for r in result.records) == {"iemocap:Ses01F": 4, "iemocap:Ses01M": 2, "iemocap:Ses02M": 1}


def test_skips_are_counted_by_reason(root):
    result = parse_iemocap(root)
    assert result.skip_counts == {"unknown label 'zzz'": 1, "missing audio file": 1}
    assert any("Ses02F_impro03_F002.wav" in item for item, _ in result.skipped)


def test_unparseable_summary_line_and_duplicates(root):
    label = root / "Session1" / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt"
    text = label.read_text()
    label.write_text(text + "[1.0 - oops]\tSes01F_impro01_F009\tneu\n"
                     + "[9.0000 - 9.5000]\tSes01F_impro01_F000\tneu\t[2.0000, 2.0000, 2.0000]\n")
    result = parse_iemocap(root)
    assert result.skip_counts["unparseable label line"] == 1
    assert result.skip_counts["duplicate utterance id"] == 1
    assert len(result.records) == 7


def test_expected_counts_follow_sessions(root):
    assert EXPECTED_COUNTS["emotion4"] == 5531
    full = parse_iemocap(root)
    problems = check_expected_counts(full.records, full.expected_counts)
    assert any(p.startswith("emotion4: expected 5531, found 5 ") for p in problems)
    assert any(p.startswith("emotion4@session=Session3: expected 1151, found 0") for p in problems)
    only1 = parse_iemocap(root, sessions=[1])
    assert {r.session for r in only1.records} == {"Session1"}
    assert only1.expected_counts == {"emotion4": 1085, "speakers": 2, "emotion4@session=Session1": 1085}


def test_bad_roots(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Session1..5 folders under .*IEMOCAP_full_release"):
        parse_iemocap(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        parse_iemocap(tmp_path / "missing")
    with pytest.raises(ValueError, match="1..5"):
        parse_iemocap(tmp_path, sessions=[6])
