"""The speaker datamodule for supervised SER: only labelled clips, and the label in every training batch.

`SpeakerDataModule` never puts a training clip's emotion label in a batch (the label-free objectives
must not read it). Supervised SER training (`experiment=ser_finetune`) needs exactly that, so this
subclass keeps the clips whose `val_label_field` (default `emotion4`) is one of `classes`, holds out
validation speakers among the speakers that have such clips (the same seeded split), and adds
`emotion` (a class index) to every training item. Everything else (P x K batches over speakers, crops,
augmentation, shards, provenance) is the parent's.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from datamodules.datasets import CropDataset
from datamodules.records import FOUR_CLASSES, ClipRecord
from datamodules.speaker_datamodule import SpeakerDataModule

log = logging.getLogger(__name__)


class EmotionCropDataset(CropDataset):
    """CropDataset items plus `emotion`: the clip's class index."""

    def __init__(self, *args, emotions: Sequence[int], **kwargs):
        super().__init__(*args, **kwargs)
        if len(emotions) != len(self.records):
            raise ValueError(f"EmotionCropDataset: {len(emotions)} emotion labels for {len(self.records)} records")
        self.emotions = [int(e) for e in emotions]

    def _item(self, i: int, wav, label: int, speaker: int) -> dict:
        return {**super()._item(i, wav, label, speaker), "emotion": self.emotions[i]}


class EmotionDataModule(SpeakerDataModule):
    """classes: the label set, in the model's output order (null: the four classes for `emotion4`, else
    every label of the field found in the corpus, sorted). Clips outside it are left out and counted."""

    def __init__(self, classes: Sequence[str] | None = None, **kwargs):
        super().__init__(**kwargs)
        if self.hparams.val_label_field is None:
            raise ValueError("data.val_label_field=null: supervised SER training needs a label field "
                             "(emotion4 for the 4-class set, or emotion for the corpus's own labels)")
        if classes is not None:
            classes = [str(c) for c in classes]
            if len(set(classes)) != len(classes) or len(classes) < 2:
                raise ValueError(f"data.classes={classes}: expected at least 2 distinct class names")
        self.classes: list[str] | None = classes
        self.n_unlabelled = 0
        self.train_emotion_ids = np.zeros(0, dtype=np.int64)

    def _class_set(self, records: Sequence[ClipRecord]) -> list[str]:
        field = self.hparams.val_label_field
        if self.classes is not None:
            return self.classes
        if field == "emotion4":
            return list(FOUR_CLASSES)
        return sorted({str(getattr(r, field)) for r in records if getattr(r, field) is not None})

    def _split(self, records: list[ClipRecord]) -> tuple[list[ClipRecord], list[ClipRecord]]:
        field = self.hparams.val_label_field
        classes = self.classes = self._class_set(records)
        keep = set(classes)
        labelled = [r for r in records if getattr(r, field) in keep]
        self.n_unlabelled = len(records) - len(labelled)
        if not labelled:
            raise ValueError(f"no clip of {self.hparams.corpus} has a {field} label in {classes} (data.classes, "
                             f"data.val_label_field)")
        return super()._split(labelled)

    def setup(self, stage: str | None = None) -> None:
        if self.train_records:
            return
        super().setup(stage)
        field, index = self.hparams.val_label_field, {c: i for i, c in enumerate(self.classes)}
        self.val_label_names = list(self.classes)
        self.val_emotion_ids = np.array([index[getattr(r, field)] for r in self.val_records], dtype=np.int64)
        self.train_emotion_ids = np.array([index[getattr(r, field)] for r in self.train_records], dtype=np.int64)
        log.info("SER data: classes %s, training counts %s, %d clips without a label in the set left out",
                 self.classes, self.train_class_counts().tolist(), self.n_unlabelled)

    @property
    def class_names(self) -> list[str]:
        return list(self.classes or [])

    def train_class_counts(self) -> np.ndarray:
        """Clips per class in the training part (validation speakers excluded): the class weights' source."""
        return np.bincount(self.train_emotion_ids, minlength=len(self.classes or []))

    def train_dataset(self) -> EmotionCropDataset:
        h = self.hparams
        return EmotionCropDataset(self.train_records, self.train_labels, h.sample_rate, h.crop_seconds,
                                  random_crop=True, trim=h.trim_silence, normalize_loudness=h.normalize_loudness,
                                  augment=self.augment, n_labels=len(self.speakers), emotions=self.train_emotion_ids,
                                  prefix_source=self.prefix_source)
