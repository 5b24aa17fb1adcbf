"""Train-then-evaluate, .npz re-fit, and the evaluate config's error paths, on the synthetic corpus."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import open_dict

from evaluation.embeddings_io import load_npz
from tests.conftest import ROOT, TINY_CORPUS, make_cfg
from utils.config_checks import ConfigError
from utils.evaluating import evaluate
from utils.training import train


def _eval_cfg(tmp_path: Path, data_dir: Path, *overrides: str):
    return make_cfg("evaluate.yaml", tmp_path, [o for o in TINY_CORPUS if not o.startswith("data.n_")] +
                    ["eval.n_folds=2", "eval.heads=[svm,sad_first,linear,detection]"] + list(overrides), data_dir)


def test_train_then_evaluate_checkpoint_writes_metrics(train_cfg_factory, tmp_path, synthetic_cache):
    cfg = train_cfg_factory("trainer.max_epochs=1", "data.batches_per_epoch=2")
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    out = tmp_path / "eval"
    results = evaluate(_eval_cfg(out, synthetic_cache, f"ckpt_path={ckpt}"))
    metrics = json.loads((out / "metrics.json").read_text())
    for head in ("svm", "sad_first", "linear", "detection"):
        assert 0.0 <= metrics[head]["ua"] <= 1.0 and len(metrics[head]["folds"]) == 2
    assert (out / "confusion_svm.png").exists() and (out / "verification_boxplot.png").exists()
    emb = load_npz(out / "embeddings.npz")
    assert emb.embeddings.shape[1] == 256 and set(emb.classes) == {"angry", "happy", "neutral", "sad"}
    # every clip of the corpus is embedded exactly once, in manifest order
    assert len(emb) == 8 * 4 * 2 and len(set(emb.utt_id.tolist())) == len(emb)
    assert results["svm"]["ua"] == metrics["svm"]["ua"]


def test_refit_from_npz_matches_and_cache_is_reused(tmp_path, synthetic_cache):
    out1 = tmp_path / "a"
    r1 = evaluate(_eval_cfg(out1, synthetic_cache, "eval.heads=[linear]"))
    cache_files = list((out1 / "logs" / "embedding_cache").glob("*.npy"))
    assert len(cache_files) == 1
    mtime = cache_files[0].stat().st_mtime_ns
    # same backbone and corpus again: embeddings come from the cache, not re-extracted
    cfg = _eval_cfg(tmp_path / "b", synthetic_cache, "eval.heads=[linear]")
    with open_dict(cfg):
        cfg.paths.log_dir = str(out1 / "logs")
    evaluate(cfg)
    assert cache_files[0].stat().st_mtime_ns == mtime
    r3 = evaluate(_eval_cfg(tmp_path / "c", synthetic_cache, "eval.heads=[linear]", f"embeddings={out1 / 'embeddings.npz'}"))
    assert r3["linear"]["ua"] == pytest.approx(r1["linear"]["ua"])


def test_npz_with_mismatched_lengths_is_a_clear_error(tmp_path, synthetic_cache):
    bad = tmp_path / "bad.npz"
    np.savez(bad, embeddings=np.zeros((4, 3), np.float32), emotion=np.array(["a", "b", "a"]), speaker=np.array(["s"] * 4))
    with pytest.raises(ValueError, match="differ in length"):
        evaluate(_eval_cfg(tmp_path / "o", synthetic_cache, f"embeddings={bad}"))


def test_checkpoint_and_embeddings_together_is_refused(tmp_path, synthetic_cache):
    with pytest.raises(ConfigError, match="either ckpt_path"):
        evaluate(_eval_cfg(tmp_path / "o", synthetic_cache, "ckpt_path=x.ckpt", "embeddings=y.npz"))


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


def test_official_split_names_map_to_train_and_test_and_others_are_left_out():
    from datamodules.records import ClipRecord
    from utils.evaluating import NO_LABEL, records_to_set

    recs = [ClipRecord(path=f"{i}.wav", speaker=f"msp:{i % 3}", corpus="msp_podcast", utt_id=str(i), emotion4="sad",
                       split=s) for i, s in enumerate(["Train", "Train", "Development", "Test1", "Test1", "Test2"])]
    emb = np.eye(6, dtype=np.float32)
    s = records_to_set(recs, emb, "emotion4", {"train": ["Train"], "test": ["Test1"]})
    assert s.split.tolist()[:2] == ["train", "train"] and s.split.tolist()[3:5] == ["test", "test"]
    assert s.emotion.tolist() == ["sad", "sad", NO_LABEL, "sad", "sad", NO_LABEL]  # Development, Test2 left out
    assert records_to_set(recs, emb, "emotion4", None).split is None
