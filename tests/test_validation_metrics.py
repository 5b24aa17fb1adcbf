"""Validation on held-out speakers: the verification EER (evaluate.py's) and the speaker-independent emotion probe."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from evaluation.eer import compute_eer, pairwise_trials
from evaluation.metrics import unweighted_accuracy
from lightning_modules.embedding_module import EmbeddingModule
from lightning_modules.validation_metrics import speaker_independent_probe, unweighted_weighted_accuracy
from tests.helpers import TinyBackbone


def test_validation_scores_with_the_offline_eer_and_ua():
    """One EER and one UA: val/eer is evaluation.eer.compute_eer of the same trials (ties included), val/probe_ua
    is evaluation.metrics.unweighted_accuracy of the probe's predictions."""
    rng = np.random.default_rng(0)
    speakers, emotions = _speakers(n_speakers=4)
    emb = np.round(np.eye(4)[speakers] + rng.normal(0, 0.8, (len(speakers), 4)), 1)  # rounded: tied scores
    emb = np.c_[emb, np.eye(4)[emotions] * 2].astype(np.float32)
    module = EmbeddingModule(TinyBackbone(), probe_folds=4)
    out = module.validation_metrics({"embedding": emb, "speaker": speakers, "emotion": emotions,
                                     "index": np.arange(len(emb))})
    scores, labels, _, _ = pairwise_trials(emb, speakers, max_pairs=module.hparams.val_max_pairs, seed=0)
    assert len(np.unique(scores)) < len(scores) and out["val/eer"] == compute_eer(scores, labels)
    pred = speaker_independent_probe(emb, emotions, speakers, 4)
    assert out["val/probe_ua"] == unweighted_accuracy(emotions, pred)


def _speakers(n_speakers=6, per_class=5, n_classes=4):
    speakers = np.repeat(np.arange(n_speakers), per_class * n_classes)
    emotions = np.tile(np.repeat(np.arange(n_classes), per_class), n_speakers)
    return speakers, emotions


def test_probe_predicts_each_speaker_without_seeing_it():
    """Emotion coded differently by every speaker: memorising a speaker would score ~100%, a probe that
    never saw the speaker is at chance; emotion shared across speakers: the probe reads it."""
    rng = np.random.default_rng(0)
    speakers, emotions = _speakers()
    private_codes = rng.normal(size=(6, 4, 16)) * 3
    x_private = private_codes[speakers, emotions] + rng.normal(size=(len(speakers), 16))
    shared = rng.normal(size=(4, 16)) * 3
    x_shared = shared[emotions] + rng.normal(size=(len(speakers), 16))
    ua_private, _ = unweighted_weighted_accuracy(speaker_independent_probe(x_private, emotions, speakers), emotions)
    ua_shared, wa_shared = unweighted_weighted_accuracy(speaker_independent_probe(x_shared, emotions, speakers), emotions)
    assert ua_private < 0.45 and ua_shared > 0.9 and wa_shared > 0.9

    # A speaker's own labels never reach the probe that predicts it: permuting them changes nothing there.
    pred = speaker_independent_probe(x_shared, emotions, speakers)
    permuted = emotions.copy()
    mine = speakers == 2
    permuted[mine] = rng.permutation(permuted[mine])
    assert np.array_equal(speaker_independent_probe(x_shared, permuted, speakers)[mine], pred[mine])


def test_ua_averages_recall_over_the_classes_present():
    target = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 0, 0, 0, 1, 2, 3])  # class 3 never occurs: a wrong guess, not a class of its own
    ua, wa = unweighted_weighted_accuracy(pred, target)
    assert ua == pytest.approx((1 + 0.5 + 0.5) / 3) and wa == pytest.approx(6 / 8)


def test_validation_metrics_leave_out_unlabelled_clips_and_count_them(caplog):
    rng = np.random.default_rng(1)
    speakers, emotions = _speakers(n_speakers=4)
    x = np.eye(4)[emotions] * 3 + rng.normal(size=(len(speakers), 4)) * 0.3
    emotions = emotions.copy()
    emotions[::7] = -1  # no label
    module = EmbeddingModule(TinyBackbone(), probe_folds=4)
    rows = {"embedding": np.c_[x, np.zeros((len(x), 4))].astype(np.float32), "speaker": speakers, "emotion": emotions,
            "index": np.arange(len(x))}
    with caplog.at_level("INFO", logger="lightning_modules.embedding_module"):
        out = module.validation_metrics(rows)
    assert out["val/probe_clips"] == (emotions >= 0).sum() < len(emotions)
    assert out["val/probe_ua"] > 0.9 and 0 <= out["val/eer"] <= 1
    assert any(f"{int((emotions < 0).sum())} of {len(emotions)} validation clips have no label" in r.getMessage()
               for r in caplog.records)


def test_probe_schedule_follows_probe_every_n_epochs():
    module = EmbeddingModule(TinyBackbone(), probe_every_n_epochs=2)
    due = []
    for epoch in range(4):
        module._trainer = SimpleNamespace(current_epoch=epoch)
        due.append(module.probe_due())
    assert due == [False, True, False, True]  # epochs N-1, 2N-1, ... like ModelCheckpoint(every_n_epochs=N)
    with pytest.raises(ValueError, match="probe_every_n_epochs"):
        EmbeddingModule(TinyBackbone(), probe_every_n_epochs=-1)


def test_non_finite_validation_embeddings_are_a_clear_error():
    module = EmbeddingModule(TinyBackbone())
    speakers, emotions = _speakers(n_speakers=2)
    emb = np.ones((len(speakers), 8), np.float32)
    emb[3] = np.nan
    out = module.validation_metrics({"embedding": emb, "speaker": speakers, "emotion": emotions,
                                     "index": np.arange(len(emb))})
    assert out == {"error": "validation at epoch 0: the encoder gave non-finite embeddings for 1 of 40 validation "
                            "clips (dataset indices [3]); its weights are finite"}
