"""How much does intra-speaker re-clustering cost? (goal: <= 5% of an epoch) and faiss vs scikit-learn.

Part 1 trains a short run (default: experiment=contrastive_mtl on the synthetic corpus) and reports
each clustering round (embedding the training audio + k-means) against the training epoch time.
Part 2 times per-speaker k-means on the same embeddings, and on a larger synthetic embedding set
(--big-speakers x --big-clips, D-dim Gaussian mixtures), with faiss and with scikit-learn's KMeans
at equal settings (k, iterations, restarts, k-means++), and checks they find the same partitions.

    python scripts/benchmark_clustering.py                                   # defaults
    python scripts/benchmark_clustering.py experiment=contrastive_mtl trainer.max_epochs=3 --big-speakers 2000

Positional `key=value` arguments are Hydra overrides of configs/train.yaml for part 1.

`--compare-full` instead measures the cheap path against the original one in ONE training run: the run
uses the configured source (the memory bank by default) and, right after each of its re-clustering
rounds, a shadow callback runs the original full pass (every training clip through the encoder, no
inference mode, the trainer's precision) with the same weights and k-means settings, without using its
labels. Per round: both rounds' seconds against the epoch time, the agreement of the cheap labels with
the full pass's (per-speaker adjusted Rand, and purity of the cheap clusters against the full ones),
k-means's own seed-to-seed agreement on the full embeddings (the noise floor), and the emotion purity of
both (monitoring only: no label reaches the pseudo-labels).

    python scripts/benchmark_clustering.py --compare-full experiment=contrastive_mtl data=emodb \
        data.root=/work/shared/corpora/emodb trainer.max_epochs=4
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

from callbacks.intra_speaker_clustering import (IntraSpeakerClustering, cluster_speakers,  # noqa: E402
                                                emotion_agreement, record_emotions)
from lightning_modules.clip_embedding import embed_records  # noqa: E402
from utils.compose import compose_config  # noqa: E402


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


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


def cluster_purity(labels: np.ndarray, reference: np.ndarray, speakers: np.ndarray) -> float:
    """Share of clips whose (speaker, cluster) majority reference cluster is their own."""
    hits = 0
    for spk in np.unique(speakers):
        m = speakers == spk
        for c in np.unique(labels[m]):
            hits += int(np.unique(reference[m][labels[m] == c], return_counts=True)[1].max())
    return hits / len(labels)


class ShadowFullPass(L.Callback):
    """After each round of the clustering callback: the original full pass and its labels, compared."""

    def __init__(self, epochs: list[int] | None = None):
        self.rows: list[dict] = []
        self.epochs = None if epochs is None else set(int(e) for e in epochs)  # None: after every round

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        cb = next(c for c in trainer.callbacks if isinstance(c, IntraSpeakerClustering))
        if not cb.history or cb.history[-1].epoch != trainer.current_epoch or \
                any(r["epoch"] == trainer.current_epoch for r in self.rows):
            return
        if self.epochs is not None and trainer.current_epoch not in self.epochs:
            return
        self.compare(trainer, pl_module, cb)

    def compare(self, trainer, pl_module, cb: IntraSpeakerClustering) -> None:
        dm = trainer.datamodule
        records = dm.train_records
        speakers = np.array([r.speaker for r in records])
        n_sub = int(dm.hparams.get("n_clusters_per_speaker", 2))
        kw = dict(k=cb.k, n_clusters=cb.n_clusters, k_range=cb.k_range, niter=cb.niter, nredo=cb.nredo,
                  min_clips_per_cluster=cb.min_clips_per_cluster, use_gpu=cb.use_gpu, init=cb.init, keep_at_least=n_sub)
        t0 = time.perf_counter()
        full = embed_records(pl_module, dm, records, cb.batch_size)  # the original pass: no_grad, trainer precision
        full_labels, _ = cluster_speakers(full, speakers, seed=cb.seed, **kw)
        full_s = time.perf_counter() - t0
        other_seed, _ = cluster_speakers(full, speakers, seed=cb.seed + 1000, **kw)
        cheap = np.asarray(cb.labels)
        emotions = record_emotions(records)
        rnd = cb.history[-1]
        row = {"epoch": int(trainer.current_epoch), "source": rnd.source, "cheap_s": rnd.seconds,
               "cheap_embedded": rnd.n_embedded, "full_s": full_s, "clips": len(records),
               "ari_cheap_vs_full": per_speaker_ari(cheap, full_labels, speakers),
               "purity_cheap_vs_full": cluster_purity(cheap, full_labels, speakers),
               "ari_full_vs_full_other_seed": per_speaker_ari(other_seed, full_labels, speakers)}
        if emotions is not None:
            row["emotion_purity_cheap"] = emotion_agreement(speakers, cheap, emotions)["purity"]
            row["emotion_purity_full"] = emotion_agreement(speakers, full_labels, emotions)["purity"]
        self.rows.append(row)


def compare_with_full_pass(overrides: list[str], out: Path, shadow_epochs: list[int] | None = None) -> dict:
    from tasks.train import train

    cfg = compose_config("train.yaml", overrides, out / "run")
    with open_dict(cfg):
        cfg.callbacks.pop("progress_bar", None)
        cfg.trainer.enable_progress_bar = False
        cfg.callbacks.epoch_timer = {"_target_": "benchmark_clustering.EpochTimer"}
        cfg.callbacks.shadow_full_pass = {"_target_": "benchmark_clustering.ShadowFullPass", "epochs": shadow_epochs}
    _, objs = train(cfg)
    trainer = objs["trainer"]
    timer = next(c for c in trainer.callbacks if type(c).__name__ == "EpochTimer")
    shadow = next(c for c in trainer.callbacks if type(c).__name__ == "ShadowFullPass")
    cb = next(c for c in trainer.callbacks if isinstance(c, IntraSpeakerClustering))
    epoch_s = float(np.mean(timer.seconds))
    later = [r for r in shadow.rows if r["epoch"] > 0]  # rounds where the cheap path differs from a full pass
    n_epochs = len(timer.seconds)
    summary = {"overrides": overrides, "clips": len(objs["datamodule"].train_records), "epochs": n_epochs,
               "epoch_seconds": epoch_s, "epoch_seconds_each": timer.seconds, "every_n_epochs": cb.every_n_epochs,
               "source": cb.source, "rounds": shadow.rows,
               "share_full": float(np.mean([r["full_s"] for r in later]) / epoch_s) if later else None,
               "share_cheap": float(np.mean([r["cheap_s"] for r in later]) / epoch_s) if later else None,
               "all_rounds": [{"epoch": r.epoch, "seconds": r.seconds, "n_embedded": r.n_embedded} for r in cb.history]}
    if len(shadow.rows) == len(cb.history):  # the first round is a full pass on both paths: spread over the epochs
        summary["share_cheap_with_first_round"] = float(sum(r["cheap_s"] for r in shadow.rows) / n_epochs / epoch_s)
        summary["share_full_with_first_round"] = float(sum(r["full_s"] for r in shadow.rows) / n_epochs / epoch_s)
    return summary


def time_pass_precisions(overrides: list[str], out: Path, n_clips: int, repeats: int = 2, device: str = "cpu",
                         output: str = "embedding") -> list[dict]:
    """The re-embedding pass over the first n_clips training clips (untrained encoder of the config) under
    no_grad fp32 (the original), inference_mode fp32 and inference_mode + bf16 autocast, interleaved, on
    `device`. `output`: what each clip becomes (`embed_clips`: "embedding" or "layer_stats"); the cosine of
    every clip's vector to its no_grad fp32 vector is reported as a mean and a minimum."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from lightning_modules.embedding_module import EmbeddingModule

    cfg = compose_config("train.yaml", overrides, out / "precision")
    dm = instantiate(cfg.data, _convert_="all")
    dm.prepare_data()
    dm.setup("fit")
    dev = torch.device(device)
    module = EmbeddingModule(OmegaConf.to_container(cfg.backbone, resolve=True)).to(dev)
    records = dm.train_records[:n_clips]
    variants = {"no_grad fp32": (torch.no_grad, False), "inference_mode fp32": (torch.inference_mode, False),
                "inference_mode bf16": (torch.inference_mode, True)}
    times: dict[str, list[float]] = {k: [] for k in variants}
    ref = None
    cos: dict[str, np.ndarray] = {}
    for _ in range(repeats):
        for name, (grad_mode, bf16) in variants.items():
            t0 = time.perf_counter()
            with grad_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                emb = embed_records(module, dm, records, output=output)  # float32 numpy on CPU: synchronised
            times[name].append(time.perf_counter() - t0)
            ref = emb if ref is None else ref
            unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
            cos[name] = (unit * (ref / np.linalg.norm(ref, axis=1, keepdims=True))).sum(1)
    return [{"variant": k, "clips": len(records), "device": str(dev), "output": output, "seconds_each": v,
             "seconds_min": min(v), "mean_cosine_to_no_grad_fp32": float(cos[k].mean()),
             "min_cosine_to_no_grad_fp32": float(cos[k].min())} for k, v in times.items()]


