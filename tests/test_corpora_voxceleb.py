from __future__ import annotations

import pytest

from datamodules.corpora.voxceleb import load_trials, parse_voxceleb
from tests.fixtures_corpora import build_voxceleb, write_wav

VOX1 = ["id10001/1zcIwhmdeo4/00001", "id10001/1zcIwhmdeo4/00002", "id10002/xTV-jFAUKcw/00001"]
TRIALS = [(1, "id10001/1zcIwhmdeo4/00001.wav", "id10001/1zcIwhmdeo4/00002.wav"),
          (0, "id10001/1zcIwhmdeo4/00001.wav", "id10002/xTV-jFAUKcw/00001.wav")]


@pytest.fixture()
def root(tmp_path):
    return build_voxceleb(tmp_path / "voxceleb", VOX1, m4a_with_wav=["id00012/21Uxsk56VDQ/00001"],
                          m4a_only=["id00012/21Uxsk56VDQ/00002"],
                          iden_split={VOX1[0]: 1, VOX1[1]: 2, VOX1[2]: 3}, trials=TRIALS)


def test_records_and_splits(root):
    result = parse_voxceleb(root)
    recs = {r.utt_id: r for r in result.records}
    assert set(recs) == set(VOX1) | {"id00012/21Uxsk56VDQ/00001", "id00012/21Uxsk56VDQ/00002"}
    assert [recs[u].split for u in VOX1] == ["train", "dev", "test"]
    assert recs[VOX1[2]].speaker == "voxceleb:id10002" and recs[VOX1[2]].emotion is None
    assert result.skipped == []
    assert any("2 utterance(s) are not listed" in w for w in result.warnings)


def test_wav_conversion_beside_m4a_is_preferred(root):
    recs = {r.utt_id: r for r in parse_voxceleb(root).records}
    converted = recs["id00012/21Uxsk56VDQ/00001"]
    assert converted.path.endswith("00001.wav") and converted.extra["original_path"].endswith("00001.m4a")
    # an m4a without conversion stays listed; the manifest probe reports it as unreadable with a hint
    assert recs["id00012/21Uxsk56VDQ/00002"].path.endswith(".m4a")


def test_unparseable_paths_and_bad_split_file(root, tmp_path):
    write_wav(root / "wav" / "id10001" / "notes.wav")
    write_wav(root / "wav" / "speaker9" / "yt" / "00001.wav")
    result = parse_voxceleb(root)
    assert sum(result.skip_counts.values()) == 2
    (root / "iden_split.txt").write_text("4 id10001/1zcIwhmdeo4/00001.wav\n")
    with pytest.raises(ValueError, match="iden_split.txt:1"):
        parse_voxceleb(root)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no idNNNNN"):
        parse_voxceleb(empty)


def test_load_trials(root, tmp_path):
    assert load_trials(root / "veri_test2.txt") == TRIALS
    bad = tmp_path / "bad.txt"
    bad.write_text("1 a.wav b.wav\n2 a.wav b.wav\n")
    with pytest.raises(ValueError, match="bad.txt:2"):
        load_trials(bad)
