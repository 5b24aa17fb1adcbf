"""Lightning's WandbLogger with the three things a cluster user needs from it.

- Offline by itself: with `offline: auto` (the default) a run with no API key (no WANDB_API_KEY, no
  wandb entry in ~/.netrc) or with WANDB_MODE=offline logs to `<run dir>/wandb/offline-run-*`, which
  `wandb sync` uploads later; nothing waits on the network.
- One W&B run per training run: the run id is kept in `<run dir>/wandb_run_id.txt`; a run resumed in
  the same run directory (`ckpt_path=last`) continues that W&B run instead of starting a new one.
- The best checkpoint as an artifact (`log_best_checkpoint: true`), also offline (synced later),
  where Lightning's own `log_model` refuses offline mode.
"""
from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

log = logging.getLogger(__name__)
RUN_ID_FILE = "wandb_run_id.txt"


def has_wandb_credentials() -> bool:
    """True when W&B could authenticate without asking (an API key in the environment or ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc().authenticators(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
                                            .split("//")[-1].split("/")[0])
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return bool(auth and auth[2])


def resolve_offline(offline: bool | str) -> bool:
    if offline == "auto":
        mode = os.environ.get("WANDB_MODE", "").lower()
        if mode in ("offline", "dryrun", "disabled"):
            return True
        if mode == "online":
            return False
        return not has_wandb_credentials()
    if isinstance(offline, str):
        raise ValueError(f"logger.wandb.offline={offline!r}: expected true, false or 'auto'")
    return bool(offline)


def stored_run_id(save_dir: str | Path) -> str | None:
    path = Path(save_dir) / RUN_ID_FILE
    return path.read_text().strip() or None if path.is_file() else None


class ProjectWandbLogger(WandbLogger):
    """offline: true | false | "auto" (offline unless W&B credentials are present).
    log_best_checkpoint: at the end of fit, log the best checkpoint (and last.ckpt) as a model artifact.
    Other arguments are WandbLogger's.
    """

    def __init__(self, save_dir: str = ".", offline: bool | str = "auto", log_best_checkpoint: bool = False,
                 id: str | None = None, **kwargs: Any):
        self._offline_resolved = resolve_offline(offline)
        if self._offline_resolved:
            os.environ.setdefault("WANDB_MODE", "offline")
        run_id = id or stored_run_id(save_dir)
        super().__init__(save_dir=save_dir, offline=self._offline_resolved, id=run_id, **kwargs)
        self.log_best_checkpoint = bool(log_best_checkpoint)
        self._best_checkpoint_callback: ModelCheckpoint | None = None

    @property
    def experiment(self):
        run = super().experiment
        self._remember_run_id(run)
        return run

    @rank_zero_only
    def _remember_run_id(self, run) -> None:
        run_id = getattr(run, "id", None)
        if run_id and self.save_dir:
            path = Path(self.save_dir) / RUN_ID_FILE
            if not path.is_file() or path.read_text().strip() != run_id:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(run_id + "\n")

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        if isinstance(checkpoint_callback, ModelCheckpoint) and self._best_checkpoint_callback is None:
            self._best_checkpoint_callback = checkpoint_callback
        super().after_save_checkpoint(checkpoint_callback)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self.log_best_checkpoint and status == "success" and self._best_checkpoint_callback is not None:
            self._log_checkpoint_artifact(self._best_checkpoint_callback)
        super().finalize(status)

    def _log_checkpoint_artifact(self, cb: ModelCheckpoint) -> None:
        import wandb

        files = [p for p in (cb.best_model_path, str(Path(cb.dirpath or ".") / "last.ckpt")) if p and Path(p).is_file()]
        if not files:
            log.warning("log_best_checkpoint: no checkpoint file to log")
            return
        art = wandb.Artifact(f"model-{self.experiment.id}", type="model",
                             metadata={"best_model_path": cb.best_model_path, "monitor": cb.monitor,
                                       "best_model_score": float(cb.best_model_score) if cb.best_model_score is not None else None})
        for f in files:
            art.add_file(f, name=Path(f).name)
        self.experiment.log_artifact(art, aliases=["best", "latest"])
        log.info("W&B: logged %s as artifact model-%s", [Path(f).name for f in files], self.experiment.id)
