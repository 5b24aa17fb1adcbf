"""Pseudo-labels for contrastive training: k-means clusters of each speaker's own embeddings.

Why (Ulgen et al., ICASSP 2024): within one speaker, speaker embeddings of unlabeled speech fall
into clusters that follow emotion, so a speaker's clusters can stand in for emotion classes.

Label assignment sees only (embeddings, speaker ids): `cluster_speakers` takes arrays, never
records, so emotion labels cannot leak into the pseudo-labels. `emotion_agreement` (purity / NMI
against emotion labels) is MONITORING ONLY and runs after the labels are fixed.

Under DDP every rank embeds a disjoint shard of the training clips, the shards are all-gathered,
rank 0 runs k-means and broadcasts the labels, so all ranks hold identical pseudo-labels.

The labels in use are part of the callback's checkpoint state, so a resumed run continues with the
very labels (and therefore batches) the uninterrupted run had, instead of re-clustering.

Cost (the issue's goal: <= 5% of an epoch). `source: full` re-embeds every training clip with the
encoder before each round. `source: memory_bank` (the default of configs/callbacks/clustering.yaml)
clusters the embeddings the training steps computed anyway (callbacks/embedding_bank.py) and
re-embeds only the clips no training step visited in the last `bank_max_age` epochs; the first round
is a full pass. The pass itself runs under inference mode, in bf16 on CUDA (`pass_precision: auto`;
not on CPUs, where it measured slower even with AMX), sharded across DDP ranks. k-means can be fitted
on a subsample of each speaker (`max_points_per_speaker`) with every clip then assigned to the nearest
centroid. BENCHMARKS.md ("Re-clustering cost") has the measured shares and the agreement with the
full pass on EmoDB.

With an image-capable logger (W&B) each round also logs a 2-D PCA plot of the embeddings by speaker
and by within-speaker cluster (`log_plot`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import faiss
import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from sklearn.metrics import normalized_mutual_info_score, silhouette_score

from callbacks.embedding_bank import EmbeddingBank
from lightning_modules.clip_embedding import embed_records
from common.cpu_features import cpu_flags, has_native_bf16

log = logging.getLogger(__name__)

K_MODES = ("fixed", "silhouette")
SOURCES = ("full", "memory_bank")
PASS_PRECISIONS = ("auto", "trainer", "bf16")


# ----- k-means per speaker (pure functions of embeddings and speaker ids) -----
def use_faiss_gpu(use_gpu: bool | str) -> bool:
    if use_gpu == "auto":
        return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
    if use_gpu and not (hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0):
        raise RuntimeError("use_gpu=True but this faiss build sees no GPU (faiss-cpu installed?); use use_gpu='auto'")
    return bool(use_gpu)


def kmeans(x: np.ndarray, k: int, niter: int = 25, nredo: int = 3, seed: int = 0, gpu: bool = False,
           init: str = "kmeans++", max_points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """faiss k-means of the rows of x: (assignments (N,), centroids (k, D)).

    max_points: fit the centroids on at most this many rows (faiss's own seeded subsample), then assign
    every row to its nearest centroid: the cost of a round stops growing with clips per speaker."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not 1 <= k <= len(x):
        raise ValueError(f"kmeans: k={k} must be between 1 and the number of points ({len(x)})")
    if k == 1:
        return np.zeros(len(x), dtype=np.int64), x.mean(0, keepdims=True)
    if max_points is not None and int(max_points) < k:
        raise ValueError(f"kmeans: max_points={max_points} must be at least k={k}")
    per_centroid = 1 << 20 if max_points is None else max(1, int(max_points) // k)
    params: dict[str, Any] = {"niter": niter, "nredo": nredo, "seed": seed, "verbose": False,
                              "min_points_per_centroid": 1, "max_points_per_centroid": per_centroid, "gpu": gpu}
    if init == "kmeans++" and hasattr(faiss, "ClusteringInitMethod_KMEANS_PLUS_PLUS"):
        params["init_method"] = faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS
    elif init not in ("random", "kmeans++"):
        raise ValueError(f"kmeans init={init!r}: expected 'random' or 'kmeans++'")
    km = faiss.Kmeans(x.shape[1], k, **params)
    km.train(x)
    _, assign = km.index.search(x, 1)
    return assign[:, 0].astype(np.int64), km.centroids


def merge_small_clusters(x: np.ndarray, assign: np.ndarray, min_size: int, keep_at_least: int = 1) -> np.ndarray:
    """Move members of clusters smaller than min_size to the nearest remaining centroid (while more than
    `keep_at_least` clusters remain); relabel 0..k'-1."""
    assign = assign.copy()
    while True:
        ids, counts = np.unique(assign, return_counts=True)
        if len(ids) <= max(1, keep_at_least) or counts.min() >= min_size:
            break
        small = ids[np.argmin(counts)]
        keep = ids[ids != small]
        centroids = np.stack([x[assign == c].mean(0) for c in keep])
        members = np.flatnonzero(assign == small)
        d = ((x[members, None, :] - centroids[None]) ** 2).sum(-1)
        assign[members] = keep[d.argmin(1)]
    _, relabelled = np.unique(assign, return_inverse=True)
    return relabelled.astype(np.int64)


def max_clusters_for(n: int, min_clips_per_cluster: int) -> int:
    """Most clusters a speaker with n clips can have (1 for tiny speakers: one cluster, not sampled)."""
    return max(1, n // max(1, min_clips_per_cluster))


def cluster_one_speaker(x: np.ndarray, k: str, n_clusters: int, k_range: Sequence[int], niter: int, nredo: int,
                        seed: int, min_clips_per_cluster: int, gpu: bool, init: str,
                        keep_at_least: int = 1, max_points: int | None = None) -> tuple[np.ndarray, dict]:
    n = len(x)
    sub = None if max_points is None or n <= int(max_points) else int(max_points)
    k_max = max_clusters_for(n, min_clips_per_cluster)
    info: dict = {"n": n}
    if k == "fixed":
        k_use = min(int(n_clusters), k_max)
        assign, _ = (kmeans(x, k_use, niter, nredo, seed, gpu, init, max(sub, k_use) if sub else None) if k_use > 1
                     else (np.zeros(n, np.int64), None))
    else:
        lo, hi = int(k_range[0]), int(k_range[1])
        candidates = [c for c in range(lo, hi + 1) if c <= k_max and c <= n - 1]
        best: tuple[float, np.ndarray] | None = None
        scores = {}
        for c in candidates:
            a, _ = kmeans(x, c, niter, nredo, seed, gpu, init, max(sub, c) if sub else None)
            if len(np.unique(a)) < 2:
                continue
            s = float(silhouette_score(x, a, sample_size=sub, random_state=seed if sub else None))
            scores[c] = round(s, 4)
            if best is None or s > best[0]:
                best = (s, a)
        assign = best[1] if best is not None else np.zeros(n, np.int64)
        info["silhouette"] = scores
    if len(np.unique(assign)) > 1:
        assign = merge_small_clusters(x, assign, min_clips_per_cluster, keep_at_least)
    assign = np.unique(assign, return_inverse=True)[1].astype(np.int64)  # ids 0..k-1 (k-means may leave one empty)
    info["k"] = int(len(np.unique(assign)))
    return assign, info


def cluster_speakers(embeddings: np.ndarray, speakers: Sequence, k: str = "fixed", n_clusters: int = 2,
                     k_range: Sequence[int] = (2, 5), niter: int = 25, nredo: int = 3, seed: int = 0,
                     min_clips_per_cluster: int = 2, use_gpu: bool | str = "auto", init: str = "kmeans++",
                     keep_at_least: int = 1, max_points_per_speaker: int | None = None,
                     threads: int | None = 1) -> tuple[np.ndarray, dict]:
    """Cluster ids (within speaker) for every row, and per-speaker info ({speaker: {n, k, ...}}).

    keep_at_least: merging of small clusters stops at this many clusters (the sampler needs C per speaker).
    max_points_per_speaker: fit each speaker's k-means (and score silhouettes) on at most this many of
        its clips, seeded; every clip is then assigned to its nearest centroid (None = all clips).
    threads: faiss's OpenMP threads while clustering (None = leave as is). One speaker's problem is tiny
        (tens to thousands of points): threads only add barriers, and on busy cores they cost 10-40x
        (measured 0.07 s single-threaded vs 1-3 s with 2 threads, 24 speakers x 48 clips, loaded 2-core box).

    Takes only embeddings and speaker ids: pseudo-labels cannot depend on emotion labels.
    """
    if k not in K_MODES:
        raise ValueError(f"clustering k={k!r}: expected one of {K_MODES}")
    if len(k_range) != 2 or int(k_range[0]) < 2 or int(k_range[1]) < int(k_range[0]):
        raise ValueError(f"clustering k_range={list(k_range)}: expected (low, high) with 2 <= low <= high")
    if k == "fixed" and int(n_clusters) < 1:
        raise ValueError(f"clustering n_clusters={n_clusters}: expected >= 1")
    if max_points_per_speaker is not None and int(max_points_per_speaker) < 2:
        raise ValueError(f"clustering max_points_per_speaker={max_points_per_speaker}: expected >= 2 or null (all)")
    embeddings = np.asarray(embeddings, dtype=np.float32)
    speakers = np.asarray(speakers)
    if embeddings.ndim != 2 or len(embeddings) != len(speakers):
        raise ValueError(f"cluster_speakers: embeddings {embeddings.shape} and {len(speakers)} speaker ids do not match")
    if not np.all(np.isfinite(embeddings)):
        raise ValueError(f"cluster_speakers: {int((~np.isfinite(embeddings)).any(1).sum())} embedding rows are not finite")
    gpu = use_faiss_gpu(use_gpu)
    labels = np.zeros(len(speakers), dtype=np.int64)
    info: dict = {}
    previous_threads = faiss.omp_get_max_threads()
    if threads is not None:
        faiss.omp_set_num_threads(max(1, int(threads)))
    try:
        for s_i, spk in enumerate(sorted(set(speakers.tolist()))):
            rows = np.flatnonzero(speakers == spk)
            assign, spk_info = cluster_one_speaker(embeddings[rows], k, n_clusters, k_range, niter, nredo, seed + s_i,
                                                   min_clips_per_cluster, gpu, init, keep_at_least,
                                                   max_points_per_speaker)
            labels[rows] = assign
            info[spk] = spk_info
    finally:
        faiss.omp_set_num_threads(previous_threads)
    return labels, info


# ----- monitoring only: agreement of clusters with emotion labels (never feeds back) -----
def emotion_agreement(speakers: Sequence, clusters: Sequence[int], emotions: Sequence) -> dict[str, float]:
    """Clip-weighted purity and NMI of within-speaker clusters against emotion labels.

    purity: share of clips whose cluster's majority emotion is their own (computed per speaker);
    nmi: mean over speakers (weighted by clips) of sklearn's NMI; speakers with one cluster or one
    emotion are left out of the NMI (it is undefined there).
    """
    speakers, clusters, emotions = np.asarray(speakers), np.asarray(clusters), np.asarray(emotions, dtype=object)
    if not (len(speakers) == len(clusters) == len(emotions)):
        raise ValueError("emotion_agreement: speakers, clusters and emotions differ in length")
    keep = np.array([e is not None for e in emotions])
    speakers, clusters, emotions = speakers[keep], clusters[keep], emotions[keep].astype(str)
    hits, nmi_sum, nmi_w = 0, 0.0, 0
    for spk in np.unique(speakers):
        m = speakers == spk
        c, e = clusters[m], emotions[m]
        for cl in np.unique(c):
            _, counts = np.unique(e[c == cl], return_counts=True)
            hits += int(counts.max())
        if len(np.unique(c)) > 1 and len(np.unique(e)) > 1:
            nmi_sum += m.sum() * normalized_mutual_info_score(e, c)
            nmi_w += int(m.sum())
    n = len(speakers)
    return {"purity": float(hits / n) if n else float("nan"), "nmi": float(nmi_sum / nmi_w) if nmi_w else float("nan"),
            "n_labelled": int(n)}


def record_emotions(records: Sequence) -> list | None:
    """Four-class label (else the corpus label) of each record for monitoring; None if no record has one."""
    out = [getattr(r, "emotion4", None) or getattr(r, "emotion", None) for r in records]
    return out if any(e is not None for e in out) else None


@dataclass
class ClusteringRound:
    epoch: int
    seconds: float
    embed_seconds: float
    kmeans_seconds: float
    mean_k: float
    n_eligible_speakers: int
    k_per_speaker: dict = field(default_factory=dict)
    monitor: dict = field(default_factory=dict)
    source: str = "full"
    n_embedded: int = -1  # clips run through the encoder this round (all of them for source=full)
    plot_seconds: float = 0.0  # the logged plot (outside `seconds`: only with an image logger)


def records_fingerprint(records: Sequence) -> str:
    """Identifies a list of training clips (corpus + utterance ids, in order): labels belong to one list."""
    h = hashlib.sha1()
    for r in records:
        h.update(f"{r.corpus}/{r.utt_id}\n".encode())
    return h.hexdigest()


def resolve_pass_precision(pass_precision: str, device: torch.device) -> str:
    """"bf16" or "trainer" for the re-embedding pass. auto: bf16 on a CUDA device that has it, the trainer's
    precision elsewhere: on CPUs bf16 is emulated without AMX / AVX-512 BF16 (several times slower,
    common/cpu_features), and even with AMX the GE2E pass measured 1.5-1.9x slower in bf16 (BENCHMARKS.md)."""
    if pass_precision not in PASS_PRECISIONS:
        raise ValueError(f"IntraSpeakerClustering pass_precision={pass_precision!r}: expected one of {PASS_PRECISIONS}")
    if pass_precision != "auto":
        if pass_precision == "bf16" and device.type == "cpu" and has_native_bf16(cpu_flags()) is False:
            log.warning("clustering pass_precision=bf16 on a CPU without native bf16: emulated, several times slower")
        return pass_precision
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "trainer"


class IntraSpeakerClustering(Callback):
    """Re-cluster each training speaker's clips every `every_n_epochs` epochs (and before the first).

    The datamodule must offer `train_records`, `utterance_loader(records, batch_size)` and
    `set_pseudo_labels(clusters)` (datamodules.speaker_datamodule.SpeakerDataModule does).
    every_n_epochs: 0 clusters once, at fit start.
    k: "fixed" (n_clusters per speaker) or "silhouette" (best silhouette over k_range).
    min_clips_per_cluster: speakers get at most n_clips // this many clusters, and k-means clusters
        smaller than it are merged into their nearest neighbour.
    monitor_emotions: after the labels are set, log purity/NMI against the records' emotion labels
        (if any). Purely diagnostic: it never changes the labels.
    source: "full" (re-embed every training clip each round) or "memory_bank" (the training steps'
        own embeddings; only clips not written in the last `bank_max_age` epochs are re-embedded).
        memory_bank needs a module with `feed_embedding_bank` (the contrastive objectives).
    bank_in_checkpoint: keep the bank in checkpoints (a resume then clusters exactly as the uninterrupted
        run; N x D floats: turn off for very large corpora, a resume then re-embeds the clips once).
    pass_precision: "auto" (bf16 on CUDA), "trainer" (the trainer's precision) or "bf16".
    inference_mode: run the pass under torch.inference_mode (else no_grad).
    max_points_per_speaker: fit k-means on at most this many clips of a speaker, assign the rest.
    log_plot: with an image-capable logger (W&B), log a PCA plot of every round (plot_max_points clips).
    """

    def __init__(self, every_n_epochs: int = 1, k: str = "fixed", n_clusters: int = 2, k_range: Sequence[int] = (2, 5),
                 niter: int = 25, nredo: int = 3, seed: int = 0, min_clips_per_cluster: int = 2,
                 use_gpu: bool | str = "auto", init: str = "kmeans++", batch_size: int | None = None,
                 monitor_emotions: bool = True, source: str = "full", bank_max_age: int = 1,
                 bank_in_checkpoint: bool = True, pass_precision: str = "auto", inference_mode: bool = True,
                 max_points_per_speaker: int | None = None, log_plot: bool = True, plot_max_points: int = 2000):
        if k not in K_MODES:
            raise ValueError(f"IntraSpeakerClustering k={k!r}: expected one of {K_MODES}")
        if int(every_n_epochs) < 0:
            raise ValueError(f"IntraSpeakerClustering every_n_epochs={every_n_epochs}: expected >= 0")
        if source not in SOURCES:
            raise ValueError(f"IntraSpeakerClustering source={source!r}: expected one of {SOURCES}")
        if int(bank_max_age) < 0:
            raise ValueError(f"IntraSpeakerClustering bank_max_age={bank_max_age}: expected >= 0 (epochs)")
        if pass_precision not in PASS_PRECISIONS:
            raise ValueError(f"IntraSpeakerClustering pass_precision={pass_precision!r}: expected one of {PASS_PRECISIONS}")
        if max_points_per_speaker is not None and int(max_points_per_speaker) < 2:
            raise ValueError(f"IntraSpeakerClustering max_points_per_speaker={max_points_per_speaker}: "
                             "expected >= 2 or null (all clips)")
        self.every_n_epochs, self.k, self.n_clusters, self.k_range = int(every_n_epochs), k, int(n_clusters), tuple(k_range)
        self.niter, self.nredo, self.seed, self.min_clips_per_cluster = int(niter), int(nredo), int(seed), int(min_clips_per_cluster)
        self.use_gpu, self.init, self.batch_size, self.monitor_emotions = use_gpu, init, batch_size, bool(monitor_emotions)
        self.source, self.bank_max_age, self.bank_in_checkpoint = source, int(bank_max_age), bool(bank_in_checkpoint)
        self.pass_precision, self.inference_mode = pass_precision, bool(inference_mode)
        self.max_points_per_speaker = None if max_points_per_speaker is None else int(max_points_per_speaker)
        self.log_plot, self.plot_max_points = bool(log_plot), int(plot_max_points)
        self.history: list[ClusteringRound] = []
        self.labels: np.ndarray | None = None  # the pseudo-labels in use
        self.labels_epoch: int | None = None  # the epoch they were computed for
        self._fingerprint: str | None = None
        self.bank: EmbeddingBank | None = None

    # ----- schedule -----
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # The first labels must exist when the train dataloader is built (its sampler and length depend on
        # them), which Lightning does after restoring a checkpoint but before on_fit_start. Resuming, they
        # come from the checkpoint (on_load_checkpoint); otherwise the datamodule asks for them when it
        # builds its loader (`pseudo_label_source`), so a resumed run never clusters with initial weights.
        if stage != "fit":
            return
        if self.source == "memory_bank":
            if not hasattr(pl_module, "feed_embedding_bank"):
                raise TypeError(f"IntraSpeakerClustering source=memory_bank needs a module that writes its training "
                                f"embeddings (feed_embedding_bank, the contrastive objectives); {type(pl_module).__name__} "
                                "does not: use source=full")
            self._attach_bank(trainer, pl_module)
        dm = trainer.datamodule
        if hasattr(dm, "pseudo_label_source"):
            dm.pseudo_label_source = lambda: self.recluster(trainer, pl_module)
        else:
            pl_module.to(trainer.strategy.root_device)
            self.recluster(trainer, pl_module)

    def _attach_bank(self, trainer: L.Trainer, pl_module: L.LightningModule) -> EmbeddingBank:
        n = len(trainer.datamodule.train_records)
        if self.bank is None or self.bank.n != n:
            self.bank = EmbeddingBank(n)
        pl_module.embedding_bank = self.bank
        return self.bank

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.source == "memory_bank":  # after any checkpoint restore: the module feeds the bank in use
            self._attach_bank(trainer, pl_module)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if getattr(pl_module, "embedding_bank", None) is self.bank:
            pl_module.embedding_bank = None  # the module outlives the fit (evaluation, export): no more writes

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        state = (checkpoint.get("callbacks") or {}).get(self.state_key)
        self.load_state_dict(state or {})
        dm = trainer.datamodule
        if self.labels is None:
            log.warning("clustering: the checkpoint holds no pseudo-labels (written before they were saved); "
                        "clustering with its weights")
            self.recluster(trainer, pl_module)
            return
        fingerprint = records_fingerprint(dm.train_records)
        if len(self.labels) != len(dm.train_records) or self._fingerprint != fingerprint:
            raise ValueError(f"clustering: the checkpoint's {len(self.labels)} pseudo-labels belong to another set of "
                             f"training clips than this run's {len(dm.train_records)} (data.* changed since it was "
                             "written); resume with the same data config, or warm-start with model.init_from=<ckpt>")
        if self.source == "memory_bank":
            if self.bank is None or self.bank.n != len(dm.train_records):
                self.bank = None  # not in the checkpoint: the next round re-embeds what it needs
            self._attach_bank(trainer, pl_module)
        dm.set_pseudo_labels(self.labels)
        log.info("clustering: resumed with the checkpoint's pseudo-labels (computed before epoch %s)", self.labels_epoch)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if self.labels_epoch == epoch:  # computed for this epoch already (fit start, or restored mid-epoch)
            return
        if self.every_n_epochs and epoch > 0 and epoch % self.every_n_epochs == 0:
            # The epoch's batch plan is drawn when its iterator starts, after this hook.
            self.recluster(trainer, pl_module)

    # ----- one round -----
    def _pass_context(self, trainer: L.Trainer, pl_module: L.LightningModule):
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode() if self.inference_mode else torch.no_grad())
        device = next((p.device for p in pl_module.parameters()), trainer.strategy.root_device)
        if resolve_pass_precision(self.pass_precision, device) == "bf16":
            stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16))
        return stack

    def embed(self, trainer: L.Trainer, pl_module: L.LightningModule, records: Sequence) -> np.ndarray:
        """The full encoder pass over `records` (sharded across DDP ranks, gathered on all)."""
        strategy = trainer.strategy
        with self._pass_context(trainer, pl_module):
            return embed_records(pl_module, trainer.datamodule, records, self.batch_size, trainer.global_rank,
                                 trainer.world_size, all_gather=lambda t: strategy.all_gather(t))

    def embeddings_for_round(self, trainer: L.Trainer, pl_module: L.LightningModule, records: Sequence) -> tuple[np.ndarray, int]:
        """(N, D) embeddings to cluster and how many clips went through the encoder for them."""
        if self.source == "full":
            return self.embed(trainer, pl_module, records), len(records)
        bank = self.bank if self.bank is not None and self.bank.n == len(records) else self._attach_bank(trainer, pl_module)
        epoch = int(trainer.current_epoch)
        stale = bank.stale(epoch, self.bank_max_age)
        if len(stale):
            bank.write(stale, self.embed(trainer, pl_module, [records[i] for i in stale]), epoch)
        still = bank.stale(epoch, self.bank_max_age)
        if len(still):
            raise ValueError(f"IntraSpeakerClustering: {len(still)} training clips have no finite embedding (e.g. "
                             f"{[records[i].path for i in still[:3]]}): check the audio or the encoder's weights")
        return bank.array().copy(), int(len(stale))

    def recluster(self, trainer: L.Trainer, pl_module: L.LightningModule) -> ClusteringRound:
        dm = trainer.datamodule
        for attr in ("train_records", "utterance_loader", "set_pseudo_labels"):
            if not hasattr(dm, attr):
                raise TypeError(f"IntraSpeakerClustering needs a datamodule with `{attr}` (SpeakerDataModule); "
                                f"got {type(dm).__name__}")
        if getattr(dm, "hparams", {}).get("format", "files") != "files":
            raise ValueError("IntraSpeakerClustering needs data.format=files: the P x C x K cluster batches come from "
                             "the PK sampler, which streamed shards do not use")
        records = dm.train_records
        if not records:
            raise ValueError("IntraSpeakerClustering: the datamodule has no training records (was setup() called?)")
        t0 = time.perf_counter()
        strategy = trainer.strategy
        world, rank = trainer.world_size, trainer.global_rank
        emb, n_embedded = self.embeddings_for_round(trainer, pl_module, records)
        t_embed = time.perf_counter() - t0
        speakers = [r.speaker for r in records]  # the only record field label assignment reads
        hp = getattr(dm, "hparams", {})
        n_sub, n_per_batch = int(hp.get("n_clusters_per_speaker", 2)), int(hp.get("n_speakers", 1))
        labels, info = None, None
        if rank == 0:
            labels, info = cluster_speakers(emb, speakers, self.k, self.n_clusters, self.k_range, self.niter,
                                            self.nredo, self.seed, self.min_clips_per_cluster, self.use_gpu, self.init,
                                            keep_at_least=n_sub, max_points_per_speaker=self.max_points_per_speaker)
        if world > 1:
            labels, info = strategy.broadcast((labels, info), src=0)
        t_total = time.perf_counter() - t0

        ks = [v["k"] for v in info.values()]
        eligible = sum(k >= n_sub for k in ks)
        if eligible < n_per_batch:
            raise ValueError(f"IntraSpeakerClustering: only {eligible} of {len(ks)} training speakers got at least "
                             f"data.n_clusters_per_speaker={n_sub} clusters, but batches need data.n_speakers="
                             f"{n_per_batch}; lower one of them or raise callbacks.intra_speaker_clustering.n_clusters")
        dm.set_pseudo_labels(labels)
        self.labels, self.labels_epoch = np.asarray(labels, dtype=np.int64), int(trainer.current_epoch)
        self._fingerprint = records_fingerprint(records)
        rnd = ClusteringRound(epoch=trainer.current_epoch, seconds=t_total, embed_seconds=t_embed,
                              kmeans_seconds=t_total - t_embed, mean_k=float(np.mean(ks)), n_eligible_speakers=eligible,
                              k_per_speaker={s: v["k"] for s, v in info.items()}, source=self.source,
                              n_embedded=n_embedded)
        if self.monitor_emotions:
            emotions = record_emotions(records)  # monitoring only: the labels above are already set
            if emotions is not None:
                rnd.monitor = emotion_agreement(speakers, labels, emotions)
        self.history.append(rnd)
        self._log(trainer, rnd, emb, speakers)
        return rnd

    @rank_zero_only
    def _log(self, trainer: L.Trainer, rnd: ClusteringRound, emb: np.ndarray, speakers: Sequence) -> None:
        metrics = {"cluster/seconds": rnd.seconds, "cluster/embed_seconds": rnd.embed_seconds,
                   "cluster/kmeans_seconds": rnd.kmeans_seconds, "cluster/mean_k": rnd.mean_k,
                   "cluster/eligible_speakers": float(rnd.n_eligible_speakers), "cluster/epoch": float(rnd.epoch),
                   "cluster/embedded_clips": float(rnd.n_embedded)}
        for key in ("purity", "nmi"):
            if key in rnd.monitor:
                metrics[f"cluster/{key}"] = float(rnd.monitor[key])
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=trainer.global_step)
        image_loggers = [lg for lg in trainer.loggers if callable(getattr(lg, "log_image", None))]
        if self.log_plot and image_loggers:
            from callbacks.cluster_plot import cluster_plot_image

            t0 = time.perf_counter()
            image = cluster_plot_image(emb, speakers, self.labels, title=f"clusters before epoch {rnd.epoch}",
                                       max_points=self.plot_max_points, seed=self.seed)
            for lg in image_loggers:
                lg.log_image(key="cluster/plot", images=[image], step=trainer.global_step,
                             caption=[f"epoch {rnd.epoch}: PCA by speaker | within-speaker clusters"])
            rnd.plot_seconds = time.perf_counter() - t0
        mon = (f", emotion purity {rnd.monitor['purity']:.3f} NMI {rnd.monitor['nmi']:.3f} (monitoring only)"
               if rnd.monitor else "")
        log.info("clustering before epoch %d (%s, %d clips embedded): mean k %.2f, %d speakers eligible, %.2fs "
                 "(embed %.2fs, k-means %.2fs)%s", rnd.epoch, rnd.source, rnd.n_embedded, rnd.mean_k,
                 rnd.n_eligible_speakers, rnd.seconds, rnd.embed_seconds, rnd.kmeans_seconds, mon)

    # ----- checkpoint: the labels in use, the schedule's record and the memory bank -----
    def state_dict(self) -> dict:
        # Plain Python types and tensors only: checkpoints are read back with torch.load(weights_only=True).
        return {"rounds": [json.loads(json.dumps(r.__dict__, default=float)) for r in self.history],
                "labels": None if self.labels is None else [int(x) for x in self.labels],
                "labels_epoch": self.labels_epoch, "records_fingerprint": self._fingerprint,
                "bank": self.bank.state_dict() if self.bank is not None and self.bank_in_checkpoint else None}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = [ClusteringRound(**r) for r in state_dict.get("rounds", [])]
        labels = state_dict.get("labels")
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.labels_epoch = state_dict.get("labels_epoch")
        self._fingerprint = state_dict.get("records_fingerprint")
        bank = state_dict.get("bank")
        if bank is None or self.source != "memory_bank":
            self.bank = None
        else:
            # Lightning restores callbacks with on_load_checkpoint, then load_state_dict again: keep one object,
            # the one the module writes to.
            restored = EmbeddingBank.from_state_dict(bank)
            if self.bank is not None and self.bank.n == restored.n:
                self.bank.values, self.bank.written_epoch = restored.values, restored.written_epoch
            else:
                self.bank = restored
