"""One way to compose a config outside Hydra's main: utils.compose.compose_config (scripts and tests use it)."""
from __future__ import annotations

import re

from omegaconf import OmegaConf

from tests.conftest import ROOT
from utils.compose import compose_config


def test_compose_config_resolves_like_a_run(tmp_path):
    cfg = compose_config("train.yaml", ["experiment=contrastive_mtl"], tmp_path / "run", data_dir=tmp_path / "data")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["paths"]["output_dir"] == str(tmp_path / "run")
    assert resolved["callbacks"]["model_checkpoint"]["dirpath"] == str(tmp_path / "run" / "checkpoints")
    assert resolved["data"]["root"] == str(tmp_path / "data" / "synthetic")
    assert compose_config("evaluate", [], tmp_path).task_name == "evaluate"


def test_nothing_else_composes_configs_itself():
    """Hydra's compose API appears only in utils/compose.py (and in the command-line prechecks, which
    compose to find typos, not to run)."""
    allowed = {"utils/compose.py", "utils/config_checks.py", "tests/test_compose.py"}
    offenders = []
    for path in [*ROOT.glob("*.py"), *ROOT.glob("scripts/*.py"), *ROOT.glob("tests/*.py"), *ROOT.glob("utils/*.py")]:
        rel = path.relative_to(ROOT).as_posix()
        if rel not in allowed and re.search(r"\binitialize_config_dir\b|from hydra import compose|hydra\.compose\(",
                                            path.read_text()):
            offenders.append(rel)
    assert offenders == [], offenders
