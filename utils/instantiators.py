"""Instantiate the optional lists of callbacks and loggers from their config groups."""
from __future__ import annotations

import logging

from hydra.utils import instantiate
from lightning.pytorch import Callback
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def _instantiate_group(cfg: DictConfig | None, kind: type, name: str) -> list:
    out = []
    if not cfg:
        return out
    if not isinstance(cfg, DictConfig):
        raise TypeError(f"{name} config must be a mapping of name -> object config, got {type(cfg).__name__}")
    for key, conf in cfg.items():
        if isinstance(conf, DictConfig) and "_target_" in conf:
            obj = instantiate(conf)
            if not isinstance(obj, kind):
                raise TypeError(f"{name}.{key} built a {type(obj).__name__}, expected a {kind.__name__}")
            log.info("%s: %s <%s>", name, key, conf._target_)
            out.append(obj)
    return out


def instantiate_callbacks(cfg: DictConfig | None) -> list[Callback]:
    return _instantiate_group(cfg, Callback, "callbacks")


def instantiate_loggers(cfg: DictConfig | None) -> list[Logger]:
    return _instantiate_group(cfg, Logger, "logger")
