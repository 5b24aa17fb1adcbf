"""The body of evaluate.py: get embeddings (checkpoint, backbone or .npz), then fit and score the heads."""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from callbacks.embedding_writer import EmbeddingWriter, merge_rank_files
from datamodules.records import ClipRecord
from datamodules.speaker_datamodule import load_corpus_records
from evaluation.embeddings_io import EmbeddingSet, filter_labels, load_npz, save_npz
from utils.config_checks import ConfigError, check_data_root, check_required, check_targets
from utils.instantiators import instantiate_loggers
from utils.training import save_resolved_config

log = logging.getLogger(__name__)
NO_LABEL = "<none>"


def embedding_source(cfg: DictConfig) -> str:
    if cfg.get("ckpt_path") and cfg.get("embeddings"):
        raise ConfigError("give either ckpt_path=... or embeddings=..., not both")
    return "npz" if cfg.get("embeddings") else "checkpoint" if cfg.get("ckpt_path") else "backbone"


def build_embedding_module(cfg: DictConfig):
    from lightning_modules.embedding_module import EmbeddingModule, load_embedding_module

    if cfg.get("ckpt_path"):
        return load_embedding_module(cfg.ckpt_path)
    return EmbeddingModule(backbone=OmegaConf.to_container(cfg.backbone, resolve=True)).eval()


def cache_key(cfg: DictConfig) -> str:
    """Same checkpoint (path + size + mtime) or backbone, same corpus and audio path -> same embeddings."""
    d = cfg.data
    key: dict[str, Any] = {"data": {k: OmegaConf.to_container(d, resolve=True).get(k) for k in
                                    ("corpus", "root", "corpus_options", "sample_rate", "trim_silence", "normalize_loudness")}}
    if cfg.get("ckpt_path"):
        st = Path(cfg.ckpt_path).stat()
        key["ckpt"] = [str(Path(cfg.ckpt_path).resolve()), st.st_size, st.st_mtime_ns]
    else:
        key["backbone"] = OmegaConf.to_container(cfg.backbone, resolve=True)
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def official_splits(records: list[ClipRecord], split_map: dict | None) -> list[str] | None:
    """Map a corpus's own split names (MSP-Podcast Train/Test1, ESD train/test, ...) to train/test.

    Clips in other splits (e.g. Development) get "" and are left out by `evaluate` with a count.
    """
    if not split_map or any(r.split is None for r in records):
        return None
    lookup = {str(name): side for side, names in split_map.items() for name in names}
    mapped = [lookup.get(str(r.split), "") for r in records]
    return mapped if {"train", "test"} <= set(mapped) else None


def records_to_set(records: list[ClipRecord], embeddings: np.ndarray, label_field: str,
                   split_map: dict | None = None) -> EmbeddingSet:
    if label_field not in ClipRecord.__dataclass_fields__:
        raise ConfigError(f"eval.label_field={label_field!r} is not a record field; use 'emotion4' or 'emotion'")
    labels = [getattr(r, label_field) or NO_LABEL for r in records]
    splits = official_splits(records, split_map)
    if splits is not None and "" in splits:
        unused = Counter(str(r.split) for r, s in zip(records, splits) if not s)
        log.info("official split: clips of %s are in neither train nor test and are left out", dict(unused))
        labels = [NO_LABEL if not s else lab for lab, s in zip(labels, splits)]
        splits = [s or "train" for s in splits]  # placeholder; these rows carry no label and are filtered out
    return EmbeddingSet(
        embeddings=embeddings, emotion=labels, speaker=[r.speaker for r in records],
        split=splits,
        session=[r.session for r in records] if all(r.session for r in records) else None,
        utt_id=[r.utt_id for r in records])


