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
                   data_dir: str | Path | None = None, log_dir: str | Path | None = None):
    """`configs/<config_name>` with Hydra `overrides`, its run folder set to `output_dir` (without one,
    `paths.output_dir` cannot be resolved). `data_dir` / `log_dir` replace `paths.data_dir` /
    `paths.log_dir` (tests keep corpora and caches in temporary folders)."""
    os.environ.setdefault("PROJECT_ROOT", str(PROJECT_ROOT))
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    name = config_name if config_name.endswith(".yaml") else f"{config_name}.yaml"
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
    return cfg
