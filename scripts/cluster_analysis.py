"""Do a speaker's embeddings cluster by emotion? (the premise of intra-speaker contrastive learning)

Embeds a corpus with an encoder (a backbone config, or any checkpoint of ours), runs the same
per-speaker k-means as training (`callbacks.intra_speaker_clustering.cluster_speakers`), and
compares the clusters with the emotion labels: per-speaker purity and NMI against a random
assignment with the same cluster sizes (seeded within-speaker permutations). Writes a json, a
markdown table and a two-panel t-SNE (coloured by speaker / by emotion) like the paper's Fig. 1.

    python scripts/cluster_analysis.py backbone=ge2e data=emodb --n-clusters 4
    python scripts/cluster_analysis.py --ckpt logs/train/runs/<run>/checkpoints/last.ckpt data=emodb
    python scripts/cluster_analysis.py backbone=ge2e data=emodb --k silhouette --k-range 2 6

Positional `key=value` arguments are Hydra overrides of configs/train.yaml (data, backbone, ...).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PROJECT_ROOT", str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import normalized_mutual_info_score  # noqa: E402

from callbacks.intra_speaker_clustering import cluster_speakers  # noqa: E402
from lightning_modules.clip_embedding import embed_records  # noqa: E402
from datamodules.records import FOUR_CLASSES  # noqa: E402
from utils.compose import compose_config  # noqa: E402

log = logging.getLogger("cluster_analysis")


def build_datamodule(cfg):
    from hydra.utils import instantiate

    dm = instantiate(cfg.data, _convert_="all")
    dm.prepare_data()
    dm.setup("fit")
    return dm


def load_encoder(cfg, ckpt: str | None):
    """An EmbeddingModule holding the encoder: from the backbone config, or from a checkpoint's own
    backbone config and `backbone.*` weights (safe loading)."""
    from omegaconf import OmegaConf

    from lightning_modules.embedding_module import EmbeddingModule, load_backbone_weights

    from lightning_modules.checkpoints import read_checkpoint

    spec = read_checkpoint(ckpt).backbone_config if ckpt else OmegaConf.to_container(cfg.backbone, resolve=True)
    module = EmbeddingModule(spec)
    if ckpt:
        load_backbone_weights(module.backbone, ckpt)
    return module


def select_records(records, label_set: str):
    """Clips with an emotion in the chosen label set: `four` (angry/happy/neutral/sad) or `all`."""
    if label_set == "four":
        keep = [r for r in records if r.emotion4 in FOUR_CLASSES]
        return keep, [r.emotion4 for r in keep]
    if label_set == "all":
        keep = [r for r in records if r.emotion]
        return keep, [r.emotion for r in keep]
    raise ValueError(f"--label-set {label_set!r}: expected 'four' or 'all'")


def speaker_scores(clusters: np.ndarray, emotions: np.ndarray) -> tuple[float, float]:
    hits = sum(np.unique(emotions[clusters == c], return_counts=True)[1].max() for c in np.unique(clusters))
    one_side = len(np.unique(clusters)) < 2 or len(np.unique(emotions)) < 2
    nmi = float("nan") if one_side else float(normalized_mutual_info_score(emotions, clusters))
    return hits / len(clusters), nmi


def agreement_table(speakers: np.ndarray, clusters: np.ndarray, emotions: np.ndarray, n_perm: int, seed: int) -> dict:
    """Per-speaker purity/NMI of the clusters and of `n_perm` seeded within-speaker permutations."""
    rng = np.random.default_rng(seed)
    rows = []
    for spk in sorted(set(speakers.tolist())):
        m = speakers == spk
        c, e = clusters[m], emotions[m]
        purity, nmi = speaker_scores(c, e)
        perm = [speaker_scores(rng.permutation(c), e) for _ in range(n_perm)]
        rows.append({"speaker": spk, "n": int(m.sum()), "k": int(len(np.unique(c))), "purity": purity, "nmi": nmi,
                     "random_purity": float(np.mean([p for p, _ in perm])),
                     "random_purity_std": float(np.std([p for p, _ in perm])),
                     "random_nmi": float(np.nanmean([n for _, n in perm])) if not np.isnan(nmi) else float("nan"),
                     "random_nmi_std": float(np.nanstd([n for _, n in perm])) if not np.isnan(nmi) else float("nan")})
    w = np.array([r["n"] for r in rows], dtype=float)

    def wmean(key: str) -> float:
        v = np.array([r[key] for r in rows], dtype=float)
        ok = ~np.isnan(v)
        return float((v[ok] * w[ok]).sum() / w[ok].sum()) if ok.any() else float("nan")

    overall = {key: wmean(key) for key in ("purity", "nmi", "random_purity", "random_nmi")}
    overall["purity_gain"] = overall["purity"] - overall["random_purity"]
    overall["nmi_gain"] = overall["nmi"] - overall["random_nmi"]
    overall["speakers_above_random_purity"] = int(sum(r["purity"] > r["random_purity"] + 2 * r["random_purity_std"]
                                                      for r in rows))
    return {"speakers": rows, "overall": overall}


def markdown(result: dict, title: str) -> str:
    lines = [f"### {title}", "", "| speaker | clips | k | purity | random purity | NMI | random NMI |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["speakers"]:
        lines.append(f"| {r['speaker']} | {r['n']} | {r['k']} | {r['purity']:.3f} | {r['random_purity']:.3f} ± "
                     f"{r['random_purity_std']:.3f} | {r['nmi']:.3f} | {r['random_nmi']:.3f} ± {r['random_nmi_std']:.3f} |")
    o = result["overall"]
    lines.append(f"| **all (clip-weighted)** | {sum(r['n'] for r in result['speakers'])} | | **{o['purity']:.3f}** | "
                 f"{o['random_purity']:.3f} | **{o['nmi']:.3f}** | {o['random_nmi']:.3f} |")
    lines.append("")
    lines.append(f"{o['speakers_above_random_purity']} of {len(result['speakers'])} speakers have a purity more than "
                 f"2 std above random.")
    return "\n".join(lines)


def plot_tsne(emb: np.ndarray, speakers: np.ndarray, emotions: np.ndarray, path: Path, seed: int, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    xy = TSNE(n_components=2, init="pca", random_state=seed, perplexity=float(min(30, max(2, len(emb) // 4)))
              ).fit_transform(emb)
    fig, axes = plt.subplots(1, 2, figsize=(13, 6))
    for ax, values, name in ((axes[0], speakers, "speaker"), (axes[1], emotions, "emotion")):
        cats = sorted(set(values.tolist()))
        cmap = plt.get_cmap("tab20" if len(cats) > 10 else "tab10")
        for i, c in enumerate(cats):
            m = values == c
            ax.scatter(xy[m, 0], xy[m, 1], s=8, color=cmap(i % cmap.N), label=str(c))
        ax.set_title(f"coloured by {name}")
        ax.set_xticks([]), ax.set_yticks([])
        if len(cats) <= 20:
            ax.legend(fontsize=7, markerscale=2, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of configs/train.yaml, e.g. backbone=ge2e data=emodb")
    ap.add_argument("--ckpt", default=None, help="checkpoint of any objective (its backbone config is used)")
    ap.add_argument("--k", choices=("fixed", "silhouette"), default="fixed")
    ap.add_argument("--n-clusters", type=int, default=4, help="k for --k fixed (default: 4, the number of classes)")
    ap.add_argument("--k-range", type=int, nargs=2, default=(2, 6))
    ap.add_argument("--min-clips-per-cluster", type=int, default=2)
    ap.add_argument("--label-set", choices=("four", "all"), default="four",
                    help="which clips and labels: the 4-class subset (default) or every labelled clip")
    ap.add_argument("--permutations", type=int, default=100, help="random assignments per speaker for the baseline")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", default=None, help="output folder (default: logs/cluster_analysis/<corpus>-<encoder>)")
    ap.add_argument("--no-tsne", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(max(1, min(os.cpu_count() or 1, 8)))

    overrides = list(args.overrides) + ["data.val_speakers=0"]
    probe = compose_config("train.yaml", overrides, ROOT / "logs" / "cluster_analysis")
    encoder_name = Path(args.ckpt).stem if args.ckpt else str(probe.backbone._target_).rsplit(".", 1)[-1]
    out = Path(args.out or ROOT / "logs" / "cluster_analysis" / f"{probe.data.corpus}-{encoder_name}")
    out.mkdir(parents=True, exist_ok=True)
    cfg = compose_config("train.yaml", overrides, out)

    dm = build_datamodule(cfg)
    records, emotions = select_records(dm.train_records + dm.val_records, args.label_set)
    if not records:
        raise SystemExit(f"no clip of {cfg.data.corpus} has a label in --label-set {args.label_set}")
    module = load_encoder(cfg, args.ckpt)
    emb = embed_records(module, dm, records, args.batch_size)
    speakers = np.array([r.speaker for r in records])
    emotions = np.array(emotions)
    clusters, info = cluster_speakers(emb, speakers, args.k, args.n_clusters, args.k_range, seed=args.seed,
                                      min_clips_per_cluster=args.min_clips_per_cluster, use_gpu="auto")
    result = agreement_table(speakers, clusters, emotions, args.permutations, args.seed)
    result["settings"] = {"overrides": args.overrides, "ckpt": args.ckpt, "k": args.k, "n_clusters": args.n_clusters,
                          "k_range": list(args.k_range), "label_set": args.label_set, "permutations": args.permutations,
                          "seed": args.seed, "n_clips": len(records), "corpus": cfg.data.corpus,
                          "encoder": encoder_name, "silhouette": {s: v.get("silhouette") for s, v in info.items()}}
    title = f"{cfg.data.corpus}, {encoder_name}, k={args.k if args.k == 'silhouette' else args.n_clusters}"
    table = markdown(result, title)
    print(table)
    (out / "cluster_analysis.json").write_text(json.dumps(result, indent=2))
    (out / "cluster_analysis.md").write_text(table + "\n")
    if not args.no_tsne:
        plot_tsne(emb, speakers, emotions, out / "tsne.png", args.seed, title)
    print(f"wrote {out}/cluster_analysis.json, cluster_analysis.md" + ("" if args.no_tsne else ", tsne.png"))
    return result


if __name__ == "__main__":
    main()
