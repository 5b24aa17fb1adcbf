"""WeSpeaker-style tar shards: sequential reads of big files instead of millions of small ones.

Layout: `out_dir/shard-000000.tar ...` plus `out_dir/shards.json` (shard names, clip counts, format,
skipped clips). Each clip is two tar members with the same key: `<key>.json` = {"record": ClipRecord
dict, "audio": member name} and `<key>.<ext>` = the audio bytes (the original file, or FLAC/WAV
re-encoded at a target rate). Only the stdlib `tarfile` is used; archives are byte-reproducible
(fixed mtime/owner).

Reading (`ShardDataset`): the shard list is permuted with (seed, epoch) — identically on every rank
and worker — and then dealt round-robin to the `world_size x num_workers` consumers, so each clip
is read exactly once per epoch over the union of consumers. Consumers are numbered
`worker * world_size + rank`, so per-rank totals differ by at most one shard (or clip). When the number of shards is not a
multiple of the number of consumers, some consumers get one shard more than others (and with fewer
shards than consumers some get none): clips are still seen exactly once, but ranks yield different
numbers of batches. Under DDP either write at least `world_size x num_workers` shards of equal size
(and cap steps per epoch, e.g. Lightning `limit_train_batches`), or use `partition="clip"`, which
deals individual clips round-robin (every consumer then reads every shard, so more I/O; counts
differ by at most one clip) — the right choice for small evaluation sets.
"""
from __future__ import annotations

import io
import json
import random
import tarfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Optional, Sequence

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from datamodules.audio import AudioDecodeError, audio_info, load_audio, resample, resolve_audio_path
from datamodules.audio_quality import ClipQuality, QualityPolicy, QualityTally, assess_clip
from datamodules.records import ClipRecord

INDEX_NAME = "shards.json"
SHARD_PATTERN = "shard-{:06d}.tar"


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
    tar.addfile(info, io.BytesIO(data))


def _encode(wav: torch.Tensor, sample_rate: int, audio_format: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wav.numpy(), sample_rate, format=audio_format.upper(), subtype="PCM_16")
    return buf.getvalue()


def write_shards(records: Sequence[ClipRecord], out_dir: str | Path, clips_per_shard: int = 1000,
                 sample_rate: Optional[int] = None, audio_format: Literal["flac", "wav"] = "flac",
                 progress: bool = True, overwrite: bool = False) -> list[Path]:
    """Pack records into tar shards; returns the shard paths (in order).

    sample_rate=None stores each file's original bytes (any format libsndfile decodes, whatever the
    extension says); a rate re-encodes every clip (16-bit `audio_format`) at that rate, which also
    fixes mixed-rate corpora once.
    Unreadable clips are left out, counted in the index and reported with a warning.
    """
    if clips_per_shard < 1:
        raise ValueError(f"clips_per_shard must be >= 1, got {clips_per_shard}")
    if audio_format not in ("flac", "wav"):
        raise ValueError(f"audio_format must be 'flac' or 'wav', got {audio_format!r}")
    out = Path(out_dir)
    index_path = out / INDEX_NAME
    if index_path.exists():
        if not overwrite:
            raise FileExistsError(f"{index_path} exists; pass overwrite=True to replace these shards")
        for old in out.glob("shard-*.tar"):
            old.unlink()
        index_path.unlink()
    out.mkdir(parents=True, exist_ok=True)

    iterator: Any = records
    if progress:
        try:
            from tqdm.auto import tqdm
            iterator = tqdm(records, desc="writing shards", unit="clip", mininterval=1.0)
        except ImportError:
            pass

    shards: list[dict] = []
    skipped: list[tuple[str, str]] = []
    tar: Optional[tarfile.TarFile] = None
    in_shard = 0
    key_counter = 0

    def close_current() -> None:
        nonlocal tar
        if tar is not None:
            tar.close()
            tmp = out / (shards[-1]["name"] + ".tmp")
            tmp.replace(out / shards[-1]["name"])
            tar = None

    for rec in iterator:
        src = resolve_audio_path(rec.path)
        try:
            if sample_rate is None:
                audio_info(src)  # fail now rather than at training time (the format is read from the content)
                data, ext = src.read_bytes(), src.suffix.lower()
            else:
                data, ext = _encode(load_audio(src, sample_rate), sample_rate, audio_format), f".{audio_format}"
        except (AudioDecodeError, OSError) as e:
            skipped.append((rec.path, str(e)))
            continue
        if tar is None:
            shards.append({"name": SHARD_PATTERN.format(len(shards)), "num_clips": 0})
            tar = tarfile.open(out / (shards[-1]["name"] + ".tmp"), "w")
            in_shard = 0
        key = f"{key_counter:09d}"
        key_counter += 1
        meta = {"record": rec.to_dict(), "audio": key + ext}
        _add_member(tar, key + ".json", json.dumps(meta).encode())
        _add_member(tar, key + ext, data)
        in_shard += 1
        shards[-1]["num_clips"] = in_shard
        if in_shard >= clips_per_shard:
            close_current()
    close_current()

    index = {"version": 1, "sample_rate": sample_rate, "audio_format": audio_format if sample_rate else "original",
             "num_clips": sum(s["num_clips"] for s in shards), "shards": shards, "skipped": skipped}
    tmp_index = out / (INDEX_NAME + ".tmp")
    tmp_index.write_text(json.dumps(index, indent=1))
    tmp_index.replace(index_path)
    if skipped:
        warnings.warn(f"write_shards: {len(skipped)} clip(s) left out (listed in {index_path}), e.g. {skipped[:3]}", stacklevel=2)
    return [out / s["name"] for s in shards]


