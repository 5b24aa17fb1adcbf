"""crossval.py: evaluate.py's folds, fold-wise training on unseen speakers, the baseline on the same folds,
the trust rules, resume, and the report. On a tiny synthetic corpus (the shared corpora are not needed)."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hydra.core.global_hydra import GlobalHydra

from tests.conftest import ROOT, make_cfg

CLASSES = ["angry", "happy", "neutral", "sad"]
CORPUS = ["data.corpus_options.n_speakers=12", "data.corpus_options.clips_per_emotion=2"]
TINY_SER = ["experiment=ser_finetune", "backbone._target_=tests.helpers.TinyBackbone", *CORPUS, "data.n_speakers=4",
            "data.n_per_speaker=4", "data.crop_seconds=1.0", "trainer.max_epochs=8", "model.freeze=none",
            "model.lr=0.003", "model.head_lr=0.003", "callbacks.early_stopping=null", "eval.n_folds=2",
            "eval.repeats=1", "crossval.val_speakers=1", "crossval.batch_size=8"]


def _cfg(out: Path, data_dir: Path, *overrides: str):
    return make_cfg("crossval.yaml", out / "run", [*overrides, f"crossval.out_dir={out / 'results'}"], data_dir)


@pytest.fixture(scope="module")
def run(tmp_path_factory, synthetic_cache):
    from tasks.crossval import crossval

    out = tmp_path_factory.mktemp("crossval")
    result = crossval(_cfg(out, synthetic_cache, *TINY_SER))
    GlobalHydra.instance().clear()
    return out, result


# ----- the plan -----
def test_the_folds_are_evaluate_pys(tmp_path, synthetic_cache):
    """The same seed, eval.n_folds and eval.repeats give crossval and evaluate.py the same test speakers."""
    from tasks.crossval import plan_of
    from tasks.evaluate import evaluate

    common = [*CORPUS, "eval.n_folds=3", "eval.repeats=2", "seed=7"]
    ev = make_cfg("evaluate.yaml", tmp_path / "ev", [*common, "backbone=ge2e", "eval.heads=[linear]",
                                                     "eval.verification_analysis=false", "eval.export.heads=[]"],
                  synthetic_cache)
    evaluated = evaluate(ev)["protocol"]["folds"]
    GlobalHydra.instance().clear()
    plan = plan_of(make_cfg("crossval.yaml", tmp_path / "cv", common, synthetic_cache))[3]
    GlobalHydra.instance().clear()
    assert len(plan.folds) == len(evaluated) == 6
    assert [list(f.test_speakers) for f in plan.folds] == [f["test_speakers"] for f in evaluated]
    assert [f.name for f in plan.folds] == [f["name"] for f in evaluated]


def test_a_plan_the_corpus_cannot_support_fails_before_anything_is_embedded(tmp_path, synthetic_cache, monkeypatch):
    """4 speakers, eval.n_folds=5: one clear line, before extraction (evaluate.py) or training (crossval.py)."""
    import tasks.evaluate as evaluating
    import tasks.train as training
    from common.errors import ConfigError

    def never(*a, **k):
        raise AssertionError("embedded or trained before the plan was checked")

    monkeypatch.setattr(evaluating, "extract", never)
    monkeypatch.setattr(training, "train", never)
    small = ["data.corpus_options.n_speakers=4", "data.corpus_options.clips_per_emotion=2", "eval.n_folds=5"]
    ev = make_cfg("evaluate.yaml", tmp_path / "ev", [*small, "backbone=ge2e"], synthetic_cache)
    with pytest.raises(ConfigError, match=r"4 speakers < n_folds=5.*eval.n_folds=5"):
        evaluating.evaluate(ev)
    GlobalHydra.instance().clear()
    from tasks.crossval import crossval

    with pytest.raises(ConfigError, match=r"4 speakers < n_folds=5"):
        crossval(_cfg(tmp_path, synthetic_cache, "experiment=contrastive_mtl", *small))
    GlobalHydra.instance().clear()


@pytest.mark.slow
def test_the_command_line_says_it_in_one_line(tmp_path, synthetic_cache):
    cmd = [sys.executable, "evaluate.py", "backbone=ge2e", "data.corpus_options.n_speakers=4",
           "data.corpus_options.clips_per_emotion=2", "eval.n_folds=5", f"paths.data_dir={synthetic_cache}",
           f"paths.log_dir={tmp_path}"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 2
    errors = [line for line in p.stderr.splitlines() if "Error" in line or "error" in line]
    assert errors == [l for l in errors if l.startswith("Config error: kfold: 4 speakers < n_folds=5")], p.stderr[-2000:]
    assert "Traceback" not in p.stderr


# ----- the fold-wise run -----
def test_every_fold_trains_on_its_training_speakers_and_is_scored_on_unseen_ones(run):
    out, result = run
    folds = result["folds"]
    assert len(folds) == 2
    for f in folds:
        test = set(f["fold"]["test_speakers"])
        assert not test & set(f["fit_speakers"]) and not test & set(f["val_speakers"])
        assert len(f["val_speakers"]) == 1 and set(f["val_speakers"]) < set(f["train_speakers"])
        assert f["selected_on"] == "val/ua" and f["trust"]["status"] == "clean"
        seen = torch.load(f["selected_checkpoint"], weights_only=True)["seen_speakers"]
        assert not test & set(seen) and set(seen) == set(f["train_speakers"])
        assert set(f["scores"]) == {"baseline/layer_stats/linear", "baseline/embedding/svm", "trained/layer_stats/linear",
                                    "trained/embedding/svm", "trained/classifier", "baseline[fit]/layer_stats/linear",
                                    "baseline[fit]/embedding/svm"}
        # baseline[fit]: the probes on the rows the model itself was fitted on (no validation speaker)
        assert f["scores"]["baseline[fit]/embedding/svm"]["n_fit"] == f["scores"]["trained/classifier"]["n_fit"]
    # chance is 0.25 (4 balanced classes): the fine-tuned classifier is well above it on speakers it never met
    assert result["summary"]["trained/classifier"]["ua"] > 0.45


def test_the_report_pairs_trained_and_baseline_on_the_same_folds(run):
    out, result = run
    res = out / "results"
    written = json.loads((res / "comparison.json").read_text())
    pairs = {(c["a"], c["b"]) for c in written["comparisons"]}
    assert ("trained/layer_stats/linear", "baseline/layer_stats/linear") in pairs
    assert ("trained/classifier", "baseline/embedding/svm") in pairs
    assert ("trained/classifier", "baseline[fit]/embedding/svm") in pairs
    assert not any(a.startswith("trained/layer") and b.startswith("baseline[fit]") for a, b in pairs)
    for c in written["comparisons"]:
        assert c["n"] == 2 and c["corrected_t"]["test_train_ratio"] > 0 and "wilcoxon" in c
        diffs = [f["scores"][c["a"]]["ua"] - f["scores"][c["b"]]["ua"] for f in written["folds"]]
        assert np.allclose(diffs, c["per_fold_difference"]) and c["wins_a"] == sum(d > 0 for d in diffs)
    md = (res / "results.md").read_text()
    assert md.splitlines()[2].startswith("`python crossval.py") and "| trained/classifier |" in md
    assert (res / "paired_folds.png").stat().st_size > 1000
    for f in written["folds"]:
        assert (res / "folds" / f["fold"]["name"] / "result.json").is_file()
        kept = list(Path(f["selected_checkpoint"]).parent.glob("*.ckpt"))
        assert kept == [Path(f["selected_checkpoint"])] and not list((res / "folds").glob("**/*.ckpt"))


def test_a_rerun_continues_from_the_finished_folds(run, synthetic_cache, monkeypatch):
    import tasks.train as training
    from tasks.crossval import crossval

    out, first = run
    monkeypatch.setattr(training, "train", lambda *a, **k: pytest.fail("a finished fold was trained again"))
    again = crossval(_cfg(out, synthetic_cache, *TINY_SER))
    GlobalHydra.instance().clear()
    assert again["summary"] == first["summary"]


def test_predict_py_applies_a_fold_checkpoint(run, tmp_path, synthetic_cache):
    from datamodules.audio import load_audio, trim_silence
    from lightning_modules.checkpoints import load_embedding_module
    from tasks.crossval import plan_of
    from tasks.predict import predict

    out, result = run
    fold = result["folds"][0]
    records = plan_of(_cfg(out, synthetic_cache, *TINY_SER))[1]
    GlobalHydra.instance().clear()
    clips = [r.path for r in records if r.speaker in set(fold["fold"]["test_speakers"])][:3]
    folder = tmp_path / "clips"
    folder.mkdir()
    for c in clips:
        shutil.copy(c, folder / Path(c).name)
    (folder / "corrupt.wav").write_bytes(np.random.default_rng(0).integers(1, 255, 3000, dtype=np.uint8).tobytes())
    sf.write(str(folder / "silent.wav"), np.zeros(16000, dtype="float32"), 16000, subtype="PCM_16")
    ckpt = fold["selected_checkpoint"]
    summary = predict(make_cfg("predict.yaml", tmp_path / "run", [f"ckpt_path={ckpt}", f"inputs={folder}"]))
    GlobalHydra.instance().clear()
    with open(tmp_path / "run" / "predictions.csv", newline="") as f:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(f)}
    assert rows["corrupt.wav"]["status"] == "unreadable" and rows["silent.wav"]["status"] == "digital_silence"
    assert summary["model"]["classes"] == CLASSES
    model = load_embedding_module(ckpt)
    for c in clips:
        row = rows[Path(c).name]
        probs = np.array([float(row[f"p_{k}"]) for k in CLASSES])
        assert row["status"] == "ok" and probs.sum() == pytest.approx(1.0, abs=1e-4)
        expected = model.predict_proba([trim_silence(load_audio(c, 16000), 16000)])[0].numpy()
        np.testing.assert_allclose(probs, expected, atol=1e-5)


def test_data_overrides_reach_a_chained_stage_but_not_the_ser_data_module():
    from tasks.crossval import data_overrides

    overrides = ["experiment=ser_finetune", "data=emodb", "data.root=/x", "+data.extra=1", "data.classes=[a,b]",
                 "data._target_=x.Y", "model.freeze=all", "paths.data_dir=/d", "trainer.max_epochs=3"]
    assert data_overrides(overrides) == ["data=emodb", "data.root=/x", "+data.extra=1", "paths.data_dir=/d"]


# ----- trust -----
def _fake_checkpoint(path: Path, seen: list[str] | None, unknown_from: list[str] | None = None) -> Path:
    """A real TinyBackbone SER checkpoint with the provenance keys set (or left out: seen=None)."""
    from lightning_modules.ser_finetune import SERFinetuneModule

    m = SERFinetuneModule({"_target_": "tests.helpers.TinyBackbone", "sample_rate": 16000}, class_names=CLASSES,
                          freeze="none")
    ckpt = {"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams),
            "module_class": "lightning_modules.ser_finetune.SERFinetuneModule"}
    if seen is not None:
        ckpt["seen_speakers"] = sorted(seen)
    if unknown_from:
        ckpt["provenance_unknown_from"] = unknown_from
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def test_a_warm_start_from_a_checkpoint_that_heard_a_test_speaker_is_refused(tmp_path, synthetic_cache):
    from evaluation.provenance import TransductiveEvaluationError
    from tasks.crossval import crossval

    init = _fake_checkpoint(tmp_path / "init.ckpt", [f"synthetic:spk{i:03d}" for i in range(12)])
    with pytest.raises(TransductiveEvaluationError, match="test speaker"):
        crossval(_cfg(tmp_path, synthetic_cache, *TINY_SER, "trainer.max_epochs=1", f"model.init_from={init}"))
    GlobalHydra.instance().clear()


def test_unknown_provenance_is_refused_unless_opted_in_and_then_labelled(tmp_path, synthetic_cache):
    """A checkpoint without seen_speakers used to count as 'saw nobody', and a warm start from it laundered it."""
    from evaluation.provenance import UnknownProvenanceError
    from tasks.crossval import crossval

    init = _fake_checkpoint(tmp_path / "init.ckpt", None)
    short = [*TINY_SER, "trainer.max_epochs=1", f"model.init_from={init}"]
    with pytest.raises(UnknownProvenanceError, match="allow_unknown_provenance"):
        crossval(_cfg(tmp_path / "a", synthetic_cache, *short))
    GlobalHydra.instance().clear()
    result = crossval(_cfg(tmp_path / "b", synthetic_cache, *short, "crossval.allow_unknown_provenance=true"))
    GlobalHydra.instance().clear()
    assert result["labels"] == ["provenance unknown"]
    assert all(f["trust"]["status"] == "provenance unknown" for f in result["folds"])
    assert "**provenance unknown**" in (tmp_path / "b" / "results" / "results.md").read_text()


def test_a_warm_start_carries_unknown_provenance_into_the_new_checkpoint(tmp_path):
    from lightning_modules.checkpoints import read_checkpoint
    from lightning_modules.ser_finetune import SERFinetuneModule

    init = _fake_checkpoint(tmp_path / "init.ckpt", None)
    m = SERFinetuneModule({"_target_": "tests.helpers.TinyBackbone", "sample_rate": 16000}, class_names=CLASSES,
                          freeze="none", init_from=str(init))
    ckpt = {"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams)}
    m.on_save_checkpoint(ckpt)
    assert ckpt["seen_speakers"] == [] and ckpt["provenance_unknown_from"] == [str(init)]
    torch.save(ckpt, tmp_path / "new.ckpt")
    prov = read_checkpoint(tmp_path / "new.ckpt").provenance
    assert not prov.known and str(init) in prov.note  # not 'saw nobody'


# ----- chains and split runs -----
@pytest.mark.slow
def test_a_chain_and_folds_run_in_separate_processes(tmp_path, synthetic_cache):
    """crossval.pretrain trains a first stage per fold whose checkpoint warm-starts the experiment;
    crossval.folds runs part of the plan, and the report gathers what every process finished."""
    from tasks.crossval import crossval

    chain = [*TINY_SER, "trainer.max_epochs=2", "crossval.val_speakers=2", 'crossval.pretrain=["experiment=contrastive_mtl","trainer.max_epochs=1",'
             '"backbone._target_=tests.helpers.TinyBackbone","backbone.sample_rate=16000","data.n_speakers=4",'
             '"data.n_per_speaker=2","data.crop_seconds=1.0"]']
    part = crossval(_cfg(tmp_path, synthetic_cache, *chain, "crossval.folds=[1]"))
    GlobalHydra.instance().clear()
    assert [f["fold"]["name"] for f in part["folds"]] == ["fold1"]
    whole = crossval(_cfg(tmp_path, synthetic_cache, *chain, "crossval.folds=[0]"))
    GlobalHydra.instance().clear()
    assert [f["fold"]["name"] for f in whole["folds"]] == ["fold0", "fold1"] and len(whole["comparisons"]) > 0
    for f in whole["folds"]:
        pre = f["pretrain"]["selected_checkpoint"]
        assert Path(pre).parent.parent.name == "pretrain" and Path(pre).is_file()
        chain_paths = f["trust"]["checked"]
        assert chain_paths[0] == f["selected_checkpoint"] and pre in chain_paths
        seen = torch.load(pre, weights_only=True)["seen_speakers"]
        assert not set(seen) & set(f["fold"]["test_speakers"])


def test_tuning_on_validation_speakers_scores_no_test_speaker(tmp_path, synthetic_cache, monkeypatch):
    """crossval.score_test=false: the selection scores of the validation speakers only (what hyper-parameters are
    chosen on); no probe or classifier ever sees a test clip."""
    import tasks.crossval as cv

    monkeypatch.setattr(cv, "score_probes", lambda *a, **k: pytest.fail("a test speaker was scored"))
    monkeypatch.setattr(cv, "score_classifier", lambda *a, **k: pytest.fail("a test speaker was scored"))
    result = cv.crossval(_cfg(tmp_path, synthetic_cache, *TINY_SER, "trainer.max_epochs=2", "crossval.score_test=false"))
    GlobalHydra.instance().clear()
    assert result["summary"] == {} and result["comparisons"] == []
    v = result["validation"]
    assert v["metric"] == "val/ua" and v["n"] == 2 and 0 <= v["mean"] <= 1
    assert np.isclose(v["mean"], np.mean([f["selected_score"] for f in result["folds"]]))
    assert "Test speakers not scored" in (tmp_path / "results" / "results.md").read_text()


def test_a_reference_encoder_is_scored_on_the_same_folds(tmp_path, synthetic_cache):
    from tasks.crossval import crossval

    result = crossval(_cfg(tmp_path, synthetic_cache, *TINY_SER, "trainer.max_epochs=1", "crossval.references=[ge2e]"))
    GlobalHydra.instance().clear()
    assert {"reference-ge2e/layer_stats/linear", "reference-ge2e/embedding/svm"} <= set(result["summary"])
    pairs = {(c["a"], c["b"]) for c in result["comparisons"]}
    assert ("trained/embedding/svm", "reference-ge2e/embedding/svm") in pairs
    assert ("trained/classifier", "reference-ge2e/layer_stats/linear") in pairs


def test_an_evaluate_run_and_crossvals_probes_of_the_same_encoder_share_the_clip_features(tmp_path, synthetic_cache,
                                                                                         monkeypatch):
    """evaluate.py backbone=ge2e, then crossval.py's probes of a baseline with the same weights (the pretrained GE2E
    a run starts from): one cache (`<paths.data_dir>/clip_features`), the clips read back, not computed again."""
    pytest.importorskip("resemblyzer", reason="the pretrained GE2E weights come with resemblyzer")
    import lightning_modules.clip_feature_cache as cache
    import tasks.crossval as cv_task
    from tasks.evaluate import evaluate

    data_dir = tmp_path / "data"  # a clip feature cache of this test's own, over the shared synthetic corpus
    common = ["data.corpus_options.n_speakers=8", "data.corpus_options.clips_per_emotion=2",
              f"data.root={synthetic_cache / 'synthetic'}", "eval.n_folds=2", "eval.repeats=1", "backbone=ge2e"]
    evaluated = evaluate(make_cfg("evaluate.yaml", tmp_path / "ev", [*common, "eval.heads=[linear]", "eval.export.heads=[]",
                                                                     "eval.verification_analysis=false"], data_dir))
    GlobalHydra.instance().clear()
    written = sorted((data_dir / "clip_features").glob("*.npz"))
    assert len(written) == 1

    class Captured(Exception):
        pass

    seen = {}

    def capture(fold, ctx, cfg, settings, out):  # crossval.py's own fold context, before any training
        seen.update(fold=fold, ctx=ctx, cfg=cfg)
        raise Captured

    monkeypatch.setattr(cv_task, "run_fold", capture)
    with pytest.raises(Captured):
        cv_task.crossval(_cfg(tmp_path, data_dir, *common))
    GlobalHydra.instance().clear()

    def never(*a, **k):
        raise AssertionError("crossval.py computed clip features evaluate.py had computed")

    monkeypatch.setattr(cache, "embed_clips", never)
    start = cv_task.baseline_encoder(seen["cfg"], cv_task.reference_encoder("ge2e").state_dict())
    scores = cv_task.score_probes("baseline", start, seen["ctx"], seen["fold"], [{"features": "embedding", "head": "linear"}])
    assert 0 <= scores["baseline/embedding/linear"]["ua"] <= 1
    assert scores["baseline/embedding/linear"]["ua"] == pytest.approx(evaluated["linear"]["folds"][0]["ua"])
    assert sorted((data_dir / "clip_features").glob("*.npz")) == written


def test_a_refit_trains_again_on_every_training_speaker_for_the_chosen_epochs(tmp_path, synthetic_cache):
    from tasks.crossval import crossval

    result = crossval(_cfg(tmp_path, synthetic_cache, *TINY_SER, "trainer.max_epochs=3", "crossval.refit=true"))
    GlobalHydra.instance().clear()
    for f in result["folds"]:
        chosen = torch.load(f["selected_checkpoint"], weights_only=True)["epoch"]
        assert f["refit"]["epochs"] == chosen + 1
        assert f["refit"]["fit_speakers"] == f["train_speakers"] == f["fit_speakers"]  # the validation speakers too
        scored = torch.load(f["refit"]["checkpoint"], weights_only=True)
        assert set(scored["seen_speakers"]) == set(f["train_speakers"]) and scored["epoch"] == chosen
        assert not set(scored["seen_speakers"]) & set(f["fold"]["test_speakers"])
        assert "baseline[fit]/embedding/svm" not in f["scores"]  # the model fitted every training row


@pytest.mark.slow
def test_a_pretraining_stage_on_a_pool_of_corpora_never_meets_the_folds_test_speakers(tmp_path):
    """Label-free pretraining on other corpora's audio too (data=pooled): their speakers train, and of the evaluated
    corpus only the fold's training speakers do (data.exclude_speakers holds its test speakers out)."""
    from omegaconf import open_dict

    from tasks.crossval import crossval
    from tests.fixtures_corpora import build_casia
    from tests.test_pooled import build_emodb

    emodb = build_emodb(tmp_path / "emodb", speakers=("03", "08", "09", "10", "11", "12"))
    casia = build_casia(tmp_path / "casia", ["liuchanhg", "wangzhe"], emotions=("angry", "happy", "neutral", "sad"))
    tiny = ["backbone._target_=tests.helpers.TinyBackbone", "trainer.max_epochs=1", "data.n_speakers=2",
            "data.n_per_speaker=2", "data.crop_seconds=0.5"]
    cfg = make_cfg("crossval.yaml", tmp_path / "run", ["experiment=ser_finetune", "data=emodb", f"data.root={emodb}",
                                                        *tiny, "model.freeze=none", "callbacks.early_stopping=null",
                                                        "eval.n_folds=3", "eval.repeats=1", "crossval.val_speakers=2",
                                                        f"crossval.out_dir={tmp_path / 'results'}"], tmp_path / "data")
    with open_dict(cfg):
        cfg.crossval.pretrain = ["experiment=triplet_speaker", "data=pooled", *tiny, "backbone.sample_rate=16000",
                                 f"data.corpus_options.corpora=[{{corpus: emodb, root: '{emodb}'}}, "
                                 f"{{corpus: casia, root: '{casia}'}}]"]
    result = crossval(cfg)
    GlobalHydra.instance().clear()
    casia_speakers = {"casia:liuchanhg", "casia:wangzhe"}
    for f in result["folds"]:
        seen = set(torch.load(f["pretrain"]["selected_checkpoint"], weights_only=True)["seen_speakers"])
        test = set(f["fold"]["test_speakers"])
        assert casia_speakers <= seen and not seen & test
        assert {s for s in seen if s.startswith("emodb:")} == set(f["train_speakers"])
        assert f["trust"]["status"] == "clean"


def test_the_summary_goes_to_the_loggers(run, synthetic_cache):
    """logger=csv (or wandb): the means and the paired differences of the report, as scalars."""
    import csv as csv_module

    from tasks.crossval import crossval

    out, first = run
    cfg = _cfg(out, synthetic_cache, *TINY_SER, "logger=csv")
    crossval(cfg)  # every fold read back: only the report and the loggers run
    GlobalHydra.instance().clear()
    files = list((out / "run").glob("csv/**/metrics.csv"))
    assert len(files) == 1
    row = next(csv_module.DictReader(open(files[0])))
    assert float(row["crossval/trained/classifier/ua"]) == pytest.approx(first["summary"]["trained/classifier"]["ua"])
    assert "crossval/trained/classifier-vs-baseline/layer_stats/linear/p_corrected_t" in row
