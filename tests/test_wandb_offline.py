"""`logger=wandb` offline: a tiny contrastive training leaves a W&B run folder that `wandb sync` can upload,
holding the config, the metric history (train loss, a validation metric, the learning rate) and the
clustering callback's plot of every re-clustering round as images."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from callbacks.intra_speaker_clustering import IntraSpeakerClustering
from tests.test_clustering_callback import FEATURES, QUIET
from utils.entrypoint import run_task
from tasks.train import train

wandb = pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2  # noqa: E402

BLOCK, HEADER = 32768, 7


def wandb_records(path: Path) -> list:
    """The protobuf records of an offline run's .wandb file (a LevelDB-style log of W&B `Record`s)."""
    data = path.read_bytes()
    ident, _magic, _version = struct.unpack("<4sHB", data[:HEADER])
    assert ident == b":W&B", f"{path} is not a W&B log"
    records, pos, pending = [], HEADER, b""
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk  # FULL/FIRST start, MIDDLE/LAST append
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(pending)
            records.append(rec)
            pending = b""
    return records


def config_items(records: list) -> dict:
    out = {}
    for rec in records:
        if rec.WhichOneof("record_type") == "config":
            for item in rec.config.update:
                out[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return {k: v.get("value", v) if isinstance(v, dict) else v for k, v in out.items()}


def history_rows(records: list) -> list[dict]:
    rows = []
    for rec in records:
        if rec.WhichOneof("record_type") == "history":
            row = {}
            for item in rec.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            rows.append(row)
    return rows


def test_offline_run_has_config_metrics_and_cluster_images(train_cfg_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = train_cfg_factory(FEATURES, "model=contrastive", "model.projection={hidden_dim: 16, out_dim: 8}",
                            "callbacks=clustering", "callbacks.intra_speaker_clustering.n_clusters=2", "logger=wandb",
                            "trainer.max_epochs=2", "++trainer.log_every_n_steps=1", "data.n_speakers=2",
                            "data.n_per_speaker=2", "data.num_workers=0", *QUIET)
    _, objs = run_task(train, cfg)  # closes the W&B run as train.py does
    rounds = [r.epoch for r in next(c for c in objs["trainer"].callbacks
                                    if isinstance(c, IntraSpeakerClustering)).history]
    assert rounds == [0, 1]

    runs = list(Path(cfg.paths.output_dir).glob("wandb/offline-run-*"))
    assert len(runs) == 1, runs
    run = runs[0]
    records = wandb_records(next(run.glob("run-*.wandb")))  # offline, files/config.yaml is only written by sync
    config = config_items(records)
    assert {"model", "data", "callbacks", "trainer"} <= set(config), sorted(config)  # the resolved Hydra config
    assert config["callbacks"]["intra_speaker_clustering"]["source"] == cfg.callbacks.intra_speaker_clustering.source
    assert "model/params/total" in config

    images = sorted((run / "files" / "media" / "images").rglob("*.png"))
    assert len(images) == len(rounds), images  # one cluster plot per re-clustering round
    assert all(p.stat().st_size > 5000 and p.read_bytes()[:4] == b"\x89PNG" for p in images)

    rows = history_rows(records)
    keys = set().union(*rows)
    assert "train/loss" in keys and "val/eer" in keys and "val/probe_ua" in keys, sorted(keys)
    assert any(k.startswith("lr-") for k in keys), sorted(keys)  # LearningRateMonitor
    assert sum("train/loss" in r for r in rows) >= 2  # a history, not only a summary
    plots = [r for r in rows if r.get("cluster/plot/_type") == "images/separated"]
    assert len(plots) == len(rounds)
    logged = {Path(f).name for r in plots for f in r["cluster/plot/filenames"]}
    assert logged == {p.name for p in images}
    assert "cluster/seconds" in keys and "cluster/embedded_clips" in keys


def test_no_image_logger_no_plot(train_cfg_factory, monkeypatch):
    """With only CSV logging nothing is drawn (no cost, no matplotlib import)."""
    import callbacks.cluster_plot as cluster_plot

    def fail(*a, **k):
        raise AssertionError("plotted without an image logger")

    monkeypatch.setattr(cluster_plot, "cluster_plot_image", fail)
    cfg = train_cfg_factory(FEATURES, "model=contrastive", "model.projection={hidden_dim: 16, out_dim: 8}",
                            "callbacks=clustering", "callbacks.intra_speaker_clustering.n_clusters=2", "logger=csv",
                            "trainer.max_epochs=1", "data.n_speakers=2", "data.n_per_speaker=2",
                            "+trainer.limit_val_batches=0", *QUIET)
    _, objs = train(cfg)
    cb = next(c for c in objs["trainer"].callbacks if isinstance(c, IntraSpeakerClustering))
    assert cb.history and all(r.plot_seconds == 0.0 for r in cb.history)
