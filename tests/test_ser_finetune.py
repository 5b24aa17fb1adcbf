"""experiment=ser_finetune: supervised SER training on the shared backbone. It runs, it learns emotion on
speakers it never met (fold-wise, synthetic corpus), its freeze modes fix what they say, its class weights
come from the training part's counts, its metrics.json has evaluate.py's schema, and predict.py applies
its checkpoint."""
from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from lightning_modules.ser_finetune import (SERFinetuneModule, class_weights_from_counts, encoder_stages,
                                            unweighted_accuracy)
from tests.conftest import ROOT, TINY_CORPUS, make_cfg

sys.path.insert(0, str(ROOT / "scripts"))
import finetune_protocol  # noqa: E402

CLASSES = ["angry", "happy", "neutral", "sad"]
QUIET = ["callbacks.model_summary=null", "callbacks.progress_bar=null", "+trainer.enable_progress_bar=false"]
GE2E = {"_target_": "lightning_modules.backbones.ge2e.GE2EBackbone"}
DEEPTALK = {"_target_": "lightning_modules.backbones.deeptalk.DeepTalkBackbone", "sample_rate": 8000}


# ----- the experiment runs -----
def test_fast_dev_run_of_the_experiment(train_cfg_factory):
    from utils.training import train

    cfg = train_cfg_factory("experiment=ser_finetune", "debug=fdr", "data.val_batch_size=4", *QUIET)  # one val batch
    assert cfg.callbacks.model_checkpoint.monitor == cfg.optimized_metric == "val/ua"
    assert cfg.callbacks.model_checkpoint.mode == "max" and cfg.callbacks.early_stopping.monitor == "val/ua"
    metrics, objs = train(cfg)
    model = objs["model"]
    assert model.hparams.class_names == CLASSES  # filled from the datamodule: what predict.py reads
    assert np.isfinite(metrics["train/loss"]) and 0.0 <= metrics["val/ua"] <= 1.0
    assert len(model.layer_weight_table()) == len(model.backbone.layers(torch.zeros(1, 16000)))  # GE2E: mel + 3 LSTM


# ----- pieces -----
def test_class_weights_are_balanced_from_counts_and_absent_classes_get_zero():
    w = class_weights_from_counts([10, 30, 0, 20])
    np.testing.assert_allclose(w.numpy(), [2.0, 2 / 3, 0.0, 1.0], rtol=1e-6)  # n / (C_present * n_c), n = 60
    with pytest.raises(ValueError, match="at least one clip"):
        class_weights_from_counts([0, 0])


def test_unweighted_accuracy_averages_only_the_classes_present_like_evaluate():
    from sklearn.metrics import balanced_accuracy_score

    pred, target = torch.tensor([0, 1, 1, 0, 2]), torch.tensor([0, 1, 0, 0, 1])  # class 2 only predicted
    assert unweighted_accuracy(pred, target, 4) == pytest.approx(balanced_accuracy_score(target, pred))


def test_class_weights_come_from_the_training_speakers_only(tmp_path, synthetic_cache):
    cfg = make_cfg("train.yaml", tmp_path, ["experiment=ser_finetune", *TINY_CORPUS], synthetic_cache)
    dm = instantiate(cfg.data, _convert_="all")
    dm.prepare_data(), dm.setup("fit")
    GlobalHydra.instance().clear()
    val = set(dm.val_speakers)
    assert val and not val & {r.speaker for r in dm.train_records}
    assert dm.train_class_counts().sum() == len(dm.train_records)
    dm.train_emotion_ids = np.array([0] * 10 + [1] * 30 + [3] * 20)  # an imbalanced training part
    model = SERFinetuneModule(GE2E, freeze="all")
    model._trainer = SimpleNamespace(datamodule=dm)
    model.setup("fit")
    assert model.hparams.class_names == CLASSES and model.train_class_counts == [10, 30, 0, 20]
    np.testing.assert_allclose(model.class_weights.numpy(), class_weights_from_counts([10, 30, 0, 20]).numpy())


# ----- freeze modes -----
def _steps(model: SERFinetuneModule, n_classes: int = 4, steps: int = 2, seconds: float = 1.0) -> None:
    gen = torch.Generator().manual_seed(0)
    wav = 0.1 * torch.randn(4, int(seconds * model.backbone.sample_rate), generator=gen)
    target = torch.arange(4) % n_classes
    opt = model.configure_optimizers()
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(wav), target).backward()
        opt.step()


