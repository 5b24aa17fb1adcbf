"""Intra-speaker cluster contrastive objectives: pair masks, the masked loss, gradient reversal, the
speaker head, and that training on synthetic speech teaches emotion without labels (gathering across
DDP ranks: tests/test_train.py::test_ddp_simulated_on_two_cpu_processes)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import SupConLoss

from lightning_modules.contrastive import contrastive_pairs, random_subcrops
from lightning_modules.gradient_reversal import dann_scale, grad_reverse
from tests.helpers import QUIET, TINY_BACKBONE as TINY
from tasks.train import train


# ----- pairs and loss -----
def test_pairs_positive_same_cluster_negative_same_speaker_other_cluster():
    spk = torch.tensor([0, 0, 0, 0, 1, 1])
    clu = torch.tensor([0, 0, 1, 1, 0, 1])
    a1, p, a2, n = contrastive_pairs(spk, clu, "same_speaker")
    pos = set(zip(a1.tolist(), p.tolist()))
    neg = set(zip(a2.tolist(), n.tolist()))
    assert pos == {(0, 1), (1, 0), (2, 3), (3, 2)}  # clip 4 and 5 are alone in their cluster: no positive
    assert all(spk[a] == spk[b] and clu[a] != clu[b] for a, b in neg)
    assert (0, 2) in neg and (4, 5) in neg and (0, 4) not in neg  # other speakers are not negatives
    _, _, a2_all, n_all = contrastive_pairs(spk, clu, "all")
    neg_all = set(zip(a2_all.tolist(), n_all.tolist()))
    assert neg < neg_all and (0, 4) in neg_all and (0, 5) in neg_all
    assert not any(a == b for a, b in pos | neg_all)
    with pytest.raises(ValueError, match="negatives"):
        contrastive_pairs(spk, clu, "others")


def test_supcon_with_pairs_ignores_other_speakers_in_the_denominator():
    """The masked loss equals SupCon computed over the anchor's own speaker only."""
    torch.manual_seed(0)
    emb = F.normalize(torch.randn(8, 5), dim=1)
    spk = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    clu = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    t = 0.2
    got = SupConLoss(temperature=t)(emb, indices_tuple=contrastive_pairs(spk, clu, "same_speaker"))
    sim = emb @ emb.T / t
    per_anchor = []
    for i in range(8):
        same = (spk == spk[i]) & (torch.arange(8) != i)
        pos = same & (clu == clu[i])
        log_prob = sim[i] - torch.logsumexp(sim[i][same], 0)
        per_anchor.append(-log_prob[pos].mean())
    assert torch.allclose(got, torch.stack(per_anchor).mean(), atol=1e-5)
    everyone = SupConLoss(temperature=t)(emb, indices_tuple=contrastive_pairs(spk, clu, "all"))
    assert not torch.allclose(got, everyone)


def test_two_crops_are_views_of_the_same_clip():
    wav = torch.arange(20, dtype=torch.float32).repeat(3, 1) + torch.tensor([[0.0], [100.0], [200.0]])
    v1, v2 = random_subcrops(wav, 0.5)
    assert v1.shape == v2.shape == (3, 10)
    for row in range(3):  # contiguous slices of their own row
        for v in (v1, v2):
            assert torch.equal(v[row], wav[row, int(v[row, 0] - wav[row, 0]):][:10])


def test_gradient_reversal_negates_and_scales():
    x = torch.randn(4, 3, requires_grad=True)
    (grad_reverse(x, 0.5) * 2).sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, -1.0))
    assert dann_scale(0.0) == 0.0 and 0.99 < dann_scale(1.0) < 1.0


# ----- end to end -----
def test_views_read_clusters_from_the_batch_and_pair_on_the_original_speaker():
    """Speed perturbation makes a sped-up copy a new speaker CLASS (batch "label"), but its clusters are
    its own speaker's: pairs must be built on the original speaker (batch "speaker"), and the pseudo-labels
    come with the batch (no trainer or datamodule is attached here)."""
    from lightning_modules.contrastive import ClusterContrastiveModule
    from tests.helpers import TinyBackbone

    module = ClusterContrastiveModule(TinyBackbone())
    n_speakers = 2
    speaker = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    speed_index = torch.tensor([0, 1, 0, 2, 1, 0, 0, 2])  # which speed factor each crop got
    batch = {"wav": torch.randn(8, 16000), "speaker": speaker, "label": speaker + speed_index * n_speakers,
             "cluster": torch.tensor([0, 0, 1, 1, 0, 0, 1, 1]), "index": torch.arange(8)}
    wav, speakers, classes, clusters = module.views(batch)
    assert torch.equal(speakers, speaker) and torch.equal(classes, batch["label"])
    assert torch.equal(clusters, batch["cluster"])
    a1, p, a2, n = contrastive_pairs(speakers, clusters)
    assert len(a1) == 8 and len(a2) == 16  # every clip has its positive and two same-speaker negatives
    with pytest.raises(RuntimeError, match="callbacks=clustering"):
        module.views({k: v for k, v in batch.items() if k != "cluster"})


