"""Wall time of every epoch (training and its validation together), logged as `time/epoch_seconds`: what
the speed goals of BENCHMARKS.md compare (scripts/benchmark_crossval.py)."""
from __future__ import annotations

import time

import lightning as L


class EpochTimer(L.Callback):
    def __init__(self):
        self.seconds: list[float] = []
        self._t0: float | None = None

    def on_train_epoch_start(self, trainer, pl_module):
        self._t0 = time.perf_counter()

    def _stop(self, trainer, pl_module):
        if self._t0 is None:
            return
        self.seconds.append(time.perf_counter() - self._t0)
        self._t0 = None
        if trainer.loggers:
            for lg in trainer.loggers:
                lg.log_metrics({"time/epoch_seconds": self.seconds[-1]}, step=trainer.global_step)

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self._stop(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module):
        if not trainer.val_dataloaders:  # no validation this run: the epoch ends here
            self._stop(trainer, pl_module)