@pytest.mark.parametrize("mode", ["all", "partial", "none"])
def test_freeze_modes_fix_what_they_say(mode):
    model = SERFinetuneModule(GE2E, class_names=CLASSES, freeze=mode, freeze_stages=2, scheduler="none", lr=1e-3)
    before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    _steps(model)
    lstm = [f"lstm.{kind}_l{k}" for k in range(3) for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    frozen = {"all": lstm + ["linear.weight", "linear.bias"], "partial": lstm[:4], "none": []}[mode]
    params = dict(model.backbone.named_parameters())
    assert sorted(model.frozen_parameters) == sorted(frozen)
    for name in frozen:
        assert not params[name].requires_grad and torch.equal(params[name], before[name]), name
    for name in set(lstm) - set(frozen):  # (the embedding projection gets no gradient from layer pooling)
        assert params[name].requires_grad and not torch.equal(params[name], before[name]), name
    assert model.backbone.training == (mode != "all")  # a fixed encoder stays in eval mode while the head trains
    head = model.classifier[-1].weight
    assert head.requires_grad


def test_partial_freeze_keeps_frozen_batch_norm_statistics_fixed():
    model = SERFinetuneModule(DEEPTALK, class_names=CLASSES, freeze="partial", freeze_stages=2, scheduler="none",
                              lr=1e-3)
    stages = dict(encoder_stages(model.backbone))
    assert set(stages["reference convolutions"]) <= set(model.frozen_parameters)
    bn = model.backbone.reference_encoder.bns[0]
    stats = bn.running_mean.clone()
    gru = model.backbone.reference_encoder.gru.weight_hh_l0.detach().clone()
    _steps(model, seconds=0.5)
    assert not bn.training and torch.equal(bn.running_mean, stats)
    assert not torch.equal(model.backbone.reference_encoder.gru.weight_hh_l0, gru)  # the GRU above fine-tunes


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="model.freeze='some'"):
        SERFinetuneModule(GE2E, freeze="some")
    with pytest.raises(ValueError, match=r"model.freeze_stages=9: expected 1..5"):
        SERFinetuneModule(GE2E, freeze="partial", freeze_stages=9)


# ----- fold-wise: learns on unseen speakers, evaluate.py's schema, predict.py on its checkpoint -----
PROTOCOL = ["experiment=ser_finetune", "backbone._target_=tests.helpers.TinyBackbone",
            "data.corpus_options.n_speakers=12", "data.corpus_options.clips_per_emotion=2", "data.n_speakers=4",
            "data.n_per_speaker=4", "data.crop_seconds=1.0", "trainer.max_epochs=8", "model.freeze=none",
            "model.lr=0.003", "model.head_lr=0.003", "callbacks.early_stopping=null"]


@pytest.fixture(scope="module")
def protocol_run(tmp_path_factory, synthetic_cache):
    out = tmp_path_factory.mktemp("finetune_protocol")
    result = finetune_protocol.main([*PROTOCOL, f"paths.data_dir={synthetic_cache}", "--n-folds", "2",
                                     "--val-speakers", "1", "--baseline-heads", "linear", "--out", str(out)])
    GlobalHydra.instance().clear()
    return out, result


def test_fold_wise_finetuning_beats_chance_on_speakers_it_never_met(protocol_run):
    out, result = protocol_run
    folds = result["ser_finetune"]["folds"]
    assert len(folds) == 2
    for f in folds:
        test = set(f["test_speakers"])
        assert not test & set(f["train_speakers"]) and not test & set(f["val_speakers"])
        assert len(f["val_speakers"]) == 1 and f["selected_on"] == "val/ua"
        seen = torch.load(f["selected_checkpoint"], weights_only=True)["seen_speakers"]
        assert not test & set(seen)
    # chance is 0.25 (4 balanced classes): measured 0.60 and 0.67 on the two folds
    assert result["ser_finetune"]["ua"] > 0.45 and min(f["ua"] for f in folds) > 0.35


def test_metrics_json_has_evaluates_schema_per_fold_and_overall(protocol_run):
    from evaluation.embeddings_io import EmbeddingSet
    from evaluation.protocols import plan_folds
    from evaluation.run_heads import run_evaluation

    out, result = protocol_run
    written = json.loads((out / "metrics.json").read_text())
    assert written["ser_finetune"]["ua"] == pytest.approx(result["ser_finetune"]["ua"])
    rng = np.random.default_rng(0)
    labels = np.repeat(CLASSES, 6)
    ref_set = EmbeddingSet(rng.normal(size=(24, 4)), labels, np.tile([f"s{i}" for i in range(6)], 4))
    ref = run_evaluation(ref_set, heads=["linear"], plan=plan_folds(ref_set, "kfold", n_folds=2), out_dir=None,
                         verbose=False, class_order=CLASSES)
    ours = written["ser_finetune"]
    assert set(ref["linear"]) - {"layer_weights"} <= set(ours)
    assert set(ref["linear"]["folds"][0]) - {"fit_seconds"} <= set(ours["folds"][0])
    assert {"name", "n_folds", "class_order", "interval", "folds", "evaluation"} <= set(written["protocol"])
    assert ours["labels"] == CLASSES and np.asarray(ours["confusion"]).shape == (4, 4)
    assert written["frozen_embedding_linear"]["folds"][0]["test_speakers"] == ours["folds"][0]["test_speakers"]
    comparison = json.loads((out / "comparison.json").read_text())["frozen_embedding_linear"]
    assert comparison["n"] == 2 and "verdict" in comparison
    for where in (out, out / "fold0", out / "fold1"):
        for name in ("metrics.json", "metrics.csv", "confusion_ser_finetune.png"):
            assert (where / name).exists(), where / name
    with open(out / "fold0" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["speaker"] for r in rows} == set(ours["folds"][0]["test_speakers"])


