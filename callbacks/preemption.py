"""Preemption-safe training: on SIGTERM or SIGUSR1, save `last.ckpt` at the next batch boundary and exit.

Lightning's own SIGTERM handler sets `trainer.received_sigterm`; its loop then raises
`SIGTERMException` at the end of the running batch (after the optimizer and scheduler steps, so the
state is consistent). This callback saves the checkpoint from `on_exception` through
`LatestCheckpoint.save` (atomic, every rank), and routes SIGUSR1, which SLURM sends ahead of the time
limit (`#SBATCH --signal=USR1@90`), into the same path. The process exits with status 0; running
the same command with `ckpt_path=last` (or `auto`) resumes mid-epoch: the P x K sampler skips the
batches the interrupted epoch already trained on (`SpeakerDataModule.train_dataloader`).
"""
from __future__ import annotations

import logging
import signal
import threading
from typing import Sequence

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class PreemptionCheckpoint(Callback):
    """signals: extra signals treated like SIGTERM (names, e.g. ["SIGUSR1"]); SIGTERM itself is Lightning's."""

    def __init__(self, signals: Sequence[str] = ("SIGUSR1",)):
        self.signals = [str(s) for s in signals]
        for name in self.signals:
            if not hasattr(signal, name):
                raise ValueError(f"PreemptionCheckpoint signals: {name!r} is not a signal on this platform")
        self._trainer: L.Trainer | None = None
        self._previous: dict[int, object] = {}
        self.saved_path: str | None = None

    # ----- signals -----
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or threading.current_thread() is not threading.main_thread():
            return
        self._trainer = trainer
        for name in self.signals:
            sig = getattr(signal, name)
            if sig == signal.SIGTERM:
                continue
            self._previous[sig] = signal.signal(sig, self._request_stop)

    def _request_stop(self, signum, frame) -> None:
        log.info("received %s: saving last.ckpt after the current batch, then exiting", signal.Signals(signum).name)
        if self._trainer is not None:  # the flag Lightning's SIGTERM handler sets; its loop does the rest
            self._trainer._signal_connector.received_sigterm = True
        previous = self._previous.get(signum)
        if callable(previous):  # e.g. Lightning's SLURM requeue handler
            previous(signum, frame)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    # ----- the save -----
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        from callbacks.latest_checkpoint import LatestCheckpoint

        latest = next((cb for cb in trainer.callbacks if isinstance(cb, LatestCheckpoint)), None)
        if latest is None:
            log.warning("preempted, but no LatestCheckpoint callback is configured: nothing saved")
            return
        self.saved_path = str(latest.save(trainer))
        log.info("preempted at epoch %d, step %d: saved %s; run the same command with ckpt_path=last to resume",
                 trainer.current_epoch, trainer.global_step, self.saved_path)
