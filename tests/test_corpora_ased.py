from __future__ import annotations

import warnings
from collections import Counter

import pytest

from datamodules.corpora import get_parser
from datamodules.corpora.ased import parse_ased
from datamodules.corpora.base import check_expected_counts
from datamodules.manifest import ExpectedCountWarning, build_manifest, load_summary
from tests.conftest import shared_or_skip
from tests.fixtures_corpora import ased_name, build_ased


def test_fixture_labels_speakers_and_formats(tmp_path):
    files = [dict(emotion="n", speaker=1), dict(emotion="a", sentence=3, gender=2, speaker=50),
             dict(emotion="S", sentence=4, repetition=2, speaker=29)]  # the corpus has one upper-case letter
    result = parse_ased(build_ased(tmp_path / "ASED", files))
    recs = {r.utt_id: r for r in result.records}
    assert set(recs) == {"n1-01-01-01-01", "a5-03-01-02-50", "S4-04-02-01-29"}
    angry = recs["a5-03-01-02-50"]
    assert (angry.speaker, angry.emotion, angry.emotion4, angry.gender) == ("ased:50", "angry", "angry", "M")
    assert (angry.extra["sentence"], angry.extra["repetition"]) == (3, 1)
    assert recs["S4-04-02-01-29"].emotion == "sad" and recs["S4-04-02-01-29"].gender == "F"
    assert result.skipped == [] and result.warnings == []
    assert get_parser("ased") is parse_ased


def test_release_wav_and_flac_named_wav_both_read(tmp_path):
    root = build_ased(tmp_path / "ASED", [dict(emotion="f", speaker=3), dict(emotion="h", speaker=4)], ext=".wav")
    assert [r.utt_id for r in parse_ased(root).records] == ["f2-01-01-01-03", "h3-01-01-01-04"]
    # the same clip as .wav and .flac: used once, the other copy reported
    (root / "02Fearful" / "f2-01-01-01-03.flac").write_bytes((root / "02Fearful" / "f2-01-01-01-03.wav").read_bytes())
    result = parse_ased(root)
    assert [r.path.endswith(".wav") for r in result.records] == [True, True]
    assert result.skip_counts == {"same clip as f2-01-01-01-03.wav in another format": 1}


def test_speaker_with_two_gender_codes_is_one_speaker_and_reported(tmp_path):
    files = [dict(emotion="n", gender=1, speaker=9), dict(emotion="s", gender=1, speaker=9),
             dict(emotion="a", gender=2, speaker=9), dict(emotion="n", gender=2, speaker=10)]
    result = parse_ased(build_ased(tmp_path / "ASED", files))
    assert {r.speaker for r in result.records} == {"ased:09", "ased:10"}
    assert {r.gender for r in result.records if r.speaker == "ased:09"} == {"F"}  # the majority code
    # the file name's own code stays available
    assert sorted(r.extra["gender_code"] for r in result.records if r.speaker == "ased:09") == ["01", "01", "02"]
    warned = [w for w in result.warnings if "both gender codes" in w]
    assert len(warned) == 1 and "ased:09 (2 F / 1 M files)" in warned[0] and "ased:10" not in warned[0]


def test_byte_identical_duplicates_are_skipped_with_the_original_named(tmp_path):
    files = [dict(emotion="h", sentence=1, repetition=1, gender=2, speaker=8), dict(emotion="n", speaker=1)]
    dup = ased_name("h", 1, 2, 2, 8)
    root = build_ased(tmp_path / "ASED", files, duplicates={dup: ased_name("h", 1, 1, 2, 8)})
    result = parse_ased(root)
    assert [r.utt_id for r in result.records] == [ased_name(speaker=1), ased_name("h", 1, 1, 2, 8)]
    assert result.skipped == [(str(root / "03Happy" / f"{dup}.flac"), "byte-identical duplicate of a kept file")]
    warned = next(w for w in result.warnings if "byte-identical" in w)
    assert f"03Happy/{dup}.flac = 03Happy/{ased_name('h', 1, 1, 2, 8)}.flac" in warned
    kept = parse_ased(root, skip_duplicates=False)
    assert len(kept.records) == 3 and any("byte-identical" in w and dup in w for w in kept.warnings)
    # the published sizes count the duplicates, so the expected counts follow the option
    assert kept.expected_counts["total"] == result.expected_counts["total"] + 4


