from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from datamodules.corpora import get_parser
from datamodules.corpora.base import check_expected_counts
from datamodules.corpora.cremad import parse_cremad
from tests.fixtures_corpora import SHARED_CORPORA, build_cremad

META = SHARED_CORPORA / "crema-d-metadata"


def _real_names() -> list[str]:
    if not META.is_dir():
        pytest.skip(f"{META} not available")
    with open(META / "SentenceFilenames.csv", newline="") as f:
        return [row["Filename"] for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def full_tree(tmp_path_factory) -> Path:
    """Every clip listed in the real SentenceFilenames.csv, as a tiny WAV, with the real CSVs."""
    names = _real_names()
    return build_cremad(tmp_path_factory.mktemp("cremad") / "CREMA-D", names, metadata_from=META)


def test_full_corpus_counts_from_real_metadata(full_tree):
    result = parse_cremad(full_tree)
    recs = result.records
    assert result.skipped == []
    assert len(recs) == 7442
    assert len({r.speaker for r in recs}) == 91
    assert check_expected_counts(recs, result.expected_counts) == []
    assert Counter(r.emotion for r in recs) == {"angry": 1271, "disgust": 1271, "fear": 1271, "happy": 1271,
                                                "sad": 1271, "neutral": 1087}
    assert sum(r.emotion4 is not None for r in recs) == 1271 * 3 + 1087
    genders = {r.speaker: r.gender for r in recs}
    assert Counter(genders.values()) == {"M": 48, "F": 43}
    assert all(r.speaker.startswith("cremad:10") and Path(r.path).is_absolute() for r in recs)
    assert Counter(r.extra["intensity"] for r in recs) == {"unspecified": 6077, "low": 455, "medium": 455, "high": 455}


def test_voice_vote_and_record_fields(full_tree):
    recs = {r.utt_id: r for r in parse_cremad(full_tree).records}
    r = recs["1001_IEO_HAP_LO"]  # summaryTable: acted happy, voice-only vote N
    assert (r.speaker, r.emotion, r.emotion4, r.gender) == ("cremad:1001", "happy", "happy", "M")
    assert r.extra["voice_vote"] == ["neutral"] and r.extra["intensity"] == "low"
    assert r.extra["voice_level"] == pytest.approx(71.67)
    tie = next(x for x in recs.values() if len(x.extra["voice_vote"]) > 1)
    assert set(tie.extra["voice_vote"]) <= {"angry", "disgust", "fear", "happy", "neutral", "sad"}


def test_missing_and_bad_files_are_counted(tmp_path):
    names = _real_names()[:30]
    root = build_cremad(tmp_path / "c", names, metadata_from=META, processed_results_layout=False)
    (root / "AudioWAV" / f"{names[0]}.wav").unlink()
    build_cremad(root, ["1001_DFA_XYZ_XX", "not_a_clip"])
    result = parse_cremad(root)
    counts = result.skip_counts
    assert counts["missing audio file"] == 7442 - 29  # every listed clip without audio, by name
    assert counts["unknown label 'XYZ'"] == 1 and counts["unparseable file name"] == 1
    assert len(result.records) == 29
    assert any(names[0] in item for item, _ in result.skipped)
    assert any("not listed in SentenceFilenames.csv" in w for w in result.warnings)
    assert check_expected_counts(result.records, result.expected_counts)  # a partial corpus is flagged


def test_without_metadata_and_root_errors(tmp_path):
    root = build_cremad(tmp_path / "c", ["1002_IEO_ANG_HI", "1002_IEO_SAD_LO"])
    result = get_parser("cremad")(root / "AudioWAV")  # pointing at AudioWAV itself also works
    assert [r.gender for r in result.records] == [None, None]
    assert any("VideoDemographics" in w for w in result.warnings)
    with pytest.raises(FileNotFoundError, match="AudioWAV"):
        parse_cremad(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        parse_cremad(tmp_path / "nope")
