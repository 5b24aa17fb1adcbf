"""Compute the part of the encoder that does not train once per clip, before training starts.

At `setup` (after the datamodule's, before the first batch) the callback asks the model's backbone for
its frozen cut (`Backbone.frozen_cut()`: GE2E's weightless mel at least, its frozen LSTM layers under
`ser_finetune` freezing, the distillation student's frozen front end, ...). With one, the datamodule
reads that prefix instead of audio (`SpeakerDataModule.use_prefixes`): from the on-disk store
(`datamodules/frozen_prefix.py`, built here for the training and validation clips it lacks, on the
trainer's device, once per clip whatever the epochs, folds or repeats), or, with `enabled=false`, computed
from the decoded clip every time. Both give the same numbers; a waveform augmentation (`augment=...`) or
streamed shards always compute (they change or hide the audio the store would be keyed on).
Without this callback a model is trained on waveform crops, each crop through the whole encoder.
"""
from __future__ import annotations

import logging
import time

import lightning as L
import torch

from datamodules.frozen_prefix import CachedPrefixes, ComputedPrefixes, PrefixStore, audio_settings

log = logging.getLogger(__name__)


class FrozenPrefixCache(L.Callback):
    """enabled: keep prefixes on disk (true) or compute them every time (false, the same numbers).
    dir: where stores live (one folder per prefix fingerprint and audio pipeline).
    device: where the store is computed: auto (the trainer's device) | cpu | cuda ...
    """

    def __init__(self, enabled: bool = True, dir: str = "data/frozen_prefix", device: str = "auto",
                 progress: bool = True):
        self.enabled, self.dir, self.device, self.progress = bool(enabled), str(dir), str(device), bool(progress)
        self.report: dict = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "use_prefixes"):
            return
        backbone = pl_module.backbone
        cut = backbone.frozen_cut()
        if cut is None:
            self.report = {"cut": None}
            log.info("frozen prefix: nothing of %s is frozen; training crops go through the whole encoder",
                     type(backbone).__name__)
            dm.use_prefixes(None)
            return
        h = dm.hparams
        why_computed = ("callbacks.frozen_prefix.enabled=false" if not self.enabled else
                        "a waveform augmentation changes the audio" if dm.augment is not None else
                        "data.format=shards streams the audio" if h.get("format") == "shards" else None)
        if why_computed:
            dm.use_prefixes(ComputedPrefixes(backbone, cut))
            self.report = {"cut": cut, "store": None, "why": why_computed}
            log.info("frozen prefix: %s of %s computed for every clip it is used on (%s)", cut,
                     type(backbone).__name__, why_computed)
            return
        dm.use_prefixes(None)  # the store is built from audio
        store = PrefixStore.for_backbone(self.dir, backbone, cut, audio_settings(dm))
        records = list(dm.train_records) + list(dm.val_records)
        device = trainer.strategy.root_device if self.device == "auto" else self.device
        t0 = time.perf_counter()
        # the build's loader draws from the global RNG: restore it, so that a run with the store draws the same
        # dropout masks and augmentations as one without (the store never changes a number)
        with torch.random.fork_rng(devices=[]):
            added = store.add(records, self._compute(dm, backbone, cut, device), progress=self.progress)
        seconds = time.perf_counter() - t0
        self.report = {"cut": cut, "store": str(store.dir), "clips": len(records), "computed": added,
                       "seconds": round(seconds, 2), "mbytes": round(store.nbytes() / 2**20, 1)}
        log.info("frozen prefix: %s of %s for %d clips (%d computed now in %.1fs, the rest read back) in %s, %.0f MB",
                 cut, type(backbone).__name__, len(records), added, seconds, store.dir, self.report["mbytes"])
        dm.use_prefixes(CachedPrefixes(backbone, cut, store))

    @staticmethod
    def _compute(dm, backbone, cut: str, device):
        from datamodules.frozen_prefix import compute_prefixes

        run = compute_prefixes(backbone, cut, device)

        def compute(records):
            for batch in dm.utterance_loader(records):
                yield from run((records[int(i)], w) for i, w in zip(batch["index"], batch["wavs"]))

        return compute

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        dm = trainer.datamodule
        if dm is not None and hasattr(dm, "use_prefixes"):
            dm.use_prefixes(None)  # a later model (another cut, other weights) must not read this one's prefixes

