"""Compose a config outside Hydra's main (scripts, tests) exactly as train.py / evaluate.py would see it.

The one place that knows what a composed config needs to behave like a Hydra run: the run folder
(`paths.output_dir`, `hydra.runtime.output_dir`), a job number, and the HydraConfig singleton that
`${hydra:...}` interpolations read.
"""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "configs"


def compose_config(config_name: str, overrides: list[str] | tuple[str, ...] = (), output_dir: str | Path | None = None,
                   data_dir: str | Path | None = None, log_dir: str | Path | None = None, inside_run: bool = False):
    """`configs/<config_name>` with Hydra `overrides`, its run folder set to `output_dir` (without one,
    `paths.output_dir` cannot be resolved). `data_dir` / `log_dir` replace `paths.data_dir` /
    `paths.log_dir` (tests keep corpora and caches in temporary folders).

    inside_run: composed from inside a running Hydra task (crossval.py's chained stages): the keys that read
    Hydra's runtime (`${hydra:...}`) are resolved into the returned config, and the running task's Hydra state
    is put back, so its own config keeps resolving as before."""
    os.environ.setdefault("PROJECT_ROOT", str(PROJECT_ROOT))
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    name = config_name if config_name.endswith(".yaml") else f"{config_name}.yaml"
    gh = GlobalHydra.instance()
    saved = (gh.hydra if gh.is_initialized() else None, HydraConfig.instance().cfg)
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        if output_dir is not None:
            cfg.paths.output_dir = str(output_dir)
            cfg.hydra.runtime.output_dir = str(output_dir)
        if log_dir is not None:
            cfg.paths.log_dir = str(log_dir)
        if data_dir is not None:
            cfg.paths.data_dir = str(data_dir)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    if inside_run:
        from omegaconf import OmegaConf

        with open_dict(cfg):
            for key in ("experiment_name", "paths.output_dir", "paths.work_dir"):
                OmegaConf.update(cfg, key, OmegaConf.select(cfg, key, default=None), force_add=True)
        GlobalHydra.instance().clear()
        if saved[0] is not None:
            GlobalHydra.instance().initialize(saved[0])
        HydraConfig.instance().cfg = saved[1]
    return cfg
