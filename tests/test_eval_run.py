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
    assert len(rows) == len(HEADS) * (5 + 2)  # folds + mean + std per head
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
