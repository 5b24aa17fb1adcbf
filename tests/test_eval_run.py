from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from evaluation.embeddings_io import EmbeddingSet, synthetic_set
from evaluation.metrics import SCALARS
from evaluation.run_heads import run_evaluation

HEADS = ("svm", "sad_first", "linear", "detection")


@pytest.fixture(scope="module")
def data() -> EmbeddingSet:
    return synthetic_set(n_speakers=10, clips_per_speaker=24, dim=16, separation=1.0, n_sessions=5, seed=0)


@pytest.fixture(scope="module")
def result_and_dir(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    logged = []
    res = run_evaluation(data, heads=HEADS, protocol="kfold", n_folds=5, seed=0, out_dir=out,
                         class_order=["neutral", "angry", "happy", "sad"], logger_fn=logged.append, verbose=False)
    return res, out, logged


def test_metrics_json_structure(result_and_dir, data):
    res, out, _ = result_and_dir
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(res))
    p = on_disk["protocol"]
    assert p["name"] == "kfold" and p["n_folds"] == 5 and p["seed"] == 0
    assert p["class_order"] == ["neutral", "angry", "happy", "sad"]
    assert p["counts"] == {c: int((data.emotion == c).sum()) for c in p["class_order"]}
    assert sum(f["n_test"] for f in p["folds"]) == len(data)
    for head in HEADS:
        r = on_disk[head]
        for k in SCALARS:
            assert 0.0 <= r[k] <= 1.0
            assert r[k] == pytest.approx(np.mean([f[k] for f in r["folds"]]))
            assert r[f"{k}_std"] == pytest.approx(np.std([f[k] for f in r["folds"]]))
        assert len(r["folds"]) == 5
        fold = r["folds"][0]
        assert set(fold) >= {"name", "n_train", "n_test", "test_speakers", *SCALARS, "per_class_f1", "confusion"}
        assert np.sum(r["confusion"]) == len(data)  # every row tested exactly once
    assert list(on_disk["svm"]["per_class_f1"]) == ["neutral", "angry", "happy", "sad"]
    assert list(on_disk["detection"]["per_class_f1"]) == ["neutral", "emotional"]
    assert on_disk["svm"]["ua"] > 0.8  # separable data


def test_csv_rows_and_pngs(result_and_dir):
    _, out, _ = result_and_dir
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(HEADS) * (5 + 4)  # folds + mean + std + 95% interval (low, high) per head
    assert {r["evaluation"] for r in rows} == {"speaker-independent"}
    means = [r for r in rows if r["fold"] == "mean"]
    assert [r["head"] for r in means] == list(HEADS)
    res = json.loads((out / "metrics.json").read_text())
    assert float(means[0]["ua"]) == pytest.approx(res["svm"]["ua"])
    for head in HEADS:
        png = out / f"confusion_{head}.png"
        assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


def test_logger_gets_flat_scalars(result_and_dir):
    res, _, logged = result_and_dir
    (flat,) = logged
    assert flat["eval/svm/ua"] == res["svm"]["ua"]
    assert flat["eval/svm/ua_ci95_low"] == res["svm"]["ua_ci95"][0] < res["svm"]["ua"]
    assert flat["eval/transductive"] == 0.0 and flat["eval/speaker_independent"] == 1.0
    assert flat["eval/detection/f1_emotional"] == res["detection"]["per_class_f1"]["emotional"]
    assert all(isinstance(v, float) for v in flat.values())


def test_parallel_folds_give_identical_scores(data, result_and_dir):
    res, _, _ = result_and_dir
    # also shows a head's scores do not depend on which other heads are evaluated
    par = run_evaluation(data, heads=("svm", "detection"), protocol="kfold", n_folds=5, seed=0, n_jobs=2,
                         class_order=["neutral", "angry", "happy", "sad"], verbose=False)
    for head in ("svm", "detection"):
        for a, b in zip(res[head]["folds"], par[head]["folds"]):
            assert {k: v for k, v in a.items() if k != "fit_seconds"} == {k: v for k, v in b.items() if k != "fit_seconds"}


def test_chance_level_without_signal():
    s = synthetic_set(n_speakers=10, clips_per_speaker=24, dim=16, separation=0.0, seed=4)
    res = run_evaluation(s, heads=("svm", "linear"), n_folds=5, verbose=False)
    assert abs(res["svm"]["ua"] - 0.25) < 0.1 and abs(res["linear"]["ua"] - 0.25) < 0.1


def test_undersample_and_loso_recorded(data):
    sad_rows = np.flatnonzero(data.emotion == "sad")
    imbalanced = data.subset(np.setdiff1d(np.arange(len(data)), sad_rows[::2]))
    res = run_evaluation(imbalanced, heads=("linear",), protocol="loso", balancing="undersample", verbose=False)
    assert res["protocol"]["name"] == "loso" and res["protocol"]["balancing"] == "undersample"
    assert [f["name"] for f in res["linear"]["folds"]] == [f"session=s{k}" for k in range(1, 6)]
    for f in res["linear"]["folds"]:
        test_rows = np.isin(imbalanced.session, f["name"].split("=")[1])
        train_labels = imbalanced.emotion[~test_rows]
        n_min = min((train_labels == c).sum() for c in imbalanced.classes)
        assert f["n_fit"] == 4 * n_min < f["n_train"]
    assert [f["undersample_seed"] for f in res["linear"]["folds"]] == [0, 1, 2, 3, 4]


