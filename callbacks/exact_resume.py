"""A resumed run draws exactly the batches the uninterrupted run would have drawn.

Lightning builds the training iterator before it restores a checkpoint (to count steps for the LR
schedule) and reuses it in the resumed epoch. With loader worker processes that iterator has already
asked the sampler for its first batches, of epoch 0's plan, with the pseudo-labels computed before the
checkpoint's were restored. On a resumed fit this callback, once the checkpoint is restored (on
`on_train_start`), sets the P x K sampler to the restored epoch, makes it skip the batches the
interrupted epoch already trained on (a mid-epoch checkpoint: preemption or every-N-steps), and
rebuilds the iterator so workers draw from the right plan.
"""
from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.callbacks import Callback

from datamodules.samplers import PKBatchSampler

log = logging.getLogger(__name__)


class ExactResume(Callback):
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.ckpt_path:
            return
        loader = trainer.train_dataloader
        sampler = getattr(loader, "batch_sampler", None)
        if not isinstance(sampler, PKBatchSampler):
            return  # streamed shards: their order follows the epoch, not a resumable position
        fit_loop = trainer.fit_loop
        epoch = trainer.current_epoch
        done = fit_loop.epoch_loop.batch_progress.current.completed if fit_loop.restarted_mid_epoch else 0
        sampler.set_epoch(epoch)
        sampler.skip_once(epoch, done)
        fetcher = getattr(fit_loop, "_data_fetcher", None)
        if fetcher is not None:
            iter(fetcher)  # a fresh iterator: workers draw this epoch's plan from the right position
        log.info("resumed at epoch %d after %d of its %d batches", epoch, done, len(sampler))
