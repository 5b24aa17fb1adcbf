"""One LightningDataModule for every corpus: the corpus is a parser name, everything else is shared.

prepare_data (one process) builds and caches the manifest; setup (every rank) reads it, holds out
speakers for validation and maps speakers to integer labels. Training batches come from
`PKBatchSampler` (P speakers x K clips, or P x C clusters x K once pseudo-labels are set).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from datamodules.audio import trim_silence
from datamodules.datasets import CropDataset, UtteranceDataset, collate_utterances
from datamodules.records import ClipRecord
from datamodules.samplers import PKBatchSampler

log = logging.getLogger(__name__)


def load_corpus_records(corpus: str, root: str | Path, cache_dir: str | Path, options: dict | None = None,
                        build: bool = True, quality: dict | None = None) -> list[ClipRecord]:
    """Build (or reuse) the cached manifest of a corpus and return its records.

    `build=False` only reads a manifest built before (every rank in `setup`, after rank 0's `prepare_data`).
    `quality` is `data.quality` (datamodules/audio_quality.py; None = the defaults).
    """
    options = dict(options or {})
    if corpus == "synthetic":
        from datamodules.synthetic.corpus import SyntheticCorpusConfig, generate_corpus, parse_synthetic

        manifest = generate_corpus(root, SyntheticCorpusConfig(**options))
        return parse_synthetic(Path(manifest).parent)
    from datamodules.manifest import build_manifest, load_manifest

    return (build_manifest if build else load_manifest)(corpus, root, cache_dir, quality=quality, **options)


def split_speakers(speakers: Sequence[str], n_val: int | float, seed: int) -> tuple[set, set]:
    uniq = sorted(set(speakers))
    k = int(round(n_val * len(uniq))) if isinstance(n_val, float) and n_val < 1 else int(n_val)
    if k <= 0:
        return set(uniq), set()
    if k > len(uniq) - 2:
        raise ValueError(f"data.val_speakers={n_val} leaves fewer than 2 training speakers out of {len(uniq)}")
    rng = np.random.default_rng(seed)
    val = set(rng.choice(uniq, size=k, replace=False).tolist())
    return set(uniq) - val, val


class SpeakerDataModule(L.LightningDataModule):
    def __init__(self, corpus: str = "synthetic", root: str = "data/synthetic", cache_dir: str = "data/manifests",
                 corpus_options: dict | None = None, sample_rate: int = 16000, crop_seconds: float = 2.0,
                 n_speakers: int = 8, n_per_speaker: int = 4, n_clusters_per_speaker: int = 2,
                 batches_per_epoch: int | None = None, val_speakers: float | int = 0.2, val_batch_size: int = 32,
                 train_splits: Sequence[str] | None = None, trim_silence: bool = True, normalize_loudness: bool = False,
                 augment: Any = None, num_workers: int = 0, seed: int = 0, speakers: Sequence[str] | None = None,
                 format: str = "files", shards_dir: str | None = None, clips_per_shard: int = 1000,
                 shuffle_buffer: int = 2000, quality: dict | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["augment"])
        self.augment = augment
        if corpus != "synthetic" and not Path(root).exists():
            raise FileNotFoundError(f"data.root={root!r} does not exist: set data.root to the folder where you unpacked "
                                    f"the {corpus} corpus (see docs/corpora.md for the expected layout)")
        if format not in ("files", "shards"):
            raise ValueError(f"data.format={format!r}: expected 'files' or 'shards'")
        if format == "shards" and not shards_dir:
            raise ValueError("data.format=shards needs data.shards_dir (where the tar shards are written once and read)")
        self.train_records: list[ClipRecord] = []
        self.val_records: list[ClipRecord] = []
        self.pseudo_labels: np.ndarray | None = None
        self._train_sampler: PKBatchSampler | None = None

    # ----- data preparation -----
    def prepare_data(self) -> None:
        h = self.hparams
        records = load_corpus_records(h.corpus, h.root, h.cache_dir, h.corpus_options, quality=h.quality)
        if h.format == "shards" and not (Path(h.shards_dir) / "shards.json").exists():
            from datamodules.shards import write_shards

            train, _ = self._split(records)
            write_shards(train, h.shards_dir, clips_per_shard=h.clips_per_shard, sample_rate=h.sample_rate)

    def _split(self, records: list[ClipRecord]) -> tuple[list[ClipRecord], list[ClipRecord]]:
        h = self.hparams
        if h.train_splits:
            keep = set(h.train_splits)
            records = [r for r in records if r.split in keep]
            if not records:
                raise ValueError(f"data.train_splits={list(keep)} matched no clip of {h.corpus}")
        if h.speakers is not None:  # e.g. the training speakers of one evaluation fold
            keep = {str(x) for x in h.speakers}
            missing = sorted(keep - {r.speaker for r in records})
            if missing:
                raise ValueError(f"data.speakers: {missing} are not speakers of {h.corpus} "
                                 f"(known: {sorted({r.speaker for r in records})[:10]}...)")
            records = [r for r in records if r.speaker in keep]
        train_spk, val_spk = split_speakers([r.speaker for r in records], h.val_speakers, h.seed)
        return [r for r in records if r.speaker in train_spk], [r for r in records if r.speaker in val_spk]

    def setup(self, stage: str | None = None) -> None:
        if self.train_records:
            return
        h = self.hparams
        records = load_corpus_records(h.corpus, h.root, h.cache_dir, h.corpus_options, build=False, quality=h.quality)
        self.train_records, self.val_records = self._split(records)
        val_spk = {r.speaker for r in self.val_records}
        self.speakers = sorted({r.speaker for r in self.train_records})
        self.speaker_index = {s: i for i, s in enumerate(self.speakers)}
        self.train_labels = np.array([self.speaker_index[r.speaker] for r in self.train_records])
        log.info("data: %d train clips from %d speakers, %d validation clips from %d held-out speakers",
                 len(self.train_records), len(self.speakers), len(self.val_records), len(val_spk))

    @property
    def num_speakers(self) -> int:
        """Classes for a speaker classifier: speed-perturbed copies count as new speakers (WeSpeaker)."""
        return len(self.speakers) * int(getattr(self.augment, "num_copies", 1))

    # ----- pseudo-labels from clustering (contrastive objectives) -----
    def set_pseudo_labels(self, clusters: Sequence[int]) -> None:
        """Per-train-clip cluster ids (within speaker); switches batches to P speakers x C clusters x K clips."""
        clusters = np.asarray(clusters)
        if len(clusters) != len(self.train_records):
            raise ValueError(f"set_pseudo_labels: {len(clusters)} labels for {len(self.train_records)} training clips")
        self.pseudo_labels = clusters
        if self._train_sampler is not None and self._train_sampler.subgroups is not None:
            self._train_sampler.set_subgroups(clusters)

    # ----- loaders -----
    def _loader_kwargs(self) -> dict:
        n = self.hparams.num_workers
        return {"num_workers": n, "persistent_workers": n > 0, "pin_memory": False}

    def train_dataset(self) -> CropDataset:
        h = self.hparams
        return CropDataset(self.train_records, self.train_labels, h.sample_rate, h.crop_seconds, random_crop=True,
                           trim=h.trim_silence, normalize_loudness=h.normalize_loudness, augment=self.augment,
                           n_labels=len(self.speakers))

    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        if h.format == "shards":
            return self._shard_dataloader()
        self._train_sampler = PKBatchSampler(
            self.train_labels, n_groups=h.n_speakers, n_per_group=h.n_per_speaker,
            subgroups=self.pseudo_labels, n_subgroups=h.n_clusters_per_speaker,
            batches_per_epoch=h.batches_per_epoch, seed=h.seed)
        return DataLoader(self.train_dataset(), batch_sampler=self._train_sampler, **self._loader_kwargs())

    def _shard_dataloader(self) -> DataLoader:
        """Streaming tar shards (WeSpeaker style): shuffled batches of P*K crops instead of P x K sampling.

        Under DDP, write at least world_size x num_workers shards of equal size and cap steps per epoch
        (trainer.limit_train_batches) so that every rank runs the same number of steps.
        """
        from datamodules.shards import ShardDataset

        h = self.hparams
        crop = self.train_dataset()  # reuse its crop/augment/label logic on streamed audio
        index = {r.utt_id: i for i, r in enumerate(self.train_records)}

        def transform(record: ClipRecord, wav):
            if h.trim_silence:
                wav = trim_silence(wav, h.sample_rate)
            return crop.transform_loaded(index[record.utt_id], wav)

        ds = ShardDataset(h.shards_dir, sample_rate=h.sample_rate, shuffle=True, shuffle_buffer=h.shuffle_buffer,
                          seed=h.seed, transform=transform, quality=h.quality)
        ds.set_epoch(self.trainer.current_epoch if self.trainer is not None else 0)
        return DataLoader(ds, batch_size=h.n_speakers * h.n_per_speaker, drop_last=True, **self._loader_kwargs())

    def utterance_loader(self, records: Sequence[ClipRecord], batch_size: int | None = None) -> DataLoader:
        h = self.hparams
        ds = UtteranceDataset(records, h.sample_rate, trim=h.trim_silence, normalize_loudness=h.normalize_loudness)
        return DataLoader(ds, batch_size=batch_size or h.val_batch_size, shuffle=False, collate_fn=collate_utterances,
                          **self._loader_kwargs())

    def val_dataloader(self):
        return self.utterance_loader(self.val_records) if self.val_records else []

    def predict_dataloader(self) -> DataLoader:
        return self.utterance_loader(self.train_records + self.val_records)
