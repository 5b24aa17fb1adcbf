"""One LightningDataModule for every corpus: the corpus is a parser name, everything else is shared.

prepare_data (one process) builds and caches the manifest; setup (every rank) reads it, holds out
speakers for validation and maps speakers to integer labels. Training batches come from
`PKBatchSampler` (P speakers x K clips, or P x C clusters x K once pseudo-labels are set, each clip's
cluster carried in the batch). Validation batches carry each clip's speaker and emotion label ids
(`data.val_label_field`), which the validation EER and emotion probe read; only validation
speakers' labels are ever put in a batch.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from datamodules.audio import trim_silence
from datamodules.datasets import CropDataset, UtteranceDataset, collate_crops, collate_utterances
from datamodules.records import FOUR_CLASSES, ClipRecord
from datamodules.samplers import PKBatchSampler, item_seed

log = logging.getLogger(__name__)


def load_corpus_records(corpus: str, root: str | Path, cache_dir: str | Path, options: dict | None = None,
                        build: bool = True, quality: dict | None = None) -> list[ClipRecord]:
    """Build (or reuse) the cached manifest of a corpus and return its records.

    `build=False` only reads a manifest built before (every rank in `setup`, after rank 0's `prepare_data`).
    `quality` is `data.quality` (datamodules/audio_quality.py; None = the defaults).
    """
    options = dict(options or {})
    if corpus == "pooled":
        from datamodules.pooled import pooled_records

        return pooled_records(options, lambda c, r, options: load_corpus_records(c, r, cache_dir, options, build, quality))
    if corpus == "synthetic":
        from datamodules.synthetic.corpus import SyntheticCorpusConfig, generate_corpus, parse_synthetic

        manifest = generate_corpus(root, SyntheticCorpusConfig(**options))
        return parse_synthetic(Path(manifest).parent)
    from datamodules.manifest import build_manifest, load_manifest

    return (build_manifest if build else load_manifest)(corpus, root, cache_dir, quality=quality, **options)


def split_speakers(speakers: Sequence[str], n_val: int | float, seed: int) -> tuple[set, set]:
    uniq = sorted(set(speakers))
    # a fraction never rounds to no validation speaker at all (0.25 of 2 speakers is still 1)
    k = max(1, int(round(n_val * len(uniq)))) if isinstance(n_val, float) and 0 < n_val < 1 else int(n_val)
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
                 shuffle_buffer: int = 2000, quality: dict | None = None, val_label_field: str | None = "emotion4",
                 exclude_speakers: Sequence[str] | None = None, prefix_store_workers: int = 0):
        super().__init__()
        self.save_hyperparameters(ignore=["augment"])
        self.augment = augment
        if corpus == "pooled":
            from datamodules.pooled import pool_members

            pool_members(corpus_options)  # every member's root exists, none twice
        elif corpus != "synthetic" and not Path(root).exists():
            raise FileNotFoundError(f"data.root={root!r} does not exist: set data.root to the folder where you unpacked "
                                    f"the {corpus} corpus (see docs/corpora.md for the expected layout)")
        if format not in ("files", "shards"):
            raise ValueError(f"data.format={format!r}: expected 'files' or 'shards'")
        if format == "shards" and not shards_dir:
            raise ValueError("data.format=shards needs data.shards_dir (where the tar shards are written once and read)")
        if val_label_field is not None and val_label_field not in ClipRecord.__dataclass_fields__:
            raise ValueError(f"data.val_label_field={val_label_field!r} is not a record field: use emotion4 (the 4-class "
                             f"set), emotion (the corpus's own labels) or null (no emotion probe)")
        self.train_records: list[ClipRecord] = []
        self.val_records: list[ClipRecord] = []
        self.pseudo_labels: np.ndarray | None = None
        # Called (by train_dataloader) when the first pseudo-labels are needed and none are set yet: the
        # clustering callback installs it, so they are computed as late as possible (after a resume's restore).
        self.pseudo_label_source: Callable[[], Any] | None = None
        self._train_sampler: PKBatchSampler | None = None
        # The encoder's frozen prefix (datamodules/frozen_prefix.py), set by callbacks/frozen_prefix.py: with
        # it, training crops and whole clips are `Prefix`es instead of audio.
        self.prefix_source = None

    def use_prefixes(self, source) -> None:
        """Read (or compute) the encoder's frozen prefix instead of giving it audio; None = audio again."""
        self.prefix_source = source

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
        if h.exclude_speakers:  # e.g. an evaluation fold's test speakers, out of a pool of corpora
            drop = {str(x) for x in h.exclude_speakers}
            n = len(records)
            records = [r for r in records if r.speaker not in drop]
            log.info("data.exclude_speakers: %d clips of %d speakers left out", n - len(records), len(drop))
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
        self.val_speakers = sorted(val_spk)
        field = h.val_label_field
        values = [getattr(r, field) for r in self.val_records] if field else []
        self.val_label_names = list(FOUR_CLASSES) if field == "emotion4" else sorted({v for v in values if v is not None})
        label_id = {name: i for i, name in enumerate(self.val_label_names)}
        self.val_emotion_ids = np.array([label_id.get(v, -1) for v in values] if field else [-1] * len(self.val_records))
        log.info("data: %d train clips from %d speakers, %d validation clips from %d held-out speakers",
                 len(self.train_records), len(self.speakers), len(self.val_records), len(val_spk))
        if h.corpus == "pooled":
            from datamodules.pooled import per_corpus_counts

            log.info("pool (train + validation): %s", per_corpus_counts(self.train_records + self.val_records))

    def seen_speakers(self) -> dict:
        """Speakers (corpus-qualified ids) whose audio or labels a fit on this datamodule learns from
        (training + validation speakers), and `{corpus: root}`: what checkpoints record as provenance."""
        h = self.hparams
        key = (id(self.train_records), len(self.train_records), id(self.val_records), len(self.val_records))
        if getattr(self, "_seen", (None,))[0] != key:  # recomputed only when the record lists change
            self._seen = (key, sorted({r.speaker for r in self.train_records + self.val_records}))
        if h.corpus == "pooled":
            from datamodules.pooled import pooled_roots

            corpora = pooled_roots(h.corpus_options)
        else:
            corpora = {str(h.corpus): str(Path(h.root).resolve())}
        return {"speakers": list(self._seen[1]), "corpora": corpora}

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
        if self._train_sampler is not None:
            self._train_sampler.set_subgroups(clusters)

    # ----- loaders -----
    def _loader_kwargs(self) -> dict:
        """Loader workers: `num_workers`, or `prefix_store_workers` while batches are read from the frozen-prefix
        store (memory-map slices, cheaper to read in-process than to hand over from worker processes)."""
        h = self.hparams
        n = h.prefix_store_workers if getattr(self.prefix_source, "cached", False) else h.num_workers
        return {"num_workers": n, "persistent_workers": n > 0, "pin_memory": False}

    def train_dataset(self) -> CropDataset:
        h = self.hparams
        return CropDataset(self.train_records, self.train_labels, h.sample_rate, h.crop_seconds, random_crop=True,
                           trim=h.trim_silence, normalize_loudness=h.normalize_loudness, augment=self.augment,
                           n_labels=len(self.speakers), prefix_source=self.prefix_source)

    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        if h.format == "shards":
            return self._shard_dataloader()
        if self.pseudo_labels is None and self.pseudo_label_source is not None:
            self.pseudo_label_source()
        self._train_sampler = PKBatchSampler(
            self.train_labels, n_groups=h.n_speakers, n_per_group=h.n_per_speaker,
            subgroups=self.pseudo_labels, n_subgroups=h.n_clusters_per_speaker,
            batches_per_epoch=h.batches_per_epoch, seed=h.seed, group_names=self.speakers)
        return DataLoader(self.train_dataset(), batch_sampler=self._train_sampler, collate_fn=collate_crops,
                          **self._loader_kwargs())

    def _shard_dataloader(self) -> DataLoader:
        """Streaming tar shards (WeSpeaker style): shuffled batches of P*K crops instead of P x K sampling.

        Under DDP, write at least world_size x num_workers shards of equal size and cap steps per epoch
        (trainer.limit_train_batches) so that every rank runs the same number of steps. The shard order
        and the crops follow (data.seed, trainer epoch): a new order every epoch, the same in every rerun.
        """
        from datamodules.shards import ShardDataset, ShardLoader

        h = self.hparams
        crop = self.train_dataset()  # reuse its crop/augment/label logic on streamed audio
        transform = ShardCrops(crop, self.train_records, h.sample_rate, h.trim_silence, h.seed)
        ds = ShardDataset(h.shards_dir, sample_rate=h.sample_rate, shuffle=True, shuffle_buffer=h.shuffle_buffer,
                          seed=h.seed, transform=transform, quality=h.quality)
        transform.dataset = ds
        return ShardLoader(ds, epoch_of=self._current_epoch, batch_size=h.n_speakers * h.n_per_speaker,
                           drop_last=True, collate_fn=collate_crops, **self._loader_kwargs())

    def _current_epoch(self) -> int:
        return int(self.trainer.current_epoch) if self.trainer is not None else 0

    def utterance_loader(self, records: Sequence[ClipRecord], batch_size: int | None = None,
                         speaker_ids: Sequence[int] | None = None, emotion_ids: Sequence[int] | None = None) -> DataLoader:
        h = self.hparams
        ds = UtteranceDataset(records, h.sample_rate, trim=h.trim_silence, normalize_loudness=h.normalize_loudness,
                              speaker_ids=speaker_ids, emotion_ids=emotion_ids, prefix_source=self.prefix_source)
        return DataLoader(ds, batch_size=batch_size or h.val_batch_size, shuffle=False, collate_fn=collate_utterances,
                          **self._loader_kwargs())

    def val_dataloader(self):
        if not self.val_records:
            return []
        speaker_id = {s: i for i, s in enumerate(self.val_speakers)}
        return self.utterance_loader(self.val_records, speaker_ids=[speaker_id[r.speaker] for r in self.val_records],
                                     emotion_ids=self.val_emotion_ids)

    def predict_dataloader(self) -> DataLoader:
        return self.utterance_loader(self.train_records + self.val_records)


class ShardCrops:
    """Transform of streamed shard clips: trim, then the training crop/augment/label, seeded per
    (data.seed, epoch, clip) so crops do not depend on workers. Picklable (worker processes)."""

    def __init__(self, crop: CropDataset, records: Sequence[ClipRecord], sample_rate: int, trim: bool, seed: int):
        self.crop, self.sample_rate, self.trim, self.seed = crop, sample_rate, trim, int(seed)
        self.index = {r.utt_id: i for i, r in enumerate(records)}
        self.dataset: Any = None  # the ShardDataset, for its current epoch

    def __call__(self, record: ClipRecord, wav):
        i = self.index[record.utt_id]
        if self.trim:
            wav = trim_silence(wav, self.sample_rate)
        epoch = self.dataset.epoch if self.dataset is not None else 0
        return self.crop.transform_loaded(i, wav, seed=item_seed(self.seed, epoch, i, 0))
