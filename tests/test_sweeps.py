"""Sweeps: every W&B sweep file and Optuna preset optimises what its experiment checkpoints on, the
command a W&B agent would run starts training, and an Optuna search survives a failed trial."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, TINY_CORPUS, make_cfg
from utils.entrypoint import register_resolvers

register_resolvers()  # ${sqlite_url:...} in the Optuna presets, as train.py registers it

SWEEPS = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))
OPTUNA_PRESETS = sorted((ROOT / "configs" / "hparams_search").glob("*_optuna.yaml"))
QUIET = ["callbacks.model_summary=null", "callbacks.progress_bar=null"]


def _experiment_of(command: list[str]) -> str:
    return next(a.split("=", 1)[1] for a in command if str(a).startswith("experiment="))


def _agent_args(parameters: dict) -> list[str]:
    """What `${args_no_hyphens}` expands to for one draw: plain key=value Hydra overrides."""
    out = []
    for key, spec in parameters.items():
        value = spec["values"][0] if "values" in spec else spec.get("value", spec.get("min"))
        out.append(f"{key}={value}")
    return out


def _selection(tmp_path: Path, experiment: str) -> tuple[str, str, str]:
    cfg = make_cfg("train.yaml", tmp_path, [f"experiment={experiment}"])
    return str(cfg.optimized_metric), str(cfg.callbacks.model_checkpoint.monitor), str(cfg.callbacks.model_checkpoint.mode)


def test_every_experiment_has_a_wandb_sweep():
    experiments = {p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml")}
    covered = {_experiment_of(yaml.safe_load(p.read_text())["command"]) for p in SWEEPS}
    assert experiments <= covered, f"experiments without a W&B sweep file: {sorted(experiments - covered)}"


@pytest.mark.parametrize("sweep", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_wandb_sweep_optimises_the_checkpoint_metric_with_plain_overrides(sweep, tmp_path):
    spec = yaml.safe_load(sweep.read_text())
    assert {"program", "method", "metric", "parameters", "command"} <= set(spec)
    assert spec["program"] == "train.py" and "${args_no_hyphens}" in spec["command"]
    assert "${args}" not in spec["command"], "--key=value arguments are not Hydra overrides"
    metric, monitor, mode = _selection(tmp_path, _experiment_of(spec["command"]))
    assert spec["metric"]["name"] == metric == monitor
    assert spec["metric"]["goal"] == {"min": "minimize", "max": "maximize"}[mode]


@pytest.mark.parametrize("preset", OPTUNA_PRESETS, ids=[p.stem for p in OPTUNA_PRESETS])
def test_optuna_preset_optimises_the_checkpoint_metric(preset, tmp_path):
    experiment = yaml.safe_load(preset.read_text())["hydra"]["sweeper"]["study_name"]
    cfg = make_cfg("train.yaml", tmp_path, [f"experiment={experiment}", f"hparams_search={preset.stem}"])
    sweeper = cfg.hydra.sweeper
    assert sweeper.direction == {"min": "minimize", "max": "maximize"}[cfg.callbacks.model_checkpoint.mode]
    assert cfg.optimized_metric == cfg.callbacks.model_checkpoint.monitor
    assert str(sweeper.storage).startswith("sqlite:///") and sweeper.study_name == experiment
    assert sweeper.max_failure_rate >= 1.0, "a failed trial must not stop the search"


def _run(args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="offline", PROJECT_ROOT=str(ROOT))
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


@pytest.mark.parametrize("sweep", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_the_command_a_wandb_agent_runs_starts_training(sweep, tmp_path):
    spec = yaml.safe_load(sweep.read_text())
    fixed = [a for a in spec["command"] if a not in ("${env}", "python", "${program}", "${args_no_hyphens}")]
    args = [*fixed, *_agent_args(spec["parameters"]), "debug=fdr", *TINY_CORPUS, *QUIET,
            f"paths.log_dir={tmp_path}/logs", f"paths.data_dir={tmp_path}/data"]
    proc = _run(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list((tmp_path / "logs").glob("debug/runs/*/config_resolved.yaml"))


def test_optuna_search_records_a_failed_trial_and_completes(tmp_path):
    optuna = pytest.importorskip("optuna")
    marker = tmp_path / "failed_once"
    proc = _run(["-m", "experiment=triplet_speaker", "hparams_search=triplet_optuna", "hydra.sweeper.n_trials=3",
                 "+callbacks.fail._target_=tests.helpers.FailOnce", f"+callbacks.fail.marker={marker}",
                 "debug=fdr", *TINY_CORPUS, *QUIET, f"paths.log_dir={tmp_path}/logs",
                 f"paths.data_dir={tmp_path}/data"], tmp_path, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="triplet_speaker", storage=f"sqlite:///{tmp_path}/logs/optuna.db")
    states = [t.state.name for t in study.trials]
    assert states.count("FAIL") == 1 and states.count("COMPLETE") == 2, states
    assert all(0.0 <= t.values[0] <= 1.0 for t in study.trials if t.state.name == "COMPLETE")
