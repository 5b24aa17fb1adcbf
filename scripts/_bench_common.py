"""Shared bits of the benchmark scripts: machine description and composing train configs."""
from __future__ import annotations

import os
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def machine_description() -> str:
    import torch

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, Python {platform.python_version()}, "
            f"load average {load}")


def compose_train_cfg(overrides: list[str], output_dir: str):
    """A train.yaml config as train.py would build it, outside a Hydra run."""
    os.environ.setdefault("PROJECT_ROOT", str(ROOT))
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train.yaml", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = output_dir
        cfg.hydra.runtime.output_dir = output_dir
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    return cfg
