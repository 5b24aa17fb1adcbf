"""The picture of one clustering round for a dashboard: are clusters speaker-, or emotion-like structure?

Left: the embeddings' 2-D PCA coloured by speaker (a speaker encoder separates speakers). Right: the
PCA of each clip's offset from its speaker's mean, coloured by its within-speaker cluster: the
structure the pseudo-labels capture once speaker identity is taken out. PCA, not t-SNE: it takes
milliseconds (t-SNE of a thousand clips takes seconds on 2 cores, a round's whole budget).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.decomposition import PCA
from threadpoolctl import threadpool_limits


def _pca2(x: np.ndarray, seed: int) -> np.ndarray:
    if len(x) < 3 or x.shape[1] < 2:
        return np.zeros((len(x), 2))
    # The D x D covariance's eigenvectors, single-threaded: sklearn's default randomized SVD with threaded
    # BLAS took ~1 s per call on a busy 2-core box, this takes milliseconds.
    with threadpool_limits(1):
        return PCA(n_components=2, svd_solver="covariance_eigh", random_state=seed).fit_transform(x)


def cluster_plot_image(emb: np.ndarray, speakers: Sequence, clusters: Sequence[int], title: str = "",
                       max_points: int = 2000, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 image of the two panels; at most `max_points` clips (a seeded subsample)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    emb, speakers, clusters = np.asarray(emb, dtype=np.float32), np.asarray(speakers), np.asarray(clusters)
    if not (len(emb) == len(speakers) == len(clusters)):
        raise ValueError(f"cluster_plot_image: {len(emb)} embeddings, {len(speakers)} speakers, {len(clusters)} clusters")
    if len(emb) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(emb), max_points, replace=False))
        emb, speakers, clusters = emb[keep], speakers[keep], clusters[keep]
    spk_ids, spk_index = np.unique(speakers, return_inverse=True)
    centred = emb.copy()
    for s in range(len(spk_ids)):
        centred[spk_index == s] -= centred[spk_index == s].mean(0)
    fig = Figure(figsize=(9, 4.2), dpi=80)
    FigureCanvasAgg(fig)
    for ax_i, (points, colour, name) in enumerate(((_pca2(emb, seed), spk_index, f"by speaker ({len(spk_ids)})"),
                                                   (_pca2(centred, seed), clusters, "within-speaker cluster"))):
        ax = fig.add_subplot(1, 2, ax_i + 1)
        ax.scatter(points[:, 0], points[:, 1], c=colour, cmap="tab20" if ax_i == 0 else "tab10", s=6, alpha=0.8,
                   linewidths=0)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
