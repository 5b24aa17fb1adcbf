from __future__ import annotations

import warnings
from collections import Counter

import pytest

from datamodules.corpora import get_parser
from datamodules.corpora.base import check_expected_counts
from datamodules.corpora.casia import parse_casia
from datamodules.manifest import ExpectedCountWarning, build_manifest, load_summary
from tests.conftest import shared_or_skip
from tests.fixtures_corpora import build_casia, write_wav


def test_fixture_labels_speakers_and_side_files(tmp_path):
    root = build_casia(tmp_path / "CASIA", ["wangzhe", "liuchanhg"], sentences=(201, 250))
    result = parse_casia(root)
    assert get_parser("casia") is parse_casia
    assert len(result.records) == 2 * 6 * 2 and result.skipped == [] and result.warnings == []
    assert Counter(r.emotion4 for r in result.records) == {"angry": 4, "happy": 4, "neutral": 4, "sad": 4, None: 8}
    r = next(r for r in result.records if r.utt_id == "wangzhe/surprise/250")
    assert (r.speaker, r.emotion, r.emotion4, r.gender, r.extra["sentence"]) == ("casia:wangzhe", "surprise", None,
                                                                                  "M", 250)
    assert {x.gender for x in result.records if x.speaker == "casia:liuchanhg"} == {"F"}
    # utt ids are unique across speakers and emotions (the sentence numbers repeat in every folder)
    assert len({x.utt_id for x in result.records}) == len(result.records)


def test_release_wav_nested_root_and_reports(tmp_path):
    root = build_casia(tmp_path / "dl" / "CASIA", ["zhaoquanyin"], sentences=(201,), emotions=("sad",), ext=".wav")
    write_wav(tmp_path / "dl" / "CASIA" / "newcomer" / "happy" / "201.wav")
    write_wav(tmp_path / "dl" / "CASIA" / "zhaoquanyin" / "bored" / "201.wav")
    write_wav(tmp_path / "dl" / "CASIA" / "zhaoquanyin" / "sad" / "take2.wav")
    result = parse_casia(tmp_path / "dl")  # one level above the speaker folders works too
    assert sorted(r.utt_id for r in result.records) == ["newcomer/happy/201", "zhaoquanyin/sad/201"]
    assert result.skip_counts == {"unknown emotion folder 'bored'": 1,
                                  "unparseable file name (expected <sentence number>)": 1}
    assert any("newcomer" in w and "gender left empty" in w for w in result.warnings)
    with pytest.raises(FileNotFoundError, match="speaker folders"):
        parse_casia(tmp_path / "dl" / "CASIA" / "zhaoquanyin" / "sad")


@pytest.fixture(scope="module")
def real():
    return parse_casia(shared_or_skip("casia"))


def test_real_corpus_counts(real):
    recs = real.records
    assert len(recs) == 1200 and real.skipped == [] and real.warnings == []
    assert Counter(r.speaker for r in recs) == {f"casia:{s}": 300 for s in
                                                ("ZhaoZuoxiang", "liuchanhg", "wangzhe", "zhaoquanyin")}
    assert Counter(r.emotion for r in recs) == {e: 200 for e in ("angry", "fear", "happy", "neutral", "sad", "surprise")}
    assert sum(r.emotion4 is not None for r in recs) == 800
    assert {r.extra["sentence"] for r in recs} == set(range(201, 251))
    assert check_expected_counts(recs, real.expected_counts) == []


def test_real_manifest_every_quality_category_counted(tmp_path):
    root = shared_or_skip("casia")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExpectedCountWarning)
        recs = build_manifest("casia", root, tmp_path / "cache", verbose=False, progress=False)
    summary = load_summary("casia", root, tmp_path / "cache")
    assert len(recs) == 1200 and summary["sample_rates"] == {"16000": 1200} and summary["skipped_counts"] == {}
    assert summary["quality_counts"] == {"nan_inf": 0, "digital_silence": 0, "near_silence": 0, "too_short": 0,
                                         "clipping": 0}
    assert summary["multichannel_counts"] == {} and summary["sample_rate_outliers"] == {}


def test_data_config_builds_the_datamodule(tmp_path):
    from hydra.utils import instantiate

    from tests.conftest import make_cfg
    from utils.config_checks import check_targets

    root = build_casia(tmp_path / "CASIA", ["wangzhe", "liuchanhg", "ZhaoZuoxiang", "zhaoquanyin"], sentences=(201,))
    cfg = make_cfg("train.yaml", tmp_path / "run", ["data=casia", f"data.root={root}", "data.val_speakers=1"],
                   tmp_path / "data")
    check_targets(cfg.data, "data")
    dm = instantiate(cfg.data, _convert_="all")
    with pytest.warns(ExpectedCountWarning):  # 24 clips are not the full subset
        dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_records) + len(dm.val_records) == 24 and len(dm.speakers) == 3
