"""Intra-speaker k-means pseudo-labels: never from emotion labels, right shape of batches, on schedule."""
from __future__ import annotations

import dataclasses
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchaudio
from hydra.utils import instantiate

from callbacks.intra_speaker_clustering import IntraSpeakerClustering, cluster_speakers, emotion_agreement
from lightning_modules.backbones.base import Backbone
from lightning_modules.embedding_module import EmbeddingModule
from tasks.train import train


class FeatureBackbone(Backbone):
    """Fixed log-mel mean/std features (no parameters): fast, and they carry energy/pitch cues."""

    def __init__(self, sample_rate: int = 16000, n_mels: int = 24, **_other_backbone_keys):
        # Stands in for whatever backbone config is the default: its other keys are ignored.
        super().__init__()
        self.sample_rate, self.embedding_dim, self.frame_dim = sample_rate, 2 * n_mels, n_mels
        self.mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=400, hop_length=160, n_mels=n_mels)

    def frames(self, wav: torch.Tensor) -> torch.Tensor:
        return torch.log(self.mel(wav) + 1e-6).transpose(1, 2)

    def embed(self, wav: torch.Tensor) -> torch.Tensor:
        f = self.frames(wav)
        return F.normalize(torch.cat([f.mean(1), f.std(1)], -1), dim=-1)


FEATURES = "backbone._target_=tests.test_clustering_callback.FeatureBackbone"
QUIET = ["callbacks.model_summary=null", "callbacks.progress_bar=null", "+trainer.enable_progress_bar=false",
         "data.trim_silence=false", "data.crop_seconds=1.0"]


class EmotionGuard:
    """A record whose label fields raise when read: proves label assignment never touches them."""

    LABELS = {"emotion", "emotion4", "arousal", "valence", "dominance", "extra"}

    def __init__(self, record):
        object.__setattr__(self, "_record", record)

    def __getattr__(self, name):
        if name in self.LABELS:
            raise AssertionError(f"pseudo-label assignment read record.{name}")
        return getattr(self._record, name)


@pytest.fixture
def datamodule(train_cfg_factory):
    cfg = train_cfg_factory(FEATURES, "data.n_speakers=3", "data.n_per_speaker=2", *QUIET)
    dm = instantiate(cfg.data, _convert_="all")
    dm.prepare_data()
    dm.setup("fit")
    return dm


def fake_trainer(dm, epoch: int = 0) -> SimpleNamespace:
    strategy = SimpleNamespace(all_gather=lambda t: t, broadcast=lambda obj, src=0: obj, root_device=torch.device("cpu"))
    return SimpleNamespace(datamodule=dm, strategy=strategy, world_size=1, global_rank=0, current_epoch=epoch,
                           global_step=0, loggers=[], ckpt_path=None)


def encoder() -> EmbeddingModule:
    return EmbeddingModule(FeatureBackbone())


# ----- emotion labels never reach the pseudo-labels -----
def test_label_assignment_never_reads_emotion_fields(datamodule):
    originals = list(datamodule.train_records)
    datamodule.train_records = [EmotionGuard(r) for r in originals]
    cb = IntraSpeakerClustering(n_clusters=2, monitor_emotions=False, use_gpu=False)
    cb.recluster(fake_trainer(datamodule), encoder())
    assert datamodule.pseudo_labels is not None and len(datamodule.pseudo_labels) == len(originals)
    # The guard is live: the (separate, optional) monitoring step does read emotions, and trips it.
    with pytest.raises(AssertionError, match="read record.emotion"):
        IntraSpeakerClustering(n_clusters=2, monitor_emotions=True, use_gpu=False).recluster(fake_trainer(datamodule),
                                                                                           encoder())


def test_permuting_emotions_gives_identical_pseudo_labels(datamodule):
    cb = IntraSpeakerClustering(n_clusters=3, seed=0, use_gpu=False)
    cb.recluster(fake_trainer(datamodule), encoder())
    first = datamodule.pseudo_labels.copy()
    rng = np.random.default_rng(1)
    shuffled = rng.permutation([r.emotion4 for r in datamodule.train_records])
    datamodule.train_records = [dataclasses.replace(r, emotion=e, emotion4=e)
                                for r, e in zip(datamodule.train_records, shuffled)]
    cb.recluster(fake_trainer(datamodule), encoder())
    assert np.array_equal(first, datamodule.pseudo_labels)
    assert cb.history[0].monitor["purity"] != cb.history[1].monitor["purity"]  # monitoring did see the change


# ----- batches once pseudo-labels are set -----
def test_batches_hold_positives_and_same_speaker_negatives(datamodule):
    IntraSpeakerClustering(n_clusters=2, use_gpu=False, monitor_emotions=False).recluster(fake_trainer(datamodule),
                                                                                          encoder())
    h = datamodule.hparams
    batches = list(datamodule.train_dataloader())
    assert batches
    for batch in batches:
        idx = batch["index"].numpy()
        spk, clu = batch["label"].numpy(), datamodule.pseudo_labels[idx]
        assert batch["cluster"].tolist() == clu.tolist()  # each clip's pseudo-label travels with it
        assert len(idx) == h.n_speakers * h.n_clusters_per_speaker * h.n_per_speaker
        assert len(set(spk.tolist())) == h.n_speakers
        for i in range(len(idx)):
            others = np.arange(len(idx)) != i
            assert (others & (spk == spk[i]) & (clu == clu[i])).any(), "anchor without a positive"
            assert ((spk == spk[i]) & (clu != clu[i])).any(), "anchor without a same-speaker negative"
        per_cluster = Counter(zip(spk.tolist(), clu.tolist()))
        assert set(per_cluster.values()) == {h.n_per_speaker}


