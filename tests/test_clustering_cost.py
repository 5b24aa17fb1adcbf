"""Cheap re-clustering: the memory bank of training-step embeddings, k-means on a subsample, the pass's
precision, and that the cheap labels are the full pass's where clusters are clear (also under DDP)."""
from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

import callbacks.intra_speaker_clustering as clustering
from callbacks.embedding_bank import EmbeddingBank
from callbacks.intra_speaker_clustering import IntraSpeakerClustering, cluster_speakers, resolve_pass_precision
from tests.test_clustering_callback import FEATURES, QUIET
from tasks.train import train

# Fixed (parameter-free) features: the full pass gives the same vectors before every epoch, so the bank's
# crop embeddings can be compared with it; 2 speakers per batch so the DDP run's plan equals 1 process's.
BANK_RUN = [FEATURES, "model=contrastive", "model.projection={hidden_dim: 16, out_dim: 8}", "callbacks=clustering",
            "callbacks.intra_speaker_clustering.source=memory_bank", "callbacks.intra_speaker_clustering.n_clusters=2",
            "callbacks.intra_speaker_clustering.bank_max_age=1",
            "data.n_speakers=2", "data.n_per_speaker=2", "+trainer.limit_val_batches=0", "data.num_workers=0",
            "data.corpus_options.clips_per_emotion=4", *QUIET]  # 96 clips: 12 batches of 8 on 1 or 2 ranks


def clustering_callback(objs) -> IntraSpeakerClustering:
    return next(c for c in objs["trainer"].callbacks if isinstance(c, IntraSpeakerClustering))


def per_speaker_ari(a, b, speakers) -> list[float]:
    speakers = np.asarray(speakers)
    return [adjusted_rand_score(a[speakers == s], b[speakers == s]) for s in np.unique(speakers)]


def blobs(n_speakers=4, per_cluster=150, k=3, dim=8, seed=0):
    """Per speaker k well-separated blobs: clusters anyone should find."""
    rng = np.random.default_rng(seed)
    x, spk, truth = [], [], []
    for s in range(n_speakers):
        centres = rng.normal(size=(k, dim)) * 6
        for c in range(k):
            x.append(centres[c] + rng.normal(0, 0.2, (per_cluster, dim)))
            spk += [f"s{s}"] * per_cluster
            truth += [c] * per_cluster
    return np.concatenate(x).astype(np.float32), np.array(spk), np.array(truth)


class BankSpy(L.Callback):
    """Records what the training steps hand to the bank (last embedding per clip, clips per epoch) and the
    bank's state at every epoch start (after that epoch's re-clustering)."""

    def __init__(self):
        self.last_written: dict[int, torch.Tensor] = {}
        self.visited: dict[int, set] = {}
        self.bank_at_epoch_start: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def on_fit_start(self, trainer, pl_module):
        feed = pl_module.feed_embedding_bank

        def spied(batch, emb):
            epoch = pl_module.current_epoch
            for i, e in zip(batch["index"].tolist(), emb.detach()):
                self.last_written[int(i)] = torch.nn.functional.normalize(e.float(), dim=0)
                self.visited.setdefault(epoch, set()).add(int(i))
            feed(batch, emb)

        pl_module.feed_embedding_bank = spied

    def on_train_epoch_start(self, trainer, pl_module):
        bank = pl_module.embedding_bank
        self.bank_at_epoch_start[trainer.current_epoch] = (bank.values.clone(), bank.written_epoch.clone())


