"""Shared launcher for train.py / evaluate.py: friendly config errors, then Hydra's own main."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def launch(task: Callable, config_name: str) -> None:
    os.environ.setdefault("PROJECT_ROOT", str(PROJECT_ROOT))
    from utils.config_checks import ConfigError, precheck_overrides

    args = sys.argv[1:]
    multirun = any(a in ("-m", "--multirun") for a in args)
    if not multirun and not any(a.startswith("--") and a not in ("--multirun",) for a in args):
        msg = precheck_overrides(config_name, args)
        if msg:
            print(f"Config error: {msg}", file=sys.stderr)
            sys.exit(2)

    import hydra

    @hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "configs"), config_name=config_name)
    def _main(cfg):
        from utils.console import quiet_console

        quiet_console()
        try:
            return task(cfg)
        except ConfigError as e:
            print(f"Config error: {e}", file=sys.stderr)
            sys.exit(2)

    _main()