def test_mtl_speaker_head_is_trained_and_reloads(train_cfg_factory, tmp_path):
    """The AAM-softmax head is built from the datamodule, actually learns (W moves, the head's speaker
    accuracy on the training clips rises) and comes back from the checkpoint. experiment=contrastive_mtl as
    shipped (pretrained GE2E encoder at lr 1e-4, head at head_lr), 12 steps on the tiny corpus.
    (Before the head had its own learning rate it moved ~1e-4 per step and stayed at chance.)"""
    from lightning_modules.clip_embedding import embed_records
    from lightning_modules.contrastive_mtl import ContrastiveMTLModule
    from tests.helpers import RecordSpeakerHead
    from tasks.train import build_model

    cfg = train_cfg_factory("experiment=contrastive_mtl", "trainer.max_epochs=3", "data.batches_per_epoch=4",
                            "+callbacks.head._target_=tests.helpers.RecordSpeakerHead", *QUIET)
    start = build_model(cfg)  # the pretrained encoder the run starts from
    metrics, objs = train(cfg)
    model, dm = objs["model"], objs["datamodule"]
    assert model.speaker_loss.W.shape == (model.backbone.embedding_dim, dm.num_speakers)
    head = next(cb for cb in objs["trainer"].callbacks if isinstance(cb, RecordSpeakerHead))
    w_end = model.speaker_loss.W.detach().cpu()
    moved = float((w_end - head.initial_w).norm() / head.initial_w.norm())
    labels = torch.as_tensor(dm.train_labels)

    def accuracy(module, w) -> float:
        emb = torch.as_tensor(embed_records(module, dm, dm.train_records))
        return float(((F.normalize(emb, dim=1) @ F.normalize(w, dim=0)).argmax(1) == labels).float().mean())

    before, after = accuracy(start, head.initial_w), accuracy(model, w_end)
    assert moved > 0.05, f"the speaker head barely moved ({moved:.3f} of its norm)"
    assert after > before + 0.15, f"speaker accuracy of the head did not rise: {before:.2f} -> {after:.2f}"

    reloaded = ContrastiveMTLModule.load_from_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
    assert torch.equal(reloaded.speaker_loss.W, model.speaker_loss.W.cpu())


def _probe_ua(model, dm) -> float:
    """Speaker-independent linear probe: logistic regression, GroupKFold over all speakers (every clip is
    predicted by a probe that never saw its speaker), balanced accuracy (UA)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from lightning_modules.clip_embedding import embed_records

    records = dm.train_records + dm.val_records
    x = embed_records(model, dm, records)
    y = np.array([r.emotion4 for r in records])
    groups = np.array([r.speaker for r in records])
    pred = cross_val_predict(make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)), x, y, groups=groups,
                             cv=GroupKFold(4))
    return float(balanced_accuracy_score(y, pred))


@pytest.mark.slow
def test_contrastive_training_raises_emotion_probe_on_unseen_speakers(train_cfg_factory):
    """No emotion label is read in training; the probe (labels used only here) must still improve.

    Random-init tiny encoder, k=4 clusters per speaker, same-speaker negatives, 75 steps. Measured with
    seeds 0..3: UA 0.625->0.646, 0.594->0.677, 0.542->0.615, 0.630->0.693 (this test uses seed 1).
    A reversed loss sign drops it (0.594 -> 0.479), so broken learning fails here. At this length,
    random within-speaker clusters of the same sizes raise it too (0.594 -> 0.688): this test guards the
    training machinery; docs/contrastive.md reports the longer clusters-vs-random comparison.
    """
    from hydra.utils import instantiate

    from tasks.train import build_model

    cfg = train_cfg_factory(TINY, "model=contrastive", "callbacks=clustering", "data.corpus_options.n_speakers=8",
                            "data.corpus_options.clips_per_emotion=6", "data.val_speakers=3", "data.n_speakers=5",
                            "data.n_clusters_per_speaker=4", "data.n_per_speaker=2", "data.batches_per_epoch=15", "+trainer.limit_val_batches=0",
                            "callbacks.intra_speaker_clustering.n_clusters=4", "callbacks.intra_speaker_clustering.every_n_epochs=2",
                            "model.temperature=0.3",
                            "model.lr=0.003", "model.scheduler=none", "trainer.max_epochs=5", "seed=1", *QUIET)
    torch.manual_seed(0)
    dm = instantiate(cfg.data, _convert_="all")
    dm.prepare_data(), dm.setup("fit")
    import lightning as L

    L.seed_everything(cfg.seed)
    start = _probe_ua(build_model(cfg), dm)  # train() re-seeds, so it starts from these very weights
    metrics, objs = train(cfg)
    end = _probe_ua(objs["model"], objs["datamodule"])
    assert end > start + 0.02, f"emotion probe UA did not rise: {start:.3f} -> {end:.3f}"
