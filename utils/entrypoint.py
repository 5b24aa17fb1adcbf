"""Shared launcher for train.py / evaluate.py: friendly config errors, then Hydra's own main.

The task runs inside a wrapper (as in lightning-hydra-template) that always closes the loggers,
failed runs included, so a crashed run's W&B page is marked failed instead of hanging "running".
A failed job in an Optuna search is recorded as a FAILED trial by the sweeper, which goes on
(`max_failure_rate` in the hparams_search presets).
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Callable

PROJECT_ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger(__name__)


def sqlite_url(path: str) -> str:
    """`${sqlite_url:<file>}` in configs: an SQLAlchemy sqlite URL whose folder exists (Optuna storage is
    created before any job has made the log folder)."""
    p = Path(path).expanduser().resolve()
    p.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{p}"


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("sqlite_url"):
        OmegaConf.register_new_resolver("sqlite_url", sqlite_url)


def close_loggers(failed: bool, preempted: bool = False) -> None:
    """Finish an open W&B run (exit code 1 when the task failed; marked preempted when it was stopped by a
    signal, to be continued by ckpt_path=last); other loggers flush on their own."""
    try:
        import wandb
    except ImportError:  # pragma: no cover - wandb is a dependency
        return
    if wandb.run is not None:
        log.info("closing the W&B run (%s)", "preempted" if preempted else "failed" if failed else "finished")
        if preempted:
            wandb.run.mark_preempting()
        wandb.finish(exit_code=1 if failed and not preempted else 0)


def run_task(task: Callable, cfg):
    """Run `task(cfg)`; close loggers whatever happens (the W&B run is marked failed on an exception,
    preempted when a signal stopped it: see callbacks/preemption.py)."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from common.errors import ConfigError

    failed, preempted = True, False
    try:
        out = task(cfg)
        failed = False
        return out
    except SIGTERMException:
        preempted = True
        log.info("stopped by a signal after saving checkpoints/last.ckpt; resume with ckpt_path=last")
        raise
    except ConfigError:  # said in one line by the launcher, no traceback
        raise
    except Exception:
        log.exception("the run failed")
        raise
    finally:
        close_loggers(failed, preempted)
        out_dir = cfg.get("paths", {}).get("output_dir") if hasattr(cfg, "get") else None
        if out_dir:
            log.info("output dir: %s", out_dir)


def is_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # outside a Hydra app
        return False


def launch(task: Callable, config_name: str) -> None:
    os.environ.setdefault("PROJECT_ROOT", str(PROJECT_ROOT))
    register_resolvers()
    from common.errors import ConfigError
    from utils.config_checks import precheck_overrides

    args = sys.argv[1:]
    multirun = any(a in ("-m", "--multirun") for a in args)
    if not multirun and not any(a.startswith("--") and a not in ("--multirun",) for a in args):
        msg = precheck_overrides(config_name, args)
        if msg:
            print(f"Config error: {msg}", file=sys.stderr)
            sys.exit(2)
        from utils.resume import prepare_resume

        msg = prepare_resume(config_name, args)
        if msg:
            print(f"Config error: {msg}", file=sys.stderr)
            sys.exit(2)

    import hydra

    @hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "configs"), config_name=config_name)
    def _main(cfg):
        from utils.console import quiet_console

        quiet_console()
        try:
            return run_task(task, cfg)
        except ConfigError as e:
            print(f"Config error: {e}", file=sys.stderr)
            sys.exit(2)

    _main()
