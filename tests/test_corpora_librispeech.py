from __future__ import annotations

from collections import Counter

import pytest

from datamodules.corpora.librispeech import parse_librispeech, read_speakers
from tests.fixtures_corpora import build_librispeech, write_wav

UTTS = {"train-clean-100": ["19-198-0001", "19-198-0002", "60-121082-0000"], "train-clean-360": ["14-208-0000"]}


@pytest.fixture()
def root(tmp_path):
    return build_librispeech(tmp_path, UTTS)


def test_records(root):
    result = parse_librispeech(root)
    recs = {r.utt_id: r for r in result.records}
    assert set(recs) == {u for ids in UTTS.values() for u in ids}
    assert (recs["19-198-0001"].speaker, recs["19-198-0001"].gender, recs["19-198-0001"].split) == (
        "librispeech:19", "F", "train-clean-100")
    assert recs["60-121082-0000"].gender == "M"  # name field '|CBW|Simon' contains the separator
    assert recs["14-208-0000"].split == "train-clean-360"
    assert "transcript" not in recs["19-198-0001"].extra


def test_subsets_transcripts_and_subset_root(root):
    result = parse_librispeech(root, subsets=["train-clean-100"], transcripts=True)
    assert Counter(r.split for r in result.records) == {"train-clean-100": 3}
    assert next(r for r in result.records if r.utt_id == "19-198-0002").extra["transcript"] == "WORDS OF 19-198-0002"
    sub = parse_librispeech(root / "train-clean-360")  # SPEAKERS.TXT found in the parent
    assert [(r.utt_id, r.gender, r.split) for r in sub.records] == [("14-208-0000", "F", "train-clean-360")]


def test_skips_and_speakers_file(root, tmp_path):
    write_wav(root / "train-clean-100" / "19" / "198" / "20-198-0003.flac")  # speaker folder mismatch
    write_wav(root / "train-clean-100" / "77" / "1" / "77-1-0001.flac")       # not in SPEAKERS.TXT
    result = parse_librispeech(root)
    assert sum(result.skip_counts.values()) == 1
    assert any("speaker 77" in w for w in result.warnings)
    bad = tmp_path / "SPK.TXT"
    bad.write_text("; c\nabc | F | x\n")
    with pytest.raises(ValueError, match="SPK.TXT:2"):
        read_speakers(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        parse_librispeech(tmp_path / "nope")
