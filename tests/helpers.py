"""Small callbacks the tests plug into a training run through the config (`+callbacks.<name>=...`)."""
from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback


class EpochAsMetric(Callback):
    """Logs `test/epoch` = the epoch index at validation end: with mode=min the best epoch is the first."""

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.log("test/epoch", float(trainer.current_epoch))


class StopAfterEpoch(Callback):
    """Ends fit after epoch `epoch` as a killed job would, leaving the configured max_epochs untouched."""

    def __init__(self, epoch: int = 0):
        self.epoch = int(epoch)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch >= self.epoch:
            trainer.should_stop = True


class RecordProgress(Callback):
    """Records the epoch indices a fit runs, the optimizer step count at its start and the clip
    indices of every training batch ({epoch: [[index, ...], ...]})."""

    def __init__(self):
        self.epochs: list[int] = []
        self.start_step: int | None = None
        self.batches: dict[int, list[list[int]]] = {}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self.batches.setdefault(trainer.current_epoch, []).append(batch["index"].tolist())

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start_step = trainer.global_step

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epochs.append(trainer.current_epoch)