def test_official_split_via_auto(data):
    split = np.where(np.isin(data.speaker, ["spk000", "spk001"]), "test", "train")
    s = EmbeddingSet(**{**data.arrays(), "split": split})
    res = run_evaluation(s, heads=("linear",), verbose=False)
    assert res["protocol"]["name"] == "official"
    (fold,) = res["linear"]["folds"]
    assert fold["test_speakers"] == ["spk000", "spk001"] and fold["n_test"] == int((split == "test").sum())


def test_bad_arguments_fail_before_fitting(data):
    with pytest.raises(ValueError, match=r"labels \['sad'\] are in the set but not in class_order"):
        run_evaluation(data, heads=("linear",), class_order=["neutral", "angry", "happy"], verbose=False)
    with pytest.raises(ValueError, match=r"\['calm'\] are not in the set"):
        run_evaluation(data, heads=("linear",), class_order=["neutral", "angry", "happy", "sad", "calm"],
                       verbose=False)
    with pytest.raises(ValueError, match="unknown head 'knn'"):
        run_evaluation(data, heads=("linear", "knn"), verbose=False)
    with pytest.raises(ValueError, match=r"head_kwargs given for head\(s\) \['svm'\]"):
        run_evaluation(data, heads=("linear",), head_kwargs={"svm": {"C": 1}}, verbose=False)
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['gama'\]"):
        run_evaluation(data, heads=("svm",), head_kwargs={"svm": {"gama": 1}}, verbose=False)
    with pytest.raises(ValueError, match="unknown balancing"):
        run_evaluation(data, heads=("svm",), balancing="smote", verbose=False)


def test_head_failure_names_head_and_fold(data):
    no_sad = data.subset(np.flatnonzero(data.emotion != "sad"))
    with pytest.raises(ValueError, match=r"head 'sad_first' on fold 'fold0': .*'sad' not in the training labels"):
        run_evaluation(no_sad, heads=("sad_first",), n_folds=3, verbose=False)


def test_head_kwargs_and_class_weight_reach_the_head(data, tmp_path):
    res = run_evaluation(data, heads=("svm",), n_folds=3, balancing="class_weight",
                         head_kwargs={"svm": {"nystroem_threshold": 10, "nystroem_components": 30}},
                         out_dir=tmp_path, verbose=False)
    assert all(f.get("nystroem") for f in res["svm"]["folds"])
    assert res["protocol"]["head_kwargs"] == {"svm": {"nystroem_threshold": 10, "nystroem_components": 30}}
    assert res["svm"]["ua"] > 0.6


def test_repeated_kfold_records_every_fold_repeat_and_interval(data, tmp_path, capsys):
    res = run_evaluation(data, heads=("linear",), protocol="kfold", n_folds=5, seed=3, repeats=3, out_dir=tmp_path,
                         class_order=["neutral", "angry", "happy", "sad"])
    p, r = res["protocol"], res["linear"]
    assert p["repeats"] == 3 and p["folds_per_repeat"] == 5 and p["n_folds"] == 15 and p["fold_seeds"] == [3, 4, 5]
    assert len(r["folds"]) == 15 and [f["repeat"] for f in r["folds"]] == [0] * 5 + [1] * 5 + [2] * 5
    assert r["ua"] == pytest.approx(np.mean([f["ua"] for f in r["folds"]]))
    assert [x["repeat"] for x in r["per_repeat"]] == [0, 1, 2]
    for x in r["per_repeat"]:
        assert x["ua"] == pytest.approx(np.mean([f["ua"] for f in r["folds"] if f["repeat"] == x["repeat"]]))
    lo, hi = r["ua_ci95"]
    assert lo < r["ua"] < hi and p["interval"]["n_scores"] == 15 and "Nadeau-Bengio" in p["interval"]["method"]
    assert np.sum(r["confusion"]) == 3 * len(data)  # every row tested once per repeat
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["fold"] for row in rows if row["fold"].endswith(".mean")] == ["r0.mean", "r1.mean", "r2.mean"]
    assert sum(1 for row in rows if row["fold"].startswith("r1.fold")) == 5
    assert "5 folds x 3 repeats" in capsys.readouterr().out


def test_deterministic_protocols_say_repeats_do_not_apply(data, capsys):
    res = run_evaluation(data, heads=("linear",), protocol="loso", repeats=5)
    assert res["protocol"]["repeats"] == 1 and len(res["linear"]["folds"]) == 5
    out = capsys.readouterr().out
    assert "deterministic" in out and "repeats=5 does not apply" in out
    assert "per_repeat" not in res["linear"]


