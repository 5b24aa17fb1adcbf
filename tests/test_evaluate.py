"""Train-then-evaluate, .npz re-fit, embedding sources, provenance, the data block and the paired
comparison command, on the synthetic corpus (and a fixture ESD tree for a corpus with a manifest)."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from evaluation.embeddings_io import load_npz, save_npz
from evaluation.provenance import TransductiveEvaluationError
from tests.conftest import ROOT, TINY_CORPUS, make_cfg
from common.errors import ConfigError
from tasks.evaluate import evaluate
from tasks.train import train

EVAL_CORPUS = [o for o in TINY_CORPUS if not o.startswith("data.n_")]


def _eval_cfg(tmp_path: Path, data_dir: Path, *overrides: str):
    return make_cfg("evaluate.yaml", tmp_path, EVAL_CORPUS + ["eval.n_folds=2", "eval.repeats=1",
                    "eval.heads=[svm,sad_first,linear,detection]"] + list(overrides), data_dir)


@pytest.fixture(scope="module")
def trained_ckpt(tmp_path_factory, synthetic_cache) -> Path:
    """One real tiny checkpoint from tasks.train.train, shared by the tests of this file."""
    out = tmp_path_factory.mktemp("train")
    cfg = make_cfg("train.yaml", out, TINY_CORPUS + ["trainer.max_epochs=1", "data.batches_per_epoch=2",
                                                     "callbacks.model_summary=null"], synthetic_cache)
    train(cfg)
    GlobalHydra.instance().clear()
    return Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"


def _craft(ckpt: Path, out: Path, seen: list[str] | None, corpora: dict | None = None) -> Path:
    """A copy of a real checkpoint with the provenance keys set (or removed when seen is None)."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    for key in ("seen_speakers", "seen_corpora"):
        state.pop(key, None)
    if seen is not None:
        state["seen_speakers"] = sorted(seen)
        state["seen_corpora"] = corpora or {}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out)
    return out


def _corpus_speakers(tmp_path: Path, data_dir: Path) -> list[str]:
    """Speaker ids of the tiny synthetic corpus (as records carry them)."""
    from datamodules.speaker_datamodule import load_corpus_records
    from hydra.utils import instantiate

    cfg = _eval_cfg(tmp_path, data_dir, "backbone=deeptalk")
    dm = instantiate(cfg.data, _convert_="all")
    h = dm.hparams
    return sorted({r.speaker for r in load_corpus_records(h.corpus, h.root, h.cache_dir, h.corpus_options)})


