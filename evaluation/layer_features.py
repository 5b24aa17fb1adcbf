"""What the columns of a feature matrix are, and choosing layers among them.

A feature description (`features` in embeddings.npz, metrics.json and an exported bundle) is a
JSON dict. For the final embedding: {"output": "embedding", "dim": E}. For `features=layer_stats`:

    {"output": "layer_stats", "statistics": ["mean", "std"],
     "layers": [{"name": "mel", "dim": 40}, {"name": "lstm1", "dim": 256}, ...],   # the columns, in order
     "backbone_layers": [...]}   # every layer the backbone has (what predict.py recomputes and checks)

Layer l occupies 2 * dim_l consecutive columns: its per-dimension mean over time, then its std.
`select_layers` keeps a subset (by index or name, in the order given by the backbone); the
description then lists the kept layers only, so the heads (the weighted-layer probe) and predict.py
read the same boundaries.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

LAYER_STATS = "layer_stats"
STATISTICS = ("mean", "std")


def embedding_description(dim: int) -> dict:
    return {"output": "embedding", "dim": int(dim)}


def layer_stats_description(names: Sequence[str], dims: Sequence[int]) -> dict:
    if len(names) != len(dims):
        raise ValueError(f"layer names {list(names)} and dims {list(dims)} differ in length")
    layers = [{"name": str(n), "dim": int(d)} for n, d in zip(names, dims)]
    return {"output": LAYER_STATS, "statistics": list(STATISTICS), "layers": layers, "backbone_layers": layers,
            "dim": int(sum(2 * d for d in dims))}


AUTO = "auto"


def auto_description(embedding_dim: int, names: Sequence[str], dims: Sequence[int]) -> dict:
    """features=auto: the final embedding's columns, then every layer's statistics (those of layer_stats)."""
    stats = layer_stats_description(names, dims)
    return {**stats, "output": AUTO, "embedding_dim": int(embedding_dim), "dim": int(embedding_dim) + stats["dim"]}


def auto_parts(description: dict) -> tuple[int, dict]:
    """(embedding columns, the layer_stats description of the columns after them) of features=auto."""
    return int(description["embedding_dim"]), {**description, "output": LAYER_STATS,
                                                "dim": int(description["dim"]) - int(description["embedding_dim"])}


def output_of(description: dict | None) -> str:
    """The clip_embedding output a description names; files without one hold final embeddings."""
    return "embedding" if not description else str(description.get("output", "embedding"))


def layer_columns(description: dict) -> list[tuple[int, int]]:
    """[start, stop) column range of every described layer (mean and std together)."""
    if output_of(description) != LAYER_STATS:
        raise ValueError(f"features {output_of(description)!r} have no layers (features=layer_stats has)")
    out, start = [], 0
    for layer in description["layers"]:
        width = len(description.get("statistics", STATISTICS)) * int(layer["dim"])
        out.append((start, start + width))
        start += width
    return out


def check_columns(description: dict | None, n_columns: int, where: str) -> None:
    if output_of(description) == LAYER_STATS:
        expected = layer_columns(description)[-1][1] if description["layers"] else 0
        if expected != n_columns:
            raise ValueError(f"{where}: the feature description's layers {[l['name'] for l in description['layers']]} "
                             f"make {expected} columns, the matrix has {n_columns}")


def layer_indices(description: dict, wanted: Sequence[int | str] | None) -> list[int]:
    """Indices (into description["layers"]) of `wanted` (ints, negative from the end, or names); all when None."""
    names = [str(layer["name"]) for layer in description["layers"]]
    if wanted is None:
        return list(range(len(names)))
    if isinstance(wanted, (str, int)):
        wanted = [wanted]
    if not len(wanted):
        raise ValueError(f"features_layers=[] selects no layer; give indices or names of {names} (or null for all)")
    out = []
    for w in wanted:
        if isinstance(w, (int, np.integer)) and not isinstance(w, bool):
            if not -len(names) <= int(w) < len(names):
                raise ValueError(f"features_layers: index {w} is out of range for the {len(names)} layers {names}")
            out.append(int(w) % len(names))
        elif isinstance(w, str) and w in names:
            out.append(names.index(w))
        else:
            raise ValueError(f"features_layers: {w!r} is not a layer of this backbone; layers (index: name): "
                             + ", ".join(f"{i}: {n}" for i, n in enumerate(names)))
    if len(set(out)) != len(out):
        raise ValueError(f"features_layers={list(wanted)} names a layer twice")
    return sorted(out)


def select_layers(X: np.ndarray, description: dict, wanted: Sequence[int | str] | None) -> tuple[np.ndarray, dict]:
    """The columns of the `wanted` layers and the description of what is kept."""
    keep = layer_indices(description, wanted)
    cols = layer_columns(description)
    X = np.asarray(X)
    check_columns(description, X.shape[1], "select_layers")
    selected = np.concatenate([np.arange(*cols[i]) for i in keep])
    out = {**description, "layers": [description["layers"][i] for i in keep]}
    out["dim"] = int(len(selected))
    return X[:, selected], out


def same_backbone_layers(recorded: dict, computed: dict) -> bool:
    """Does a backbone produce the layers (names and widths) a description was made from?"""
    strip = lambda d: [(str(x["name"]), int(x["dim"])) for x in d.get("backbone_layers", d["layers"])]  # noqa: E731
    return strip(recorded) == strip(computed)