# ----- the bank -----
def test_bank_entries_are_refreshed_by_training_steps_not_left_from_the_first_pass(train_cfg_factory):
    cfg = train_cfg_factory(*BANK_RUN, "trainer.max_epochs=3", "+callbacks.spy._target_=tests.test_clustering_cost.BankSpy")
    _, objs = train(cfg)
    cb = clustering_callback(objs)
    spy = next(c for c in objs["trainer"].callbacks if isinstance(c, BankSpy))
    bank = cb.bank
    assert cb.history[0].n_embedded == bank.n  # the first round is a full pass
    first_values, _ = spy.bank_at_epoch_start[0]
    # before epoch 2's round: the clips trained on in epoch 1 carry epoch 1's stamp; the others (last
    # written by epoch 0 or the first pass) were too old for bank_max_age=1 and were re-embedded
    _, written = spy.bank_at_epoch_start[2]
    seen_1 = sorted(spy.visited[1])
    assert seen_1 and (written[seen_1] == 1).all()
    assert (written[sorted(set(range(bank.n)) - set(seen_1))] == 2).all()
    assert cb.history[2].n_embedded == bank.n - len(seen_1)
    seen_last = sorted(spy.visited[2])
    assert (bank.written_epoch[seen_last] == 2).all()
    for i in seen_last:  # the bank holds exactly the last training embedding of each clip...
        assert torch.allclose(bank.values[i], spy.last_written[i], atol=1e-6)
    # ...which is a crop's embedding, not the whole-clip vector the first pass stored
    assert not torch.allclose(bank.values[seen_last], first_values[seen_last], atol=1e-3)
    assert cb.history[1].n_embedded == 0 and [r.source for r in cb.history] == ["memory_bank"] * 3


def test_bank_labels_agree_with_the_full_pass_where_clusters_are_clear(train_cfg_factory):
    # two emotions per speaker, far apart in energy and pitch: k=2 has one right answer
    cfg = train_cfg_factory(*BANK_RUN, "trainer.max_epochs=2", "data.corpus_options.emotions=[neutral,angry]",
                            "data.corpus_options.clips_per_emotion=5")
    _, objs = train(cfg)
    cb, dm = clustering_callback(objs), objs["datamodule"]
    assert cb.history[1].n_embedded == 0  # epoch 1's labels came from the bank alone
    full = cb.embed(objs["trainer"], objs["model"], dm.train_records)
    speakers = [r.speaker for r in dm.train_records]
    emotions = np.array([r.emotion4 for r in dm.train_records])
    full_labels, _ = cluster_speakers(full, speakers, "fixed", 2, seed=cb.seed, use_gpu=False, keep_at_least=2)
    assert np.mean(per_speaker_ari(full_labels, emotions, speakers)) >= 0.9  # the premise: clusters are clear
    # crops of a clip embed a little differently from the whole clip: a clip near the border may switch
    aris = per_speaker_ari(cb.labels, full_labels, speakers)
    assert np.mean(aris) >= 0.75 and sum(a == 1.0 for a in aris) >= len(aris) / 2, aris
    assert np.mean(per_speaker_ari(cb.labels, emotions, speakers)) >= 0.75


def test_bank_write_keeps_the_last_row_of_a_repeated_clip_and_skips_non_finite_rows():
    bank = EmbeddingBank(4)
    bank.write(torch.tensor([1, 2, 1]), torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 2.0]]), epoch=3)
    assert torch.equal(bank.values[1], torch.tensor([0.0, 1.0])) and int(bank.written_epoch[1]) == 3
    bank.write(torch.tensor([3]), torch.tensor([[float("nan"), 1.0]]), epoch=3)
    assert bank.stale(3, 0).tolist() == [0, 3]  # never written / not finite
    assert bank.stale(5, 1).tolist() == [0, 1, 2, 3]  # written at epoch 3: too old for epoch 5 with max age 1
    with pytest.raises(ValueError, match="out of range"):
        bank.write(torch.tensor([4]), torch.zeros(1, 2), epoch=0)
    restored = EmbeddingBank.from_state_dict(bank.state_dict())
    assert torch.equal(restored.values, bank.values) and torch.equal(restored.written_epoch, bank.written_epoch)


def test_memory_bank_needs_a_module_that_feeds_it(train_cfg_factory):
    cfg = train_cfg_factory(FEATURES, "callbacks=clustering", "callbacks.intra_speaker_clustering.source=memory_bank",
                            "trainer.max_epochs=1", *QUIET)
    with pytest.raises(TypeError, match="source=full"):
        train(cfg)


def test_bank_survives_a_safe_checkpoint_round_trip(train_cfg_factory):
    cfg = train_cfg_factory(*BANK_RUN, "trainer.max_epochs=1")
    train(cfg)
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    state = next(v for k, v in ckpt["callbacks"].items() if "IntraSpeakerClustering" in k)
    cb = IntraSpeakerClustering(source="memory_bank")
    cb.load_state_dict(state)
    assert cb.bank is not None and (cb.bank.written_epoch == 0).all() and torch.isfinite(cb.bank.values).all()


