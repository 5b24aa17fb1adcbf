"""The train task (train.py's body): build everything from the config, fit, return the metrics."""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from utils.config_checks import check_data_root, check_required, check_targets
from common.cpu_features import warn_if_slow_bf16
from utils.instantiators import instantiate_callbacks, instantiate_loggers

log = logging.getLogger(__name__)


@rank_zero_only
def save_resolved_config(cfg: DictConfig, output_dir: str | Path) -> Path:
    path = Path(output_dir) / "config_resolved.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, path, resolve=True)
    return path


def log_hyperparameters(loggers: list, cfg: DictConfig, model: L.LightningModule) -> None:
    """The resolved config plus parameter counts, so dashboards can filter and compare runs by them."""
    if not loggers:
        return
    params = {"model/params/total": sum(p.numel() for p in model.parameters()),
              "model/params/trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    params["model/params/non_trainable"] = params["model/params/total"] - params["model/params/trainable"]
    hparams = {**OmegaConf.to_container(cfg, resolve=True), **params}
    for lg in loggers:
        lg.log_hyperparams(hparams)


def build_model(cfg: DictConfig) -> L.LightningModule:
    backbone = OmegaConf.to_container(cfg.backbone, resolve=True)
    # Not recursive: the backbone stays a plain config dict, so checkpoints can rebuild it.
    return instantiate(cfg.model, backbone=backbone, _recursive_=False, _convert_="all")


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str | Path) -> str | None:
    """A checkpoint file, or `last` / `auto`: this run folder's checkpoints/last.ckpt (train.py has already
    moved into the run being resumed, see utils/resume.py); `auto` starts fresh when there is none."""
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path in ("last", "auto"):
        p = Path(output_dir) / "checkpoints" / "last.ckpt"
        if ckpt_path == "auto" and not p.exists():
            log.info("ckpt_path=auto: nothing to resume, starting a new run")
            return None
    else:
        p = Path(ckpt_path)
    if not p.exists():
        raise FileNotFoundError(f"ckpt_path={ckpt_path!r}: {p} does not exist (train.py resumes the newest run "
                                "launched with the same overrides; or pass the checkpoint file itself)")
    return str(p)


def optimized_metric_value(cfg: DictConfig, metrics: dict[str, Any], sweeping: bool = False) -> float | None:
    """The value sweepers optimise (`optimized_metric`). In a sweep a missing or non-finite value is an
    error (the sweeper records a FAILED trial rather than a made-up score); a single run only warns."""
    name = cfg.get("optimized_metric")
    if not name:
        return None
    value = metrics.get(name)
    if value is None or not math.isfinite(float(value)):
        logged = sorted(k for k, v in metrics.items() if isinstance(v, float))
        msg = (f"optimized_metric={name!r} is {'missing' if value is None else value} at the end of this run "
               f"(logged: {logged})")
        if sweeping:
            raise ValueError(msg)
        log.warning(msg)
        return None if value is None else float(value)
    return float(value)


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    check_required(cfg, ["data.root", "data.corpus"])
    check_data_root(cfg.data)
    check_targets(cfg.data, "data")
    check_targets(cfg.backbone, "backbone")
    check_targets(cfg.model, "model", extra_keys={"model": {"backbone"}})
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    output_dir = cfg.paths.output_dir
    save_resolved_config(cfg, output_dir)

    datamodule: L.LightningDataModule = instantiate(cfg.data, _convert_="all")
    model = build_model(cfg)
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    loggers = instantiate_loggers(cfg.get("logger"))
    if loggers and not any(isinstance(cb, LearningRateMonitor) for cb in callbacks):
        callbacks.append(LearningRateMonitor(logging_interval="step"))  # the LR curve on every dashboard
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    warn_if_slow_bf16(trainer)  # bf16 asked on a CPU that only emulates it: say so before the run starts
    log_hyperparameters(loggers, cfg, model)

    ckpt = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    trainer.fit(model=model, datamodule=datamodule, ckpt_path=ckpt)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    best = next((cb.best_model_path for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)), "")
    if best:
        log.info("best checkpoint: %s", best)
    metrics["best_ckpt_path"] = best
    return metrics, {"cfg": cfg, "datamodule": datamodule, "model": model, "trainer": trainer}
