from __future__ import annotations

from collections import Counter

import pytest

from datamodules.corpora.esd import parse_esd
from tests.fixtures_corpora import build_esd, write_wav


def test_flat_release_from_parent_folder(tmp_path):
    root = build_esd(tmp_path / "ESD", ["0001", "0011"], per_emotion=2, utf16_speakers=["0011"])
    result = parse_esd(root)
    recs = {r.utt_id: r for r in result.records}
    assert len(recs) == 2 * 5 * 2 and result.skipped == []
    assert {r.split for r in recs.values()} == {None}
    r = recs["0011_000351"]  # English speaker, first Angry utterance
    assert (r.speaker, r.emotion, r.emotion4, r.extra["language"]) == ("esd:0011", "angry", "angry", "English")
    assert r.extra["transcript"] == "transcript 0011_000351 ü"  # decoded from UTF-16
    assert recs["0001_000001"].extra["language"] == "Mandarin"
    assert recs["0001_000001"].extra["transcript"] == "transcript 0001_000001 ü"  # UTF-8
    assert Counter(r.emotion for r in recs.values()) == {e: 4 for e in ("neutral", "angry", "happy", "sad", "surprise")}
    assert "total@split=train" not in result.expected_counts


def test_split_folders_and_dataset_folder_root(tmp_path):
    root = build_esd(tmp_path / "ESD", ["0012"], per_emotion=3, split_folders=True)
    result = parse_esd(root / "Emotion Speech Dataset")
    assert Counter(r.split for r in result.records) == {"train": 5, "evaluation": 5, "test": 5}
    assert result.expected_counts["total@split=train"] == 30000


def test_skips(tmp_path):
    root = build_esd(tmp_path / "ESD", ["0013"], per_emotion=1)
    data = root / "Emotion Speech Dataset" / "0013"
    write_wav(data / "Contempt" / "0013_002000.wav")       # not an ESD emotion
    write_wav(data / "Angry" / "0014_000352.wav")          # speaker differs from folder
    write_wav(data / "Angry" / "0013_352.wav")             # bad name
    write_wav(data / "Angry" / "valid" / "0013_000353.wav")  # unknown split folder
    (data / "0013.txt").write_text("no tab here\n0013_000001\tHello\tNeutral\n")
    result = parse_esd(root)
    assert result.skip_counts == {"unknown label 'Contempt'": 1, "file name speaker 0014 differs from folder 0013": 1,
                                  "unparseable file name": 1, "unknown split folder 'valid'": 1}
    assert len(result.records) == 5
    assert any("without a tab" in w for w in result.warnings)


def test_bad_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="Emotion Speech Dataset"):
        parse_esd(tmp_path)


def test_official_split_shares_every_speaker_so_auto_falls_back_to_kfold(tmp_path):
    """ESD's train/test folders sit inside each speaker's folder: every speaker is on both sides."""
    import numpy as np

    from evaluation.protocols import plan_folds
    from tasks.evaluate import records_to_set

    root = build_esd(tmp_path / "ESD", ["0001", "0002", "0011", "0012"], per_emotion=3, split_folders=True)
    records = parse_esd(root).records
    s = records_to_set(records, np.random.default_rng(0).normal(size=(len(records), 4)), "emotion4",
                       {"train": ["Train", "train"], "test": ["Test1", "test"]})
    assert set(s.split.tolist()) == {"train", "test", "unused"}  # evaluation/ is in neither part
    plan = plan_folds(s, "auto", n_folds=2)
    assert plan.protocol == "kfold" and "4 speaker(s)" in plan.fallback
    with pytest.raises(ValueError, match=r"4 speaker\(s\) are in both"):
        plan_folds(s, "official")


def test_evaluate_on_esd_records_the_fallback_and_the_corpus_report(tmp_path):
    import json

    from tests.conftest import make_cfg
    from tasks.evaluate import evaluate

    root = build_esd(tmp_path / "ESD", ["0001", "0002", "0011", "0012"], per_emotion=3, split_folders=True)
    write_wav(root / "Emotion Speech Dataset" / "0001" / "Contempt" / "train" / "0001_002000.wav")  # skipped
    out = tmp_path / "run"
    cfg = make_cfg("evaluate.yaml", out, ["data=esd", f"data.root={root}", "backbone=deeptalk", "eval.n_folds=2",
                                          "eval.repeats=2", "eval.heads=[linear]", "eval.verification_analysis=false"],
                   tmp_path / "data")
    evaluate(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    p = metrics["protocol"]
    assert p["requested"] == "auto" and p["name"] == "kfold" and p["speaker_independent"]
    assert "4 speaker(s)" in p["fallback"] and p["repeats"] == 2
    data = metrics["data"]
    assert data["corpus"] == "esd" and data["num_clips"] == 60 and data["num_speakers"] == 4
    assert data["skipped_counts"] == {"unknown label 'Contempt'": 1}
    assert data["left_out_by_evaluation"] == {"no_label": 12}  # surprise has no emotion4 label