def test_unusable_names_and_folders_are_reported(tmp_path):
    root = build_ased(tmp_path / "ASED", [dict(emotion="n", speaker=1), dict(emotion="a", speaker=2)],
                      folder_of={ased_name("a", speaker=2): "04Sad"})
    (root / "06Other").mkdir()
    (root / "06Other" / "o6-01-01-01-01.flac").write_bytes((root / "01Neutral" / f"{ased_name()}.flac").read_bytes())
    (root / "01Neutral" / "notes-1.flac").write_bytes(b"x")
    result = parse_ased(root)
    assert [r.utt_id for r in result.records] == [ased_name()]
    assert result.skip_counts == {"emotion letter 'a5' does not match folder 04Sad": 1,
                                  "not in an ASED emotion folder (01Neutral ... 05Angry)": 1,
                                  "unparseable file name (expected xN-SS-RR-GG-PP)": 1}
    with pytest.raises(FileNotFoundError, match="01Neutral"):
        parse_ased(tmp_path / "ASED" / "01Neutral")


# ----------------------------------------------------------------------------------------- the real copy
@pytest.fixture(scope="module")
def real():
    return parse_ased(shared_or_skip("ased"))


def test_real_corpus_counts_and_caveats(real):
    recs = real.records
    assert len(recs) == 2470 and len({r.speaker for r in recs}) == 65  # 2,474 files less 4 duplicates
    assert Counter(r.emotion for r in recs) == {"neutral": 521, "fear": 510, "happy": 485, "sad": 469, "angry": 485}
    assert Counter(r.emotion4 for r in recs if r.emotion4) == {"neutral": 521, "happy": 485, "sad": 469, "angry": 485}
    assert check_expected_counts(recs, real.expected_counts) == []
    genders = Counter(g for g in {r.speaker: r.gender for r in recs}.values())
    assert genders == {"F": 25, "M": 40}  # the corpus README: 25 female, 40 male
    assert sorted(path.rsplit("/", 1)[-1] for path, _ in real.skipped) == [
        "a5-07-02-02-63.flac", "h3-01-02-02-08.flac", "n1-07-02-02-53.flac", "s4-03-02-01-23.flac"]
    assert {reason for _, reason in real.skipped} == {"byte-identical duplicate of a kept file"}
    pairs = next(w for w in real.warnings if "byte-identical" in w)
    assert "03Happy/h3-01-02-02-08.flac = 03Happy/h3-01-01-02-08.flac" in pairs
    conflict = next(w for w in real.warnings if "both gender codes" in w)
    for spk in ("09", "15", "21", "23", "25"):
        assert f"ased:{spk}" in conflict


def test_real_manifest_every_quality_category_counted(tmp_path):
    root = shared_or_skip("ased")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExpectedCountWarning)
        recs = build_manifest("ased", root, tmp_path / "cache", verbose=False, progress=False)
    summary = load_summary("ased", root, tmp_path / "cache")
    assert len(recs) == 2470 and summary["sample_rates"] == {"16000": 2470}
    assert summary["quality_counts"] == {"nan_inf": 0, "digital_silence": 0, "near_silence": 0, "too_short": 0,
                                         "clipping": 0}
    assert summary["skipped_counts"] == {"byte-identical duplicate of a kept file": 4}


def test_data_config_builds_the_datamodule(tmp_path):
    from hydra.utils import instantiate

    from tests.conftest import make_cfg
    from utils.config_checks import check_targets

    files = [dict(emotion=e, speaker=s) for e in "nfhsa" for s in (1, 2, 3, 4)]
    root = build_ased(tmp_path / "ASED", files, duplicates={ased_name("n", 1, 2, 1, 1): ased_name("n", speaker=1)})
    cfg = make_cfg("train.yaml", tmp_path / "run", ["data=ased", f"data.root={root}", "data.val_speakers=1"],
                   tmp_path / "data")
    check_targets(cfg.data, "data")
    assert cfg.data.corpus_options.skip_duplicates is True
    dm = instantiate(cfg.data, _convert_="all")
    with pytest.warns(ExpectedCountWarning):  # a 20-clip tree is not the full corpus
        dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_records) + len(dm.val_records) == 20  # the duplicate copy is not used
