"""Find the run to resume, so `ckpt_path=last` needs no run directory on the command line.

`ckpt_path=last` resumes the newest run of the same task launched with the same overrides (the
experiment, data, model ... everything but `ckpt_path` and `hydra.*`) that has a
`checkpoints/last.ckpt`, and continues in that run's folder (same logs, same W&B run id).
`ckpt_path=auto` does the same when such a run exists and starts a new run otherwise: the form for
jobs that a cluster may requeue (`scripts/slurm/train.sbatch`).

The chosen folder reaches Hydra through the `SER_RUN_DIR` environment variable (read by
`configs/hydra/default.yaml`), which DDP worker processes inherit.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import yaml

log = logging.getLogger(__name__)
RUN_DIR_ENV = "SER_RUN_DIR"
RESUME_WORDS = ("last", "auto")


def _comparable(overrides: Sequence[str]) -> list[str]:
    """Overrides that define the run (order-insensitive): not ckpt_path, not Hydra's own settings."""
    keep = []
    for o in overrides:
        key = o.lstrip("+~").split("=", 1)[0]
        if key == "ckpt_path" or key.startswith("hydra.") or key.startswith("hydra/"):
            continue
        keep.append(o)
    return sorted(keep)


def run_overrides(run_dir: Path) -> list[str] | None:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return None
    return [str(o) for o in data] if isinstance(data, list) else None


def find_resumable_run(log_dir: str | Path, task_name: str, overrides: Sequence[str]) -> Path | None:
    """Newest `<log_dir>/<task_name>/runs/*` with `checkpoints/last.ckpt` and the same defining overrides."""
    runs = Path(log_dir) / task_name / "runs"
    if not runs.is_dir():
        return None
    want = _comparable(overrides)
    candidates = []
    for run in runs.iterdir():
        last = run / "checkpoints" / "last.ckpt"
        if not last.is_file():
            continue
        have = run_overrides(run)
        if have is not None and _comparable(have) == want:
            candidates.append((last.stat().st_mtime, run))
    return max(candidates)[1] if candidates else None


def requested_resume(args: Sequence[str]) -> str | None:
    """'last' or 'auto' when the command line asks to resume without naming a checkpoint file."""
    for a in args:
        if a.startswith("ckpt_path="):
            value = a.split("=", 1)[1].strip("'\"")
            return value if value in RESUME_WORDS else None
    return None


def prepare_resume(config_name: str, args: Sequence[str]) -> str | None:
    """Point Hydra at the run to resume (via SER_RUN_DIR); returns a message when `last` finds nothing.

    Does nothing when the user chose the folder (`hydra.run.dir=...`) or SER_RUN_DIR is already set
    (a DDP worker started by the launcher).
    """
    mode = requested_resume(args)
    if mode is None or os.environ.get(RUN_DIR_ENV) or any(a.startswith("hydra.run.dir=") for a in args):
        return None
    from utils.compose import compose_config

    cfg = compose_config(config_name, [a for a in args if not a.startswith("ckpt_path=")], output_dir="/tmp")
    log_dir, task = str(cfg.paths.log_dir), str(cfg.task_name)
    run = find_resumable_run(log_dir, task, list(args))
    if run is None:
        if mode == "auto":
            return None
        return (f"ckpt_path=last: no run of task '{task}' with these overrides has a checkpoints/last.ckpt under "
                f"{Path(log_dir) / task / 'runs'}; pass ckpt_path=<file>, or ckpt_path=auto to start a new run "
                "when there is nothing to resume")
    os.environ[RUN_DIR_ENV] = str(run)
    print(f"resuming {run} (checkpoints/last.ckpt)", flush=True)
    return None
