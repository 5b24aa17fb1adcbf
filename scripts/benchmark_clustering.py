"""How much does intra-speaker re-clustering cost? (goal: <= 5% of an epoch) and faiss vs scikit-learn.

Part 1 trains a short run (default: experiment=contrastive_mtl on the synthetic corpus) and reports
each clustering round (embedding the training audio + k-means) against the training epoch time.
Part 2 times per-speaker k-means on the same embeddings, and on a larger synthetic embedding set
(--big-speakers x --big-clips, D-dim Gaussian mixtures), with faiss and with scikit-learn's KMeans
at equal settings (k, iterations, restarts, k-means++), and checks they find the same partitions.

    python scripts/benchmark_clustering.py                                   # defaults
    python scripts/benchmark_clustering.py experiment=contrastive_mtl trainer.max_epochs=3 --big-speakers 2000

Positional `key=value` arguments are Hydra overrides of configs/train.yaml for part 1.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("PROJECT_ROOT", str(ROOT))

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import open_dict  # noqa: E402
from sklearn.cluster import KMeans  # noqa: E402
from sklearn.metrics import adjusted_rand_score  # noqa: E402

from callbacks.intra_speaker_clustering import IntraSpeakerClustering, cluster_speakers  # noqa: E402
from lightning_modules.clip_embedding import embed_records  # noqa: E402
from utils.compose import compose_config  # noqa: E402


class EpochTimer(L.Callback):
    """Wall time of each training epoch from its first batch to its end (clustering excluded)."""

    def __init__(self):
        self.seconds: list[float] = []
        self._t0 = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._t0 is not None:
            self.seconds.append(time.perf_counter() - self._t0)
            self._t0 = None


def sklearn_cluster_speakers(emb: np.ndarray, speakers: np.ndarray, k: int, niter: int, nredo: int, seed: int) -> np.ndarray:
    labels = np.zeros(len(speakers), dtype=np.int64)
    for i, spk in enumerate(sorted(set(speakers.tolist()))):
        rows = np.flatnonzero(speakers == spk)
        kk = min(k, max(1, len(rows) // 2))
        if kk == 1:
            continue
        km = KMeans(n_clusters=kk, n_init=nredo, max_iter=niter, init="k-means++", random_state=seed + i)
        labels[rows] = km.fit_predict(emb[rows])
    return labels


def per_speaker_ari(a: np.ndarray, b: np.ndarray, speakers: np.ndarray) -> float:
    return float(np.mean([adjusted_rand_score(a[speakers == s], b[speakers == s]) for s in np.unique(speakers)]))


def big_embedding_set(n_speakers: int, n_clips: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per speaker: a random centre plus 4 'emotion' offsets, unit-normalised like real embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_speakers, 1, dim))
    offsets = 0.5 * rng.normal(size=(n_speakers, 4, dim))
    which = rng.integers(0, 4, size=(n_speakers, n_clips))
    x = centres + np.take_along_axis(offsets, which[..., None], axis=1) + 0.3 * rng.normal(size=(n_speakers, n_clips, dim))
    x = (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32).reshape(-1, dim)
    return x, np.repeat(np.arange(n_speakers).astype(str), n_clips)


def time_kmeans(name: str, emb: np.ndarray, speakers: np.ndarray, k: int, niter: int, nredo: int, seed: int) -> dict:
    t0 = time.perf_counter()
    faiss_labels, _ = cluster_speakers(emb, speakers, "fixed", k, niter=niter, nredo=nredo, seed=seed, use_gpu="auto")
    t_faiss = time.perf_counter() - t0
    t0 = time.perf_counter()
    silhouette_labels, info = cluster_speakers(emb, speakers, "silhouette", k_range=(2, 5), niter=niter, nredo=nredo,
                                               seed=seed, use_gpu="auto")
    t_sil = time.perf_counter() - t0
    t0 = time.perf_counter()
    sk_labels = sklearn_cluster_speakers(emb, speakers, k, niter, nredo, seed)
    t_sk = time.perf_counter() - t0
    return {"set": name, "clips": int(len(emb)), "speakers": int(len(np.unique(speakers))), "dim": int(emb.shape[1]),
            "k": k, "faiss_s": t_faiss, "faiss_silhouette_s": t_sil, "sklearn_s": t_sk,
            "ari_faiss_vs_sklearn": per_speaker_ari(faiss_labels, sk_labels, speakers)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", default=None)
    ap.add_argument("--big-speakers", type=int, default=1000)
    ap.add_argument("--big-clips", type=int, default=100)
    ap.add_argument("--big-dim", type=int, default=256)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--niter", type=int, default=25)
    ap.add_argument("--nredo", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "logs" / "benchmark_clustering"))
    args = ap.parse_args(argv)
    overrides = args.overrides or ["experiment=contrastive_mtl", "trainer.max_epochs=3"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, min(os.cpu_count() or 1, 8)))

    # ----- part 1: clustering rounds vs training epochs in a real run -----
    from utils.training import train

    cfg = compose_config("train.yaml", overrides, out / "run")
    with open_dict(cfg):
        cfg.callbacks.pop("progress_bar", None)
        cfg.trainer.enable_progress_bar = False
        cfg.callbacks.epoch_timer = {"_target_": "benchmark_clustering.EpochTimer"}
    _, objs = train(cfg)
    trainer, dm, model = objs["trainer"], objs["datamodule"], objs["model"]
    timer = next(c for c in trainer.callbacks if type(c).__name__ == "EpochTimer")  # imported as a module
    clustering = next(c for c in trainer.callbacks if isinstance(c, IntraSpeakerClustering))
    epoch_s = float(np.mean(timer.seconds))
    rounds = [{"epoch": r.epoch, "seconds": r.seconds, "embed_s": r.embed_seconds, "kmeans_s": r.kmeans_seconds}
              for r in clustering.history]
    round_s = float(np.mean([r["seconds"] for r in rounds]))
    kmeans_s = float(np.mean([r["kmeans_s"] for r in rounds]))
    every = max(1, clustering.every_n_epochs)
    pipeline = {"overrides": overrides, "train_clips": len(dm.train_records), "epochs": len(timer.seconds),
                "epoch_seconds": epoch_s, "every_n_epochs": clustering.every_n_epochs, "rounds": rounds,
                "round_seconds": round_s, "kmeans_seconds": kmeans_s,
                "share_per_epoch": round_s / every / epoch_s, "kmeans_share_per_epoch": kmeans_s / every / epoch_s}

    # ----- part 2: k-means alone, faiss vs scikit-learn -----
    emb = embed_records(model.cpu(), dm, dm.train_records)
    speakers = np.array([r.speaker for r in dm.train_records])
    big_x, big_spk = big_embedding_set(args.big_speakers, args.big_clips, args.big_dim, args.seed)
    kmeans_rows = [time_kmeans("training run's embeddings", emb, speakers, args.k, args.niter, args.nredo, args.seed),
                   time_kmeans("large synthetic set", big_x, big_spk, args.k, args.niter, args.nredo, args.seed)]

    result = {"pipeline": pipeline, "kmeans": kmeans_rows,
              "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "platform": platform.platform(), "cuda": torch.cuda.is_available()}}
    cmd = "python scripts/benchmark_clustering.py " + " ".join(overrides) + (
        f" --big-speakers {args.big_speakers} --big-clips {args.big_clips}")
    p = pipeline
    lines = [f"`{cmd}`", "", "| training epoch (s) | clustering round (s) | of which k-means (s) | every N epochs | "
             "clustering share per epoch | k-means share |", "|---:|---:|---:|---:|---:|---:|",
             f"| {p['epoch_seconds']:.1f} | {p['round_seconds']:.2f} | {p['kmeans_seconds']:.3f} | {p['every_n_epochs']} | "
             f"{100 * p['share_per_epoch']:.1f}% | {100 * p['kmeans_share_per_epoch']:.2f}% |", "",
             "| embeddings | speakers | clips | dim | k | faiss (s) | faiss, silhouette k=2..5 (s) | scikit-learn (s) | "
             "ARI faiss vs sklearn |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in kmeans_rows:
        lines.append(f"| {r['set']} | {r['speakers']} | {r['clips']} | {r['dim']} | {r['k']} | {r['faiss_s']:.2f} | "
                     f"{r['faiss_silhouette_s']:.2f} | {r['sklearn_s']:.2f} | {r['ari_faiss_vs_sklearn']:.3f} |")
    table = "\n".join(lines)
    print(table)
    (out / "benchmark_clustering.json").write_text(json.dumps(result, indent=2))
    (out / "benchmark_clustering.md").write_text(table + "\n")
    return result


if __name__ == "__main__":
    main()