def test_a_resumed_run_keeps_feeding_the_restored_bank(train_cfg_factory):
    """Resumed from epoch 0's checkpoint: epoch 1's steps must reach the bank the callback clusters from,
    or every clip looks stale before epoch 2 and is re-embedded."""
    first = train_cfg_factory(*BANK_RUN, "trainer.max_epochs=1", out="first")
    train(first)
    ckpt = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    resumed = train_cfg_factory(*BANK_RUN, "trainer.max_epochs=3", f"ckpt_path={ckpt}", out="resumed")
    _, objs = train(resumed)
    cb = clustering_callback(objs)
    assert [r.epoch for r in cb.history] == [0, 1, 2]
    assert cb.history[2].n_embedded < cb.bank.n


# ----- k-means on a subsample -----
def test_subsample_kmeans_assigns_every_clip_and_finds_the_full_partition():
    x, spk, truth = blobs()
    full, _ = cluster_speakers(x, spk, "fixed", 3, seed=0, use_gpu=False)
    sub, info = cluster_speakers(x, spk, "fixed", 3, seed=0, use_gpu=False, max_points_per_speaker=60)
    assert len(sub) == len(x) and set(np.unique(sub)) == {0, 1, 2}  # every clip assigned
    assert all(v["k"] == 3 and v["n"] == 450 for v in info.values())
    assert min(per_speaker_ari(sub, full, spk)) == 1.0 and min(per_speaker_ari(sub, truth, spk)) == 1.0
    sil, sil_info = cluster_speakers(x, spk, "silhouette", k_range=(2, 5), seed=0, use_gpu=False,
                                     max_points_per_speaker=60)
    assert all(v["k"] == 3 for v in sil_info.values()) and min(per_speaker_ari(sil, truth, spk)) == 1.0


def test_subsample_really_bounds_the_fit(monkeypatch):
    """faiss subsamples inside train(); its max_points_per_centroid is what bounds the fit."""
    x, spk, _ = blobs(n_speakers=1)
    seen = []
    original = clustering.faiss.Kmeans.__init__

    def spy(self, d, k, **kwargs):
        seen.append(kwargs["max_points_per_centroid"] * k)
        original(self, d, k, **kwargs)

    monkeypatch.setattr(clustering.faiss.Kmeans, "__init__", spy)
    cluster_speakers(x, spk, "fixed", 3, seed=0, use_gpu=False, max_points_per_speaker=60)
    assert seen == [60]
    with pytest.raises(ValueError, match="max_points_per_speaker"):
        cluster_speakers(x, spk, "fixed", 3, max_points_per_speaker=1, use_gpu=False)


# ----- precision of the pass -----
def test_pass_precision_auto_is_bf16_only_on_cuda(monkeypatch):
    assert resolve_pass_precision("auto", torch.device("cpu")) == "trainer"
    assert resolve_pass_precision("bf16", torch.device("cpu")) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_pass_precision("auto", torch.device("cuda")) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_pass_precision("auto", torch.device("cuda")) == "trainer"
    with pytest.raises(ValueError, match="pass_precision"):
        IntraSpeakerClustering(pass_precision="fp8")


# ----- DDP -----
def test_ddp_bank_and_labels_equal_one_process(train_cfg_factory):
    """2 CPU processes: every rank's steps reach the bank (gathered), so rank 0's checkpoint holds the bank
    and labels one process computes over the same plan (features do not depend on the weights)."""
    states = {}
    for name, extra in (("single", []), ("ddp", ["trainer=ddp_sim"])):
        cfg = train_cfg_factory(*BANK_RUN, "trainer.max_epochs=2", *extra, out=name)
        train(cfg)
        ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
        states[name] = next(v for k, v in ckpt["callbacks"].items() if "IntraSpeakerClustering" in k)
    single, ddp = states["single"], states["ddp"]
    assert ddp["rounds"][1]["n_embedded"] == single["rounds"][1]["n_embedded"] < len(single["labels"])
    assert torch.equal(ddp["bank"]["written_epoch"], single["bank"]["written_epoch"])
    assert torch.allclose(ddp["bank"]["values"], single["bank"]["values"], atol=1e-5)
    assert ddp["labels"] == single["labels"]
