"""Says at the start of training how big a batch is per process and in total.

Under DDP every process draws its own P x K (x C) batch, so the batch an optimizer step averages over
is world_size times the configured one: `data.n_speakers=8 data.n_per_speaker=4` on 4 GPUs is 32 clips
per GPU, 128 per step. Learning rates tuned on one GPU need that factor in mind (README, "Multi-GPU
and clusters"). The figures go to the console (rank 0) and to the loggers' hyperparameters.
"""
from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


def per_process_batch(loader) -> tuple[int | None, str]:
    """(clips per batch on one process, how it is made up) of a training loader; (None, why) if unknown."""
    sampler = getattr(loader, "batch_sampler", None)
    if sampler is not None and hasattr(sampler, "n_groups"):  # datamodules.samplers.PKBatchSampler
        parts = [f"{sampler.n_groups} speakers"]
        if getattr(sampler, "subgroups", None) is not None:
            parts.append(f"{sampler.n_subgroups} clusters")
        parts.append(f"{sampler.n_per_group} clips")
        return int(sampler.batch_size), " x ".join(parts)
    size = getattr(loader, "batch_size", None) or getattr(sampler, "batch_size", None)
    return (int(size), "batch_size") if size else (None, f"unknown for {type(loader).__name__}")


class BatchSizeReport(Callback):
    def __init__(self):
        self.per_process: int | None = None
        self.global_batch: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loader = trainer.train_dataloader
        size, how = per_process_batch(loader)
        world = trainer.world_size * trainer.accumulate_grad_batches
        if size is None:
            log.info("batch size per process: %s", how)
            return
        self.per_process, self.global_batch = size, size * world
        acc = f" x {trainer.accumulate_grad_batches} accumulated" if trainer.accumulate_grad_batches > 1 else ""
        log.info("batch: %d clips per process (%s); %d per optimizer step (%d processes%s)",
                 size, how, self.global_batch, trainer.world_size, acc)
        for logger in trainer.loggers:
            logger.log_hyperparams({"batch/per_process": size, "batch/global": self.global_batch,
                                    "batch/world_size": trainer.world_size})