def compare_table(res: dict, cmd: str) -> str:
    lines = [f"`{cmd}`", "", f"{res['clips']} training clips, epoch (training + validation, clustering excluded) "
             f"{res['epoch_seconds']:.1f} s on average over {res['epochs']} epochs.", "",
             "| before epoch | cheap round (s) | clips embedded | full pass round (s) | ARI cheap vs full | "
             "purity cheap vs full | ARI full vs full (other k-means seed) | emotion purity cheap | emotion purity full |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["rounds"]:
        lines.append(f"| {r['epoch']} | {r['cheap_s']:.2f} | {r['cheap_embedded']} / {r['clips']} | {r['full_s']:.2f} | "
                     f"{r['ari_cheap_vs_full']:.3f} | {r['purity_cheap_vs_full']:.3f} | "
                     f"{r['ari_full_vs_full_other_seed']:.3f} | {r.get('emotion_purity_cheap', float('nan')):.3f} | "
                     f"{r.get('emotion_purity_full', float('nan')):.3f} |")
    if res["share_full"] is not None:
        lines += ["", f"Share of an epoch, compared rounds after the first: full pass **{100 * res['share_full']:.1f}%**, "
                      f"{res['source']} **{100 * res['share_cheap']:.1f}%**."]
        if "share_cheap_with_first_round" in res:
            lines[-1] += (f" With the first round (a full pass on both) spread over the {res['epochs']} epochs: "
                          f"{100 * res['share_full_with_first_round']:.1f}% vs {100 * res['share_cheap_with_first_round']:.1f}%.")
    lines += ["", "Every round of the run (seconds, clips embedded): " + ", ".join(
        f"before epoch {r['epoch']}: {r['seconds']:.2f} s, {r['n_embedded']}" for r in res["all_rounds"])]
    return "\n".join(lines)


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
    ap.add_argument("--compare-full", action="store_true", help="cheap rounds vs the full pass in one run (see above)")
    ap.add_argument("--shadow-epochs", type=int, nargs="*", default=None,
                    help="with --compare-full: run the full pass only after these epochs' rounds (default: all)")
    ap.add_argument("--pass-precision-clips", type=int, default=0,
                    help="only time the pass over this many clips: no_grad fp32 vs inference_mode fp32 vs bf16")
    args = ap.parse_args(argv)
    overrides = args.overrides or ["experiment=contrastive_mtl", "trainer.max_epochs=3"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, min(os.cpu_count() or 1, 8)))
    machine = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
               "cpu": cpu_model(), "cuda": torch.cuda.is_available()}
    if args.pass_precision_clips:
        rows = time_pass_precisions(overrides, out, args.pass_precision_clips)
        lines = ["| pass | clips | seconds (best of 2) | mean cosine to no_grad fp32 |", "|---|---:|---:|---:|"]
        lines += [f"| {r['variant']} | {r['clips']} | {r['seconds_min']:.2f} | {r['mean_cosine_to_no_grad_fp32']:.6f} |"
                  for r in rows]
        print("\n".join(lines))
        (out / "pass_precision.json").write_text(json.dumps({"rows": rows, "machine": machine}, indent=2))
        return {"rows": rows}
    if args.compare_full:
        res = compare_with_full_pass(overrides, out, args.shadow_epochs)
        res["machine"] = machine
        table = compare_table(res, "python scripts/benchmark_clustering.py --compare-full " + " ".join(overrides))
        print(table)
        (out / "compare_full.json").write_text(json.dumps(res, indent=2))
        (out / "compare_full.md").write_text(table + "\n")
        return res

    # ----- part 1: clustering rounds vs training epochs in a real run -----
    from tasks.train import train

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
