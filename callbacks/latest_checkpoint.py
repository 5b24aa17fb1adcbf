"""`last.ckpt` = the latest training state, after every epoch (and every N steps), whatever the monitor says.

Lightning's `ModelCheckpoint(save_last=True)` refreshes `last.ckpt` only when it saves a top-k
checkpoint in the same step (Lightning >= 2.5), so with a monitor and `save_top_k: 1` the "last"
file silently stays at the best epoch and `ckpt_path=last` throws training away. This callback
owns `last.ckpt` on its own schedule and writes it atomically (a temporary file renamed over the
old one), so a run killed while saving still has the previous complete state.

It is a `Checkpoint`, so Lightning runs it after every other callback's epoch-end hook (their
state, e.g. pseudo-labels, is then current in the file).
"""
from __future__ import annotations

import os
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Checkpoint

LAST_NAME = "last.ckpt"


class LatestCheckpoint(Checkpoint):
    """dirpath: where `last.ckpt` lives (the run's checkpoints folder).
    every_n_train_steps: also save after every N optimizer steps (0 = only at epoch ends), so a
        preempted run loses at most N steps.
    """

    def __init__(self, dirpath: str | Path, every_n_train_steps: int = 0, filename: str = LAST_NAME):
        if int(every_n_train_steps) < 0:
            raise ValueError(f"LatestCheckpoint every_n_train_steps={every_n_train_steps}: expected >= 0")
        self.dirpath = Path(dirpath)
        self.every_n_train_steps = int(every_n_train_steps)
        self.filename = filename
        self._saved_at_step: int | None = None

    @property
    def path(self) -> Path:
        return self.dirpath / self.filename

    def _skip(self, trainer: L.Trainer) -> bool:
        return bool(trainer.fast_dev_run) or trainer.sanity_checking

    def save(self, trainer: L.Trainer) -> Path:
        """Write the current state to `last.ckpt` (every rank must call this: saving is collective)."""
        tmp = self.dirpath / f".{self.filename}.tmp"
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(tmp, weights_only=False)  # rank 0 writes; ends with a barrier on every rank
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
        trainer.strategy.barrier("LatestCheckpoint.save")
        self._saved_at_step = trainer.global_step
        return self.path

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        n = self.every_n_train_steps
        step = trainer.global_step
        if n and not self._skip(trainer) and step > 0 and step % n == 0 and step != self._saved_at_step:
            self.save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Runs after the epoch's validation in Lightning 2.x, so the state includes its metrics.
        if not self._skip(trainer):
            self.save(trainer)

    def state_dict(self) -> dict:
        return {"every_n_train_steps": self.every_n_train_steps}