def read_index(shard_dir: str | Path) -> dict:
    path = Path(shard_dir)
    path = path if path.name == INDEX_NAME else path / INDEX_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no shard index {path}; write shards with datamodules.shards.write_shards")
    return json.loads(path.read_text())


def _decode(data: bytes, target_sr: int, name: str,
            policy: Optional[QualityPolicy] = None) -> tuple[torch.Tensor, Optional[ClipQuality]]:
    try:
        samples, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile raises several types
        raise AudioDecodeError(f"cannot decode shard member {name}: {e}") from e
    quality = assess_clip(samples, sr, policy) if policy is not None else None
    wav = torch.from_numpy(np.ascontiguousarray(samples.mean(axis=1)))
    return resample(wav, sr, target_sr), quality


class ShardDataset(IterableDataset):
    """Stream (ClipRecord, waveform at `sample_rate`) from shards, each clip once per epoch across ranks x workers.

    shards: a shard folder (with shards.json), the shards.json path, or an explicit list of tar files.
    rank/world_size: default to torch.distributed when initialised, else 0/1.
    shuffle: permute shard order per epoch and pass clips through a `shuffle_buffer`-sized buffer.
    transform: called as `transform(record, wav)`; its result is yielded instead of the pair.
    quality: `data.quality` (datamodules/audio_quality.py; None = the defaults, `{enabled: false}` = off):
    every clip is checked as the manifest probe checks it; skipped and kept-but-flagged clips are counted
    (`quality_counts`, this process's last pass) and reported in a warning at the end of each pass.

    Call `set_epoch(epoch)` before each epoch's iterator is created (`ShardLoader` does it at every
    `iter()`). The epoch lives in shared memory, so it also reaches DataLoader workers that copied the
    dataset earlier (persistent workers).
    """

    def __init__(self, shards: str | Path | Sequence[str | Path], sample_rate: int = 16000, shuffle: bool = False,
                 shuffle_buffer: int = 1000, seed: int = 0, rank: Optional[int] = None,
                 world_size: Optional[int] = None, partition: Literal["shard", "clip"] = "shard",
                 transform: Optional[Callable[[ClipRecord, torch.Tensor], Any]] = None, quality: Any = None):
        super().__init__()
        if isinstance(shards, (str, Path)):
            index = read_index(shards)
            base = Path(shards) if Path(shards).name != INDEX_NAME else Path(shards).parent
            self.shards = [base / s["name"] for s in index["shards"]]
            self.num_clips: Optional[int] = index["num_clips"]
        else:
            self.shards, self.num_clips = [Path(s) for s in shards], None
        missing = [str(s) for s in self.shards if not s.is_file()]
        if missing:
            raise FileNotFoundError(f"ShardDataset: shard file(s) not found: {missing[:5]}")
        if partition not in ("shard", "clip"):
            raise ValueError(f"partition must be 'shard' or 'clip', got {partition!r}")
        if (rank is None) != (world_size is None):
            raise ValueError("pass both rank and world_size, or neither")
        if world_size is not None and not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.sample_rate, self.shuffle, self.shuffle_buffer, self.seed = sample_rate, shuffle, shuffle_buffer, seed
        self.rank, self.world_size, self.partition, self.transform = rank, world_size, partition, transform
        self._epoch = torch.zeros((), dtype=torch.long).share_memory_()
        self.quality = QualityPolicy.from_config(quality)
        self.quality_counts: dict[str, int] = {}

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def _consumer(self) -> tuple[int, int]:
        """(this consumer's index, number of consumers) over ranks x DataLoader workers."""
        rank, world = self.rank, self.world_size
        if rank is None:
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
            else:
                rank, world = 0, 1
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # Interleave ranks first so that per-RANK totals (what DDP needs balanced) differ by at most one unit.
        return worker * world + rank, world * workers

    def _shard_order(self) -> list[Path]:
        order = list(self.shards)
        if self.shuffle:
            random.Random(f"shards-{self.seed}-{self.epoch}").shuffle(order)  # same on every consumer
        return order

    def _raw_clips(self, consumer: int, consumers: int) -> Iterator[tuple[dict, bytes, str]]:
        order = self._shard_order()
        if self.partition == "shard":
            mine, keep = order[consumer::consumers], None
        else:
            mine, keep = order, consumer
        clip_index = 0
        for shard in mine:
            pending: dict[str, dict] = {}
            with tarfile.open(shard, mode="r|") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    key, _, ext = member.name.partition(".")
                    if ext == "json":
                        meta = json.loads(tar.extractfile(member).read())
                        pending[key] = meta
                        continue
                    meta = pending.pop(key, None)
                    if meta is None:
                        raise ValueError(f"{shard}: audio member {member.name} has no preceding {key}.json")
                    take = keep is None or clip_index % consumers == keep
                    clip_index += 1
                    if take:
                        yield meta, tar.extractfile(member).read(), f"{shard.name}:{member.name}"
            if pending:
                raise ValueError(f"{shard}: metadata without audio for key(s) {sorted(pending)[:5]}")

    def _buffered(self, items: Iterator, rng: random.Random) -> Iterator:
        buffer: list = []
        for item in items:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(item)
                continue
            j = rng.randrange(len(buffer))
            yield buffer[j]
            buffer[j] = item
        rng.shuffle(buffer)
        yield from buffer

    def __iter__(self) -> Iterator[Any]:
        consumer, consumers = self._consumer()
        if consumer == 0 and self.partition == "shard" and len(self.shards) % consumers:
            warnings.warn(f"ShardDataset: {len(self.shards)} shards over {consumers} rank x worker consumers: "
                          "consumers get unequal clip counts (each clip is still read once); see the module docstring", stacklevel=2)
        raw = self._raw_clips(consumer, consumers)
        if self.shuffle and self.shuffle_buffer > 1:
            raw = self._buffered(raw, random.Random(f"buffer-{self.seed}-{self.epoch}-{consumer}"))
        tally = QualityTally(self.quality) if self.quality is not None else None
        for meta, data, name in raw:
            record = ClipRecord.from_dict(meta["record"])
            wav, quality = _decode(data, self.sample_rate, name, self.quality)
            if tally is not None and quality.category is not None:
                tally.add(f"{record.path} ({name})", quality)
                tally.raise_for_errors(f"ShardDataset ({record.path})")
                if quality.action == "skip":
                    continue
            yield self.transform(record, wav) if self.transform is not None else (record, wav)
        if tally is not None:
            self.quality_counts = dict(tally.counts)
            report = tally.report(f"ShardDataset consumer {consumer}")
            if report:
                warnings.warn(report, stacklevel=2)


class ShardLoader(DataLoader):
    """A DataLoader over a ShardDataset that sets the dataset's epoch whenever an epoch's iterator starts.

    Lightning calls `set_epoch` only on a loader's samplers, which a DataLoader over an IterableDataset
    does not let us supply; `epoch_of` (e.g. the trainer's current epoch) is read at every `iter()`
    instead, so the shard order changes every epoch without rebuilding the loader.
    """

    def __init__(self, dataset: ShardDataset, *args, epoch_of: Optional[Callable[[], int]] = None, **kwargs):
        super().__init__(dataset, *args, **kwargs)
        self.epoch_of = epoch_of

    def __iter__(self):
        if self.epoch_of is not None:
            self.dataset.set_epoch(int(self.epoch_of()))
        return super().__iter__()
