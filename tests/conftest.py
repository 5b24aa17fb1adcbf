"""Shared fixtures: configs composed like train.py does, pointed at a tiny synthetic corpus in tmp dirs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from utils.compose import compose_config

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "corpora"
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
os.environ.setdefault("WANDB_MODE", "offline")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# A corpus small enough for seconds-long tests, big enough for P x K batches and held-out speakers.
TINY_CORPUS = ["data.corpus_options.n_speakers=8", "data.corpus_options.clips_per_emotion=2",
               "data.n_speakers=4", "data.n_per_speaker=2", "data.crop_seconds=1.0", "data.val_speakers=2"]


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory) -> Path:
    """One synthetic corpus cache shared by the whole session (generation is deterministic)."""
    return tmp_path_factory.mktemp("synthetic_cache")


def make_cfg(config_name: str, tmp_path: Path, overrides: list[str], data_dir: Path | None = None) -> DictConfig:
    overrides = list(overrides)
    if "backbone._target_=tests.helpers.TinyBackbone" in overrides and not any(
            o.startswith("backbone.sample_rate=") for o in overrides):
        # the tiny test encoder keeps 16 kHz (the rate its tests were measured at), whatever the default
        # backbone's rate (DeepTalk: 8 kHz) that its config otherwise inherits
        overrides.append("backbone.sample_rate=16000")
    return compose_config(config_name, overrides, output_dir=tmp_path, log_dir=tmp_path / "logs", data_dir=data_dir)


@pytest.fixture
def train_cfg_factory(tmp_path, synthetic_cache):
    def factory(*overrides: str, tiny: bool = True, out: str | None = None) -> DictConfig:
        """out: a sub-folder of the test's tmp dir for this run (several runs in one test)."""
        run_dir = tmp_path / out if out else tmp_path
        return make_cfg("train.yaml", run_dir, (TINY_CORPUS if tiny else []) + list(overrides), synthetic_cache)

    yield factory
    GlobalHydra.instance().clear()


def shared_or_skip(*parts: str) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not available: {p} (../shared is absent in a user's clone)")
    return p


@pytest.fixture(scope="module")
def one_thread():
    """Per-frame encoder work is many small kernels: one thread beats two on a shared 2-core box.
    Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