def test_nystroem_is_decided_once_per_evaluation(data):
    # 3 folds over 10 speakers: training parts of 168, 168 and 144 rows straddle the threshold
    res = run_evaluation(data, heads=("svm", "sad_first"), protocol="kfold", n_folds=3, verbose=False,
                         head_kwargs={"svm": {"nystroem_threshold": 150, "nystroem_components": 40},
                                      "sad_first": {"svm": {"nystroem_threshold": 150, "nystroem_components": 40}}})
    assert sorted({f["n_train"] for f in res["svm"]["folds"]}) == [144, 168]
    for head in ("svm", "sad_first"):
        assert [f.get("nystroem", False) for f in res[head]["folds"]] == [True, True, True]
        decision = res["protocol"]["nystroem"][head]
        assert decision["used"] and decision["largest_training_part"] == 168 and decision["threshold"] == 150


def test_speaker_overlap_opt_in_is_labelled_everywhere(data, tmp_path, capsys):
    split = np.where(np.arange(len(data)) % 4 == 0, "test", "train")
    s = EmbeddingSet(**{**data.arrays(), "split": split})
    logged = []
    res = run_evaluation(s, heads=("linear",), protocol="official", allow_speaker_overlap=True, out_dir=tmp_path,
                         logger_fn=logged.append)
    p = res["protocol"]
    assert p["speaker_independent"] is False and "NOT speaker-independent" in p["labels"]
    assert "NOT speaker-independent" in capsys.readouterr().out
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["protocol"]["evaluation"] == "NOT speaker-independent"
    with open(tmp_path / "metrics.csv") as f:
        assert {r["evaluation"] for r in csv.DictReader(f)} == {"NOT speaker-independent"}
    assert "eval_speaker_overlap/linear/ua" in logged[0] and not any(k.startswith("eval/") for k in logged[0])
    # auto on the same set falls back to k-fold and says why
    auto = run_evaluation(s, heads=("linear",), verbose=False)
    assert auto["protocol"]["name"] == "kfold" and auto["protocol"]["speaker_independent"]
    assert "10 speaker(s)" in auto["protocol"]["fallback"]


def test_encoder_that_saw_test_speakers_is_refused_or_labelled_transductive(data, tmp_path, capsys):
    from evaluation.provenance import Provenance, TransductiveEvaluationError
    from common.errors import ConfigError

    seen = Provenance("checkpoint", "x.ckpt", seen_speakers=("spk001", "spk004", "other:9"))
    with pytest.raises(TransductiveEvaluationError, match=r"2 of the 10 test speakers.*spk001.*crossval.py") as e:
        run_evaluation(data, heads=("linear",), n_folds=5, provenance=seen, verbose=False)
    assert isinstance(e.value, ConfigError)
    logged = []
    res = run_evaluation(data, heads=("linear",), n_folds=5, provenance=seen, allow_transductive=True,
                         out_dir=tmp_path, logger_fn=logged.append)
    p = res["protocol"]
    assert p["transductive"] is True and p["leakage"]["seen_test_speakers"] == ["spk001", "spk004"]
    assert p["evaluation"] == "TRANSDUCTIVE" and p["provenance"]["n_seen_speakers"] == 3
    assert "[TRANSDUCTIVE]" in capsys.readouterr().out
    with open(tmp_path / "metrics.csv") as f:
        assert {r["evaluation"] for r in csv.DictReader(f)} == {"TRANSDUCTIVE"}
    assert logged[0]["eval_transductive/transductive"] == 1.0 and "eval_transductive/linear/ua" in logged[0]
    # seen speakers that are not tested (another corpus) are fine
    clean = run_evaluation(data, heads=("linear",), provenance=Provenance("checkpoint", "y.ckpt", ("other:9",)),
                           verbose=False)
    assert clean["protocol"]["transductive"] is False and clean["protocol"]["evaluation"] == "speaker-independent"
    unknown = run_evaluation(data, heads=("linear",), provenance=Provenance("checkpoint", "z.ckpt", None, note="old"),
                             verbose=False)
    assert unknown["protocol"]["evaluation"] == "provenance unknown" and unknown["protocol"]["transductive"] is None


def test_data_block_carries_the_report_and_what_the_evaluation_left_out(data):
    split = np.where(np.isin(data.speaker, ["spk000", "spk001"]), "test", "train").astype("<U6")
    split[data.speaker == "spk009"] = "unused"
    s = EmbeddingSet(**{**data.arrays(), "split": split})
    res = run_evaluation(s, heads=("linear",), verbose=False,
                         data_report={"num_clips": 999, "left_out_by_evaluation": {"no_label": 4}})
    assert res["data"]["num_clips"] == 999 and res["data"]["n_rows_evaluated"] == len(s)
    assert res["data"]["left_out_by_evaluation"] == {"no_label": 4, "official_split_unused": 24}