# ----- schedule -----
@pytest.mark.parametrize("every, expected", [(2, [0, 2]), (0, [0])])
def test_reclustering_follows_the_schedule(train_cfg_factory, every, expected):
    cfg = train_cfg_factory(FEATURES, "model=contrastive", "model.projection={hidden_dim: 16, out_dim: 8}",
                            "callbacks=clustering", f"callbacks.intra_speaker_clustering.every_n_epochs={every}",
                            "trainer.max_epochs=3", "data.batches_per_epoch=1", "data.n_speakers=2",
                            "data.n_per_speaker=2", "+trainer.limit_val_batches=0", *QUIET)
    _, objs = train(cfg)
    cb = next(c for c in objs["trainer"].callbacks if isinstance(c, IntraSpeakerClustering))
    assert [r.epoch for r in cb.history] == expected
    assert cb.history[0].n_eligible_speakers >= 2 and cb.history[0].seconds > 0


# ----- the clustering function -----
def test_tiny_speakers_get_fewer_clusters_and_silhouette_finds_blobs():
    rng = np.random.default_rng(0)
    centers = np.eye(3, 6) * 10
    blobs = np.concatenate([c + rng.normal(0, 0.1, (8, 6)) for c in centers])  # 24 clips, 3 clear clusters
    emb = np.concatenate([blobs, rng.normal(size=(1, 6)), rng.normal(size=(3, 6))])
    speakers = ["a"] * 24 + ["solo"] + ["trio"] * 3
    labels, info = cluster_speakers(emb, speakers, k="fixed", n_clusters=4, use_gpu=False)
    assert info["solo"]["k"] == 1 and info["trio"]["k"] == 1  # 3 clips // 2 per cluster -> 1
    assert info["a"]["k"] == 4
    labels, info = cluster_speakers(emb, speakers, k="silhouette", k_range=(2, 6), use_gpu=False)
    assert info["a"]["k"] == 3
    a = labels[:24]
    assert all(len(set(a[i * 8:(i + 1) * 8])) == 1 for i in range(3))  # each blob is one cluster
    with pytest.raises(ValueError, match="k_range"):
        cluster_speakers(emb, speakers, k="silhouette", k_range=(1, 3), use_gpu=False)


def test_small_clusters_are_merged_unless_the_sampler_needs_them():
    rng = np.random.default_rng(0)
    emb = np.concatenate([rng.normal(0, 0.1, (10, 4)), [[50.0, 0, 0, 0]]])  # one far-away outlier
    labels, info = cluster_speakers(emb, ["s"] * 11, n_clusters=2, min_clips_per_cluster=2, use_gpu=False)
    assert info["s"]["k"] == 1  # the outlier's singleton cluster was merged
    labels, info = cluster_speakers(emb, ["s"] * 11, n_clusters=2, min_clips_per_cluster=2, use_gpu=False,
                                    keep_at_least=2)
    assert info["s"]["k"] == 2 and sorted(Counter(labels).values()) == [1, 10]


def test_emotion_agreement_purity_and_nmi():
    speakers = ["a"] * 4 + ["b"] * 4
    emotions = ["sad", "sad", "angry", "angry"] * 2
    perfect = emotion_agreement(speakers, [0, 0, 1, 1, 1, 1, 0, 0], emotions)
    assert perfect["purity"] == 1.0 and perfect["nmi"] == pytest.approx(1.0)
    mixed = emotion_agreement(speakers, [0, 1, 0, 1, 0, 1, 0, 1], emotions)
    assert mixed["purity"] == 0.5 and mixed["nmi"] == pytest.approx(0.0)


# ----- checkpoint state: the labels in use -----
def test_pseudo_labels_survive_a_safe_checkpoint_round_trip(datamodule, tmp_path, train_cfg_factory):
    cb = IntraSpeakerClustering(n_clusters=2, use_gpu=False, monitor_emotions=False)
    cb.recluster(fake_trainer(datamodule), encoder())
    labels = datamodule.pseudo_labels.copy()
    torch.save({"callbacks": {cb.state_key: cb.state_dict()}}, tmp_path / "ckpt.pt")
    checkpoint = torch.load(tmp_path / "ckpt.pt", weights_only=True)  # plain types only

    cfg = train_cfg_factory(FEATURES, "data.n_speakers=3", "data.n_per_speaker=2", *QUIET)
    fresh_dm = instantiate(cfg.data, _convert_="all")
    fresh_dm.prepare_data(), fresh_dm.setup("fit")
    restored = IntraSpeakerClustering(n_clusters=2, use_gpu=False, monitor_emotions=False)
    restored.recluster = lambda *a: pytest.fail("resuming must not re-cluster")
    restored.on_load_checkpoint(fake_trainer(fresh_dm), encoder(), checkpoint)
    assert np.array_equal(fresh_dm.pseudo_labels, labels) and restored.labels_epoch == 0
    assert [r.epoch for r in restored.history] == [0]

    fresh_dm.train_records = fresh_dm.train_records[1:]  # another training set: the labels do not belong to it
    with pytest.raises(ValueError, match="another set of training clips"):
        IntraSpeakerClustering(n_clusters=2, use_gpu=False).on_load_checkpoint(fake_trainer(fresh_dm), encoder(),
                                                                               checkpoint)