def extract(cfg: DictConfig, out_dir: Path) -> EmbeddingSet:
    """Embed every clip of the corpus through Lightning's predict loop (all devices, any precision)."""
    check_required(cfg, ["data.root", "data.corpus"])
    check_data_root(cfg.data)
    check_targets(cfg.data, "data")
    datamodule = instantiate(cfg.data, _convert_="all")
    h = datamodule.hparams
    datamodule.prepare_data()
    records = load_corpus_records(h.corpus, h.root, h.cache_dir, h.corpus_options)
    if not records:
        raise ValueError(f"corpus {h.corpus} at {h.root} has no clips")
    cache = Path(cfg.paths.log_dir) / "embedding_cache" / f"{cache_key(cfg)}.npy"
    emb = np.load(cache, allow_pickle=False) if cache.exists() else None
    if emb is not None and len(emb) == len(records):
        log.info("embeddings: reusing cache %s (delete it to re-extract)", cache)
    else:
        module = build_embedding_module(cfg)
        if module.backbone.sample_rate != h.sample_rate:
            raise ConfigError(f"backbone samples at {module.backbone.sample_rate} Hz but data.sample_rate={h.sample_rate}")
        writer = EmbeddingWriter(out_dir / "predictions")
        trainer: L.Trainer = instantiate(cfg.trainer, callbacks=[writer], logger=False, use_distributed_sampler=True)
        loader = datamodule.utterance_loader(records, batch_size=cfg.eval.batch_size)
        trainer.predict(module, dataloaders=loader, return_predictions=False)
        if trainer.global_rank != 0:
            return None  # type: ignore[return-value]
        emb, n_padded = merge_rank_files(out_dir / "predictions", len(records))
        if n_padded:
            log.warning("embeddings: %d of %d clips were shorter than one %.2f s window and were zero-padded",
                        n_padded, len(records), module.backbone.window_seconds)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, emb)
    split_map = OmegaConf.to_container(cfg.eval.split_map, resolve=True) if cfg.eval.get("split_map") else None
    emb_set = records_to_set(records, emb, cfg.eval.label_field, split_map)
    save_npz(emb_set, out_dir / "embeddings.npz")
    log.info("embeddings: %d clips -> %s (re-fit heads with embeddings=%s)", len(records), out_dir / "embeddings.npz",
             out_dir / "embeddings.npz")
    return emb_set


def evaluate(cfg: DictConfig) -> dict:
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    save_resolved_config(cfg, out_dir)
    source = embedding_source(cfg)
    emb_set = load_npz(cfg.embeddings) if source == "npz" else extract(cfg, out_dir)
    if emb_set is None:  # non-zero DDP rank after extraction
        return {}
    e = cfg.eval
    unlabeled = int((emb_set.emotion == NO_LABEL).sum())
    if e.get("classes"):
        emb_set, dropped = filter_labels(emb_set, list(e.classes))
        if dropped:
            log.info("evaluation keeps classes %s; rows dropped per label: %s", list(e.classes), dropped)
    elif unlabeled:
        emb_set, _ = filter_labels(emb_set, [c for c in emb_set.classes if c != NO_LABEL])
        log.info("evaluation: %d clips without a %s label left out", unlabeled, e.label_field)
    print(f"Evaluating {len(emb_set)} clips, {len(set(emb_set.speaker))} speakers, labels "
          f"{dict(sorted(Counter(emb_set.emotion.tolist()).items()))}")

    loggers = instantiate_loggers(cfg.get("logger"))
    logger_fn = (lambda d: [lg.log_metrics(d) for lg in loggers]) if loggers else None
    from evaluation.run_heads import run_evaluation

    svm = {"C": e.svm_C, "gamma": e.svm_gamma, "nystroem_threshold": e.nystroem_above,
           "param_grid": OmegaConf.to_container(e.param_grid, resolve=True) if e.grid_search else None}
    head_kwargs = {h: dict(svm) for h in ("svm", "sad_first") if h in e.heads}
    results = run_evaluation(emb_set, heads=list(e.heads), protocol=e.protocol, n_folds=e.n_folds, seed=cfg.seed,
                             balancing=e.balancing, head_kwargs=head_kwargs, out_dir=out_dir, logger_fn=logger_fn)
    if e.get("verification_analysis"):
        from evaluation.verification_analysis import run_verification_analysis

        results["verification"] = run_verification_analysis(emb_set, out_dir=out_dir)
    for lg in loggers:
        _log_images(lg, out_dir)
    return results


def _log_images(logger, out_dir: Path) -> None:
    if hasattr(logger, "log_image"):
        pngs = sorted(out_dir.glob("*.png"))
        if pngs:
            logger.log_image(key="eval/figures", images=[str(p) for p in pngs], caption=[p.stem for p in pngs])