def test_checkpoint_embeddings_are_the_checkpoints_own(trained_ckpt, tmp_path, synthetic_cache):
    from hydra.utils import instantiate

    from datamodules.speaker_datamodule import load_corpus_records
    from lightning_modules.checkpoints import load_embedding_module
    from lightning_modules.embedding_module import EmbeddingModule

    ckpt = _craft(trained_ckpt, tmp_path / "clean.ckpt", seen=["elsewhere:1"])
    out = tmp_path / "eval"
    cfg = _eval_cfg(out, synthetic_cache, f"ckpt_path={ckpt}")
    results = evaluate(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    for head in ("svm", "sad_first", "linear", "detection"):
        assert len(metrics[head]["folds"]) == 2
    assert (out / "confusion_svm.png").exists() and (out / "verification_boxplot.png").exists()
    emb = load_npz(out / "embeddings.npz")
    assert len(emb) == 8 * 4 * 2 and len(set(emb.utt_id.tolist())) == len(emb)  # every clip once
    assert results["svm"]["ua"] == metrics["svm"]["ua"]
    # the stored embeddings are what the checkpoint's backbone gives for these clips ...
    dm = instantiate(cfg.data, _convert_="all")
    h = dm.hparams
    records = load_corpus_records(h.corpus, h.root, h.cache_dir, h.corpus_options)[:4]
    batch = next(iter(dm.utterance_loader(records, batch_size=4)))
    module = load_embedding_module(str(ckpt))
    with torch.no_grad():
        mine = module.predict_step(batch, 0)["embeddings"].numpy()
        torch.manual_seed(0)
        untrained = EmbeddingModule(backbone=dict(module.hparams.backbone)).eval().predict_step(batch, 0)["embeddings"].numpy()
    stored = emb.embeddings[[emb.utt_id.tolist().index(r.utt_id) for r in records]]
    np.testing.assert_allclose(stored, mine, atol=1e-5)
    # ... and not what an untrained backbone of the same architecture gives
    assert np.abs(stored - untrained).max() > 1e-3
    # the backbone config came from the checkpoint (data.sample_rate follows it)
    assert cfg.backbone["_target_"] == module.hparams.backbone["_target_"]


def test_a_source_is_required_and_only_one(tmp_path, synthetic_cache):
    with pytest.raises(ConfigError, match=r"exactly one embedding source and got none.*ckpt_path=.*backbone=ge2e\|deeptalk"
                                          r".*embeddings="):
        evaluate(_eval_cfg(tmp_path / "o", synthetic_cache))
    with pytest.raises(ConfigError, match="either ckpt_path"):
        evaluate(_eval_cfg(tmp_path / "o", synthetic_cache, "ckpt_path=x.ckpt", "embeddings=y.npz"))
    with pytest.raises(ConfigError, match="got 2: ckpt_path, backbone"):
        evaluate(_eval_cfg(tmp_path / "o", synthetic_cache, "ckpt_path=x.ckpt", "backbone=ge2e"))


def test_readme_commands_compose(tmp_path):
    cfg = make_cfg("evaluate.yaml", tmp_path, ["backbone=ge2e", "data=emodb", "data.root=/data/emodb"])
    assert cfg.backbone._target_.endswith("GE2EBackbone") and cfg.data.sample_rate == 16000
    assert cfg.eval.repeats == 5 and cfg.eval.svm.C == 1000.0 and cfg.eval.svm.gamma == 0.1


def _own_cache(tmp_path: Path, synthetic_cache: Path) -> tuple[Path, str]:
    """(a data folder of the test's own, whose clip feature cache starts empty; the shared synthetic corpus in it)."""
    return tmp_path / "data", f"data.root={synthetic_cache / 'synthetic'}"


def test_refit_from_npz_matches_and_cache_is_reused(tmp_path, synthetic_cache, caplog):
    data_dir, corpus = _own_cache(tmp_path, synthetic_cache)
    out1 = tmp_path / "a"
    r1 = evaluate(_eval_cfg(out1, data_dir, corpus, "backbone=deeptalk", "eval.heads=[linear]"))
    cache_files = list((data_dir / "clip_features").glob("*.npz"))  # the clip feature cache crossval.py reads too
    assert len(cache_files) == 1
    mtime = cache_files[0].stat().st_mtime_ns
    # same backbone and corpus again: embeddings come from the cache, not re-extracted
    with caplog.at_level(logging.INFO, logger="tasks.evaluate"):
        evaluate(_eval_cfg(tmp_path / "b", data_dir, corpus, "backbone=deeptalk", "eval.heads=[linear]"))
    assert cache_files[0].stat().st_mtime_ns == mtime
    assert f"embeddings: reusing cache {cache_files[0]}" in caplog.text
    assert np.array_equal(load_npz(tmp_path / "b" / "embeddings.npz").embeddings, load_npz(out1 / "embeddings.npz").embeddings)
    r3 = evaluate(_eval_cfg(tmp_path / "c", synthetic_cache, "eval.heads=[linear]", f"embeddings={out1 / 'embeddings.npz'}"))
    assert r3["linear"]["ua"] == pytest.approx(r1["linear"]["ua"])
    # the npz carried the provenance and the corpus report of its extraction
    assert r3["protocol"]["provenance"]["source"] == "backbone" and r3["protocol"]["evaluation"] == "speaker-independent"
    assert r3["data"]["num_clips"] == r1["data"]["num_clips"] == 64


def test_each_clip_is_embedded_once_whatever_features_are_asked(tmp_path, synthetic_cache, monkeypatch):
    """features=embedding, then layer_stats, then auto of one encoder (scripts/feature_choice.py): the encoder
    computes each clip's embedding once and its layer statistics once; auto is assembled from the two."""
    from lightning_modules.backbones.base import Backbone

    data_dir, corpus = _own_cache(tmp_path, synthetic_cache)
    clips = {"embed_utterances": 0, "layer_stats_utterances": 0}
    for name in clips:
        real = getattr(Backbone, name)

        def counted(self, wavs, *a, _real=real, _name=name, **k):
            clips[_name] += len(wavs)
            return _real(self, wavs, *a, **k)

        monkeypatch.setattr(Backbone, name, counted)
    runs = {}
    for features, heads in (("embedding", "[linear]"), ("layer_stats", "[linear]"), ("auto", "[auto]")):
        runs[features] = tmp_path / features
        res = evaluate(_eval_cfg(runs[features], data_dir, corpus, "backbone=deeptalk", f"features={features}",
                                 f"eval.heads={heads}", "eval.export.heads=[]", "eval.verification_analysis=false",
                                 "eval.auto.inner_folds=2", "eval.auto.linear_C=[1.0]", "eval.auto.svm_C=[10.0]",
                                 "eval.auto.weighted_layers_C=[1.0]"))
        assert res["protocol"]["features"]["output"] == features
        GlobalHydra.instance().clear()
    assert clips == {"embed_utterances": 64, "layer_stats_utterances": 64}  # the old cache: 128 and 128
    sets = {f: load_npz(d / "embeddings.npz") for f, d in runs.items()}
    assert sets["auto"].utt_id.tolist() == sets["embedding"].utt_id.tolist() == sets["layer_stats"].utt_id.tolist()
    assert np.array_equal(sets["auto"].embeddings, np.concatenate([sets["embedding"].embeddings,
                                                                   sets["layer_stats"].embeddings], 1))
    assert [s.features["output"] for s in sets.values()] == ["embedding", "layer_stats", "auto"]
    assert len([p for p in (data_dir / "clip_features").iterdir() if p.suffix == ".npz"]) == 2  # embedding, layer_stats


def test_another_precision_or_other_weights_are_extracted_again(trained_ckpt, tmp_path, synthetic_cache):
    """A bf16 predict loop never reads fp32 features back (the precision is part of the key), nor a checkpoint
    the features of other weights."""
    data_dir, corpus = _own_cache(tmp_path, synthetic_cache)
    cache = data_dir / "clip_features"
    common = ["eval.heads=[linear]", "eval.export.heads=[]", "eval.verification_analysis=false"]
    evaluate(_eval_cfg(tmp_path / "fp32", data_dir, corpus, "backbone=deeptalk", *common))
    assert len(list(cache.glob("*.npz"))) == 1
    evaluate(_eval_cfg(tmp_path / "bf16", data_dir, corpus, "backbone=deeptalk", "trainer.precision=bf16-mixed", *common))
    assert len(list(cache.glob("*.npz"))) == 2
    fp32, bf16 = (load_npz(tmp_path / d / "embeddings.npz").embeddings for d in ("fp32", "bf16"))
    assert not np.array_equal(fp32, bf16) and np.abs(fp32 - bf16).max() < 0.1  # computed again, at bf16
    ckpt = _craft(trained_ckpt, tmp_path / "a.ckpt", seen=["elsewhere:1"])
    evaluate(_eval_cfg(tmp_path / "ck", data_dir, corpus, f"ckpt_path={ckpt}", *common))
    assert len(list(cache.glob("*.npz"))) == 3
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    name = next(k for k, v in state["state_dict"].items() if k.startswith("backbone.") and v.is_floating_point())
    state["state_dict"][name] = state["state_dict"][name] + 0.01
    torch.save(state, tmp_path / "b.ckpt")
    evaluate(_eval_cfg(tmp_path / "ck2", data_dir, corpus, f"ckpt_path={tmp_path / 'b.ckpt'}", *common))
    assert len(list(cache.glob("*.npz"))) == 4
    # the same weights under another file name (and mtime): read back
    (tmp_path / "copy.ckpt").write_bytes(ckpt.read_bytes())
    evaluate(_eval_cfg(tmp_path / "ck3", data_dir, corpus, f"ckpt_path={tmp_path / 'copy.ckpt'}", *common))
    assert len(list(cache.glob("*.npz"))) == 4


def test_metrics_json_data_block(tmp_path, synthetic_cache):
    out = tmp_path / "o"
    evaluate(_eval_cfg(out, synthetic_cache, "backbone=deeptalk", "eval.heads=[linear]", "eval.classes=[angry,sad]",
                       "eval.verification_analysis=false"))
    data = json.loads((out / "metrics.json").read_text())["data"]
    assert data["corpus"] == "synthetic" and data["num_clips"] == 64 and data["num_speakers"] == 8
    left = data["left_out_by_evaluation"]
    assert left["outside_classes"] == {"happy": 16, "neutral": 16} and data["n_rows_evaluated"] == 32


def test_checkpoint_that_saw_the_test_speakers_is_refused(trained_ckpt, tmp_path, synthetic_cache, capsys):
    speakers = _corpus_speakers(tmp_path / "s", synthetic_cache)
    ckpt = _craft(trained_ckpt, tmp_path / "seen.ckpt", seen=speakers[:3] + ["other:1"],
                  corpora={"synthetic": str(synthetic_cache)})
    with pytest.raises(TransductiveEvaluationError, match=r"3 of the 8 test speakers.*crossval.py.*allow_transductive"):
        evaluate(_eval_cfg(tmp_path / "refused", synthetic_cache, f"ckpt_path={ckpt}", "eval.heads=[linear]"))
    out = tmp_path / "allowed"
    res = evaluate(_eval_cfg(out, synthetic_cache, f"ckpt_path={ckpt}", "eval.heads=[linear]",
                             "eval.allow_transductive=true", "eval.verification_analysis=false"))
    assert res["protocol"]["transductive"] is True and res["protocol"]["evaluation"] == "TRANSDUCTIVE"
    assert "[TRANSDUCTIVE]" in capsys.readouterr().out
    assert "TRANSDUCTIVE" in (out / "metrics.csv").read_text()
    # the extraction's npz carries the provenance: a later re-fit from it is refused as well
    emb = load_npz(out / "embeddings.npz")
    assert emb.provenance["seen_speakers"] == sorted(speakers[:3] + ["other:1"])
    with pytest.raises(TransductiveEvaluationError, match="3 of the 8 test speakers"):
        evaluate(_eval_cfg(tmp_path / "refit", synthetic_cache, f"embeddings={out / 'embeddings.npz'}",
                           "eval.heads=[linear]"))


def test_train_then_evaluate_on_the_same_corpus_is_refused(trained_ckpt, tmp_path, synthetic_cache):
    """End to end: the checkpoint records the speakers it trained and validated on (lightning_modules
    side); evaluating it on the corpus it was trained on folds over those speakers."""
    recorded = torch.load(trained_ckpt, map_location="cpu", weights_only=True)
    assert recorded["seen_speakers"] and all(s.startswith("synthetic:") for s in recorded["seen_speakers"])
    with pytest.raises(TransductiveEvaluationError, match=r"of the 8 test speakers"):
        evaluate(_eval_cfg(tmp_path / "o", synthetic_cache, f"ckpt_path={trained_ckpt}", "eval.heads=[linear]"))


def test_checkpoint_without_provenance_is_labelled_unknown(trained_ckpt, tmp_path, synthetic_cache, caplog):
    ckpt = _craft(trained_ckpt, tmp_path / "old.ckpt", seen=None)
    with caplog.at_level(logging.WARNING, logger="evaluation.provenance"):
        res = evaluate(_eval_cfg(tmp_path / "o", synthetic_cache, f"ckpt_path={ckpt}", "eval.heads=[linear]",
                                 "eval.verification_analysis=false"))
    assert "records no 'seen_speakers'" in caplog.text
    assert res["protocol"]["evaluation"] == "provenance unknown" and res["protocol"]["provenance"]["known"] is False


def test_compare_two_embedding_sets_on_identical_folds(tmp_path, synthetic_cache, capsys):
    a_dir = tmp_path / "a"
    evaluate(_eval_cfg(a_dir, synthetic_cache, "backbone=deeptalk", "eval.heads=[linear]", "eval.verification_analysis=false"))
    a = load_npz(a_dir / "embeddings.npz")
    # B: the same clips in another order, embeddings with the emotion signal destroyed
    perm = np.random.default_rng(0).permutation(len(a))
    b = a.subset(perm)
    b.embeddings = np.random.default_rng(1).normal(size=b.embeddings.shape).astype(np.float32)
    save_npz(b, tmp_path / "b.npz")
    out = tmp_path / "cmp"
    res = evaluate(_eval_cfg(out, synthetic_cache, f"embeddings={a_dir / 'embeddings.npz'}", f"eval.compare_to={tmp_path / 'b.npz'}",
                             "eval.heads=[linear]", "eval.n_folds=4", "eval.repeats=3", "eval.verification_analysis=false"))
    comparison = json.loads((out / "comparison.json").read_text())
    ua = comparison["heads"]["linear"]["ua"]
    assert comparison["n_folds"] == 12 and ua["n"] == 12 and len(ua["per_fold_b"]) == 12
    assert ua["per_fold_a"] == [f["ua"] for f in res["linear"]["folds"]]
    b_metrics = json.loads((out / "compare_to" / "metrics.json").read_text())
    assert [f["test_speakers"] for f in b_metrics["protocol"]["folds"]] == [f["test_speakers"] for f in res["protocol"]["folds"]]
    assert ua["mean_difference"] == pytest.approx(res["linear"]["ua"] - b_metrics["linear"]["ua"])
    assert {"wilcoxon", "bootstrap", "corrected_t", "verdict"} <= set(ua)
    assert "paired comparison on identical folds" in capsys.readouterr().out
    # sets that do not hold the same clips are refused
    save_npz(a.subset(np.arange(len(a) - 3)), tmp_path / "short.npz")
    with pytest.raises(ConfigError, match=r"does not hold the same clips: 3 clip\(s\) only in the evaluated set"):
        evaluate(_eval_cfg(tmp_path / "x", synthetic_cache, f"embeddings={a_dir / 'embeddings.npz'}",
                           f"eval.compare_to={tmp_path / 'short.npz'}", "eval.heads=[linear]"))


def test_npz_with_mismatched_lengths_is_a_clear_error(tmp_path, synthetic_cache):
    bad = tmp_path / "bad.npz"
    np.savez(bad, embeddings=np.zeros((4, 3), np.float32), emotion=np.array(["a", "b", "a"]), speaker=np.array(["s"] * 4))
    with pytest.raises(ValueError, match="differ in length"):
        evaluate(_eval_cfg(tmp_path / "o", synthetic_cache, f"embeddings={bad}"))


def test_extraction_under_simulated_ddp(trained_ckpt, tmp_path, synthetic_cache):
    ckpt = _craft(trained_ckpt, tmp_path / "clean.ckpt", seen=["elsewhere:1"])
    single = tmp_path / "single"
    evaluate(_eval_cfg(single, synthetic_cache, f"ckpt_path={ckpt}", "eval.heads=[linear]",
                       "eval.verification_analysis=false"))
    ddp = tmp_path / "ddp"
    data_dir, corpus = _own_cache(tmp_path, synthetic_cache)  # extracted again, not read from the single run's cache
    evaluate(_eval_cfg(ddp, data_dir, corpus, f"ckpt_path={ckpt}", "trainer=ddp_sim", "eval.heads=[linear]",
                       "eval.verification_analysis=false"))
    assert len(list((data_dir / "clip_features").glob("*.npz"))) == 1  # written once, by rank 0
    a, b = load_npz(single / "embeddings.npz"), load_npz(ddp / "embeddings.npz")
    assert b.utt_id.tolist() == a.utt_id.tolist()
    np.testing.assert_allclose(b.embeddings, a.embeddings, atol=1e-5)


def test_sweep_runs_one_job_per_value(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", "model.lr=0.001,0.002", "debug=fdr",
                           *TINY_CORPUS, f"paths.log_dir={tmp_path}", f"paths.data_dir={tmp_path}/data",
                           "callbacks.model_summary=null"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p.parent for p in tmp_path.glob("debug/multiruns/*/*/config_resolved.yaml"))
    assert len(runs) == 2
    lrs = sorted(float(next(l for l in (r / "config_resolved.yaml").read_text().splitlines() if l.strip().startswith("lr:")).split(":")[1]) for r in runs)
    assert lrs == [0.001, 0.002]


def test_official_split_names_map_to_train_and_test_and_others_are_unused():
    from datamodules.records import ClipRecord
    from tasks.evaluate import records_to_set

    recs = [ClipRecord(path=f"{i}.wav", speaker=f"msp:{i % 3}", corpus="msp_podcast", utt_id=str(i), emotion4="sad",
                       split=s) for i, s in enumerate(["Train", "Train", "Development", "Test1", "Test1", "Test2"])]
    emb = np.eye(6, dtype=np.float32)
    s = records_to_set(recs, emb, "emotion4", {"train": ["Train"], "test": ["Test1"]})
    assert s.split.tolist() == ["train", "train", "unused", "test", "test", "unused"]
    assert s.emotion.tolist() == ["sad"] * 6  # labels kept: k-fold may use these clips
    assert records_to_set(recs, emb, "emotion4", None).split is None


def test_a_head_is_added_by_configuration_alone(tmp_path, synthetic_cache):
    """A head class named by its import path, with its own settings block: no pipeline code names it."""
    cfg = _eval_cfg(tmp_path, synthetic_cache, "backbone=ge2e", "eval.heads=[linear,tests.helpers.MajorityHead]",
                    "+eval.majority={label: sad}", "eval.export.heads=[]", "eval.verification_analysis=false")
    res = evaluate(cfg)
    GlobalHydra.instance().clear()
    toy = res["tests.helpers.MajorityHead"]
    assert res["protocol"]["head_kwargs"]["tests.helpers.MajorityHead"] == {"label": "sad"}
    assert toy["ua"] == pytest.approx(0.25) and res["linear"]["ua"] > 0.4
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "tests.helpers.MajorityHead" in metrics and (tmp_path / "confusion_tests.helpers.MajorityHead.png").exists()
