from __future__ import annotations

import pytest

from datamodules.corpora import get_parser
from datamodules.corpora.msp_podcast import parse_msp_podcast
from tests.fixtures_corpora import build_msp

ROWS = [
    ("MSP-PODCAST_0001_0001.wav", "A", 5.2, 2.0, 5.0, 127, "Male", "Train"),
    ("MSP-PODCAST_0001_0002.wav", "H", 4.0, 6.4, 4.2, 127, "Male", "Train"),
    ("MSP-PODCAST_0002_0001.wav", "N", 4.0, 4.0, 4.0, "Unknown", "Unknown", "Development"),
    ("MSP-PODCAST_0002_0002.wav", "X", 3.0, 3.5, 3.0, "Unknown", "Female", "Test1"),
    ("MSP-PODCAST_0003_0001.wav", "C", 3.0, 2.5, 4.0, 9, "Female", "Test2"),
    ("MSP-PODCAST_0003_0002.wav", "Q", 3.0, 2.5, 4.0, 9, "Female", "Test2"),  # unknown letter
    ("MSP-PODCAST_0004_0001.wav", "S", 2.0, 2.0, 2.0, 10, "Male", "Train"),  # audio missing
]


@pytest.fixture(params=[False, True], ids=["consensus", "concensus-1.8"])
def root(request, tmp_path):
    return build_msp(tmp_path / "MSP-Podcast", ROWS, misspelt=request.param, nested=True,
                     missing_audio=["MSP-PODCAST_0004_0001.wav"], unlabelled_audio=["MSP-PODCAST_9999_0001.wav"])


def test_records(root):
    result = parse_msp_podcast(root)
    recs = {r.utt_id: r for r in result.records}
    assert set(recs) == {"MSP-PODCAST_0001_0001", "MSP-PODCAST_0001_0002", "MSP-PODCAST_0002_0001",
                         "MSP-PODCAST_0002_0002", "MSP-PODCAST_0003_0001"}
    a = recs["MSP-PODCAST_0001_0001"]
    assert (a.emotion, a.emotion4, a.speaker, a.gender, a.split) == ("angry", "angry", "msp:127", "M", "Train")
    assert (a.arousal, a.valence, a.dominance) == (5.2, 2.0, 5.0)
    assert a.corpus == "msp_podcast" and a.extra["speaker_unknown"] is False
    assert recs["MSP-PODCAST_0003_0001"].emotion == "contempt" and recs["MSP-PODCAST_0003_0001"].emotion4 is None
    assert recs["MSP-PODCAST_0002_0002"].emotion == "no_agreement"
    # nested audio folders are searched
    assert "/Audios/0001/" in recs["MSP-PODCAST_0001_0002"].path


def test_unknown_speakers_are_each_their_own(root):
    recs = {r.utt_id: r for r in parse_msp_podcast(root).records}
    u1, u2 = recs["MSP-PODCAST_0002_0001"], recs["MSP-PODCAST_0002_0002"]
    assert u1.speaker == "msp:unknown:MSP-PODCAST_0002_0001" and u2.speaker == "msp:unknown:MSP-PODCAST_0002_0002"
    assert u1.extra["speaker_unknown"] and u2.extra["speaker_unknown"]
    assert u1.gender is None and u2.gender == "F"


def test_skips_and_warnings(root):
    result = get_parser("msp_podcast")(root)
    assert result.skip_counts == {"unknown label 'Q'": 1, "missing audio file": 1}
    assert any("1 audio file(s)" in w and "no row" in w for w in result.warnings)


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="labels_consensus.csv"):
        parse_msp_podcast(tmp_path)
    root = build_msp(tmp_path / "m", ROWS[:1])
    (root / "Labels" / "labels_consensus.csv").write_text("FileName,EmoAct\nx.wav,3\n")
    with pytest.raises(ValueError, match="missing column"):
        parse_msp_podcast(root)
    root2 = build_msp(tmp_path / "m2", ROWS[:1])
    (root2 / "Labels" / "labels_consensus.csv").write_text(
        "FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set\nMSP-PODCAST_0001_0001.wav,A,high,2,5,1,Male,Train\n")
    result = parse_msp_podcast(root2)
    assert result.skip_counts == {"non-numeric EmoAct/EmoVal/EmoDom": 1}


def test_unknown_speakers_are_flagged_in_the_embedding_set_and_never_tested(tmp_path):
    import numpy as np

    from evaluation.protocols import plan_folds
    from tasks.evaluate import records_to_set

    rows = []
    for spk in range(6):  # six known speakers with clips in Train, two in Test1
        split = "Test1" if spk >= 4 else "Train"
        for k, emo in enumerate("AHNSAHNS"):
            rows.append((f"MSP-PODCAST_{spk:04d}_{k:04d}.wav", emo, 4, 4, 4, 100 + spk, "Male", split))
    for k, (emo, split) in enumerate(zip("AHNSAHNS", ["Train"] * 4 + ["Test1"] * 4)):
        rows.append((f"MSP-PODCAST_0999_{k:04d}.wav", emo, 4, 4, 4, "Unknown", "Female", split))
    root = build_msp(tmp_path / "MSP", rows)
    records = parse_msp_podcast(root).records
    s = records_to_set(records, np.random.default_rng(0).normal(size=(len(records), 4)), "emotion4",
                       {"train": ["Train"], "test": ["Test1"]})
    unknown = np.flatnonzero(s.speaker_unknown)
    assert len(unknown) == 8 and all(s.speaker[i].startswith("msp:unknown:") for i in unknown)
    (official,) = plan_folds(s, "auto").folds  # the corpus's Train/Test1 are speaker-disjoint: official
    assert not np.isin(unknown, official.test_idx).any()
    assert np.isin(unknown[:4], official.train_idx).all()  # unknown clips of Train may train
    kfold = plan_folds(s, "kfold", n_folds=3)
    for f in kfold.folds:  # under k-fold they are out of both sides
        assert not np.isin(unknown, f.test_idx).any() and not np.isin(unknown, f.train_idx).any()
    assert kfold.left_out == {"unknown_speaker": 8}