def test_predict_py_applies_its_checkpoint(protocol_run, tmp_path):
    from datamodules.audio import load_audio, trim_silence
    from lightning_modules.embedding_module import load_embedding_module
    from utils.predicting import predict

    out, result = protocol_run
    ckpt = result["ser_finetune"]["folds"][0]["selected_checkpoint"]
    with open(out / "fold0" / "predictions.csv", newline="") as f:
        clips = [r["path"] for r in csv.DictReader(f)][:3]
    folder = tmp_path / "clips"
    folder.mkdir()
    for p in clips:
        shutil.copy(p, folder / Path(p).name)
    (folder / "corrupt.wav").write_bytes(np.random.default_rng(0).integers(1, 255, 3000, dtype=np.uint8).tobytes())
    sf.write(str(folder / "silent.wav"), np.zeros(16000, dtype="float32"), 16000, subtype="PCM_16")
    cfg = make_cfg("predict.yaml", tmp_path / "run", [f"ckpt_path={ckpt}", f"inputs={folder}"])
    summary = predict(cfg)
    GlobalHydra.instance().clear()
    with open(tmp_path / "run" / "predictions.csv", newline="") as f:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(f)}
    assert rows["corrupt.wav"]["status"] == "unreadable" and rows["silent.wav"]["status"] == "digital_silence"
    assert summary["model"]["classes"] == CLASSES
    model = load_embedding_module(ckpt)
    for p in clips:
        row = rows[Path(p).name]
        probs = np.array([float(row[f"p_{c}"]) for c in CLASSES])
        assert row["status"] == "ok" and probs.sum() == pytest.approx(1.0, abs=1e-4)
        expected = model.predict_proba([trim_silence(load_audio(p, 16000), 16000)])[0].numpy()
        np.testing.assert_allclose(probs, expected, atol=1e-5)
        assert row["predicted"] == CLASSES[int(expected.argmax())]


def test_warm_start_carries_weights_and_provenance_and_the_checkpoint_does_not_reread_it(tmp_path):
    from lightning_modules.embedding_module import load_embedding_module

    tiny = {"_target_": "tests.helpers.TinyBackbone"}
    source = SERFinetuneModule(tiny, class_names=CLASSES, freeze="none")
    for p in source.backbone.parameters():
        p.data.normal_()
    init = tmp_path / "pretrained.ckpt"
    torch.save({"state_dict": source.state_dict(), "seen_speakers": ["synthetic:spk001"]}, init)
    model = SERFinetuneModule(tiny, class_names=CLASSES, freeze="none", init_from=str(init))
    for (name, p), q in zip(model.backbone.named_parameters(), source.backbone.parameters()):
        assert torch.equal(p, q), name
    assert "synthetic:spk001" in model.seen_speakers
    ckpt = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(ckpt)
    assert ckpt["hyper_parameters"]["init_from"] is None and ckpt["warm_started_from"] == str(init)
    assert model.hparams.init_from == str(init)  # the live module is untouched
    path = tmp_path / "ser.ckpt"
    torch.save(ckpt, path)
    init.unlink()  # a moved or deleted warm-start file must not break loading (predict.py)
    loaded = load_embedding_module(str(path))
    wav = [0.1 * torch.randn(16000)]
    torch.testing.assert_close(loaded.predict_proba(wav), model.predict_proba(wav))
    assert "synthetic:spk001" in loaded.seen_speakers


def test_pretraining_runs_get_the_corpus_overrides_but_not_the_ser_data_module():
    overrides = ["experiment=ser_finetune", "data=emodb", "data.root=/x", "+data.extra=1", "data.classes=[a,b]",
                 "data._target_=x.Y", "model.freeze=all", "paths.data_dir=/d", "trainer.max_epochs=3"]
    assert finetune_protocol.data_overrides(overrides) == ["data=emodb", "data.root=/x", "+data.extra=1",
                                                           "paths.data_dir=/d"]
