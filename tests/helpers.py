"""Small callbacks the tests plug into a training run through the config (`+callbacks.<name>=...`), and a
tiny backbone for fast training tests."""
from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from lightning.pytorch.callbacks import Callback
from torch import nn

from callbacks.embedding_writer import EmbeddingWriter
from callbacks.intra_speaker_clustering import IntraSpeakerClustering
from lightning_modules.backbones.base import Backbone
from lightning_modules.triplet_speaker import TripletSpeakerModule


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
    """Records the epoch indices a fit runs, the optimizer step count at its start, the clip indices of
    every training batch ({epoch: [[index, ...], ...]}), their clusters when batches carry them, and the
    validation metrics of every epoch ({epoch: {name: value}})."""

    def __init__(self):
        self.epochs: list[int] = []
        self.start_step: int | None = None
        self.batches: dict[int, list[list[int]]] = {}
        self.clusters: dict[int, list[list[int]]] = {}
        self.val: dict[int, dict[str, float]] = {}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self.batches.setdefault(trainer.current_epoch, []).append(batch["index"].tolist())
        if "cluster" in batch:
            self.clusters.setdefault(trainer.current_epoch, []).append(batch["cluster"].tolist())

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # (not on_validation_epoch_end: callbacks run it before the module logs its validation metrics)
        if not trainer.sanity_checking:
            self.val[trainer.current_epoch] = {k: float(v) for k, v in trainer.callback_metrics.items()
                                               if k.startswith("val/")}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start_step = trainer.global_step

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epochs.append(trainer.current_epoch)


class TinyBackbone(Backbone):
    """Log-mel -> two 1-D convolutions -> mean/std pooling -> linear: trains in seconds on CPU.
    (Tests only; the real encoders are slow on a 2-core CPU.)"""

    def __init__(self, sample_rate: int = 16000, embedding_dim: int = 8, hidden: int = 64, n_mels: int = 32):
        super().__init__()
        self.sample_rate, self.embedding_dim, self.frame_dim = sample_rate, embedding_dim, n_mels
        self.mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=400, hop_length=160, n_mels=n_mels)
        self.conv = nn.Sequential(nn.Conv1d(n_mels, hidden, 3, padding=1), nn.ReLU(), nn.Conv1d(hidden, n_mels, 3, padding=1))
        self.proj = nn.Linear(2 * n_mels, embedding_dim)

    def frames(self, wav: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.log(self.mel(wav) + 1e-6)).transpose(1, 2)

    def embed(self, wav: torch.Tensor) -> torch.Tensor:
        f = self.frames(wav)
        return F.normalize(self.proj(torch.cat([f.mean(1), f.std(1)], -1)), dim=-1)


TINY_BACKBONE = "backbone._target_=tests.helpers.TinyBackbone"
QUIET = ["callbacks.model_summary=null", "callbacks.progress_bar=null", "+trainer.enable_progress_bar=false",
         "data.trim_silence=false", "data.crop_seconds=1.0"]


class RankRecorder(Callback):
    """For spawned DDP runs (whose callback objects never come back): every rank writes its training
    batches' clip indices, its final weights and its logged validation metrics to `out_dir`."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)
        self.batches: list[list[int]] = []
        self.val: list[dict] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self.batches.append(batch["index"].tolist())

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.val.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        rank = trainer.global_rank
        report = next((cb for cb in trainer.callbacks if hasattr(cb, "global_batch")), None)  # BatchSizeReport
        sizes = None if report is None else [report.per_process, report.global_batch]
        (self.out_dir / f"rank{rank}.json").write_text(json.dumps({"batches": self.batches, "val": self.val,
                                                                   "world_size": trainer.world_size,
                                                                   "batch_report": sizes}))
        torch.save({k: v.detach().cpu() for k, v in pl_module.state_dict().items()}, self.out_dir / f"rank{rank}.pt")


class SlowRankWriter(EmbeddingWriter):
    """An EmbeddingWriter whose non-zero ranks finish their predictions late (a slower GPU, a bigger shard)."""

    def __init__(self, out_dir: str, delay_seconds: float = 3.0):
        super().__init__(out_dir)
        self.delay_seconds = float(delay_seconds)

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        if trainer.global_rank != 0:
            time.sleep(self.delay_seconds)
        super().write_on_epoch_end(trainer, pl_module, predictions, batch_indices)


class RankFilesWhenPredictReturns(Callback):
    """Records, on rank 0 when prediction ends (where evaluate.py merges next), which rank files exist."""

    def __init__(self, out_dir: str, record: str):
        self.out_dir, self.record = Path(out_dir), Path(record)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_rank == 0:
            self.record.write_text(json.dumps(sorted(p.name for p in self.out_dir.glob("predictions_rank*.npz"))))


class RecordSpeakerHead(Callback):
    """The AAM-softmax head's weights when training starts and the speaker accuracy of every step."""

    def __init__(self):
        self.initial_w: torch.Tensor | None = None
        self.accuracy: list[float] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.initial_w = pl_module.speaker_loss.W.detach().cpu().clone()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        self.accuracy.append(float(trainer.callback_metrics["train/speaker_acc"]))


class RandomClusters(IntraSpeakerClustering):
    """Control for the contrastive learning test: the real clustering's cluster sizes, but each
    speaker's labels shuffled among its clips (seeded), so clusters carry no structure."""

    def recluster(self, trainer, pl_module):
        rnd = super().recluster(trainer, pl_module)
        dm = trainer.datamodule
        labels = dm.pseudo_labels.copy()
        speakers = np.array([r.speaker for r in dm.train_records])
        rng = np.random.default_rng(self.seed + 1000 * rnd.epoch)
        for spk in np.unique(speakers):
            rows = np.flatnonzero(speakers == spk)
            labels[rows] = rng.permutation(labels[rows])
        dm.set_pseudo_labels(labels)
        self.labels = labels
        return rnd


class NonFiniteLossAt(TripletSpeakerModule):
    """The triplet objective with its loss forced to NaN at one batch index (every epoch). The clip paths
    of the last poisoned batch are kept on the class (the module itself is built inside train())."""

    poisoned_paths: list[str] = []

    def __init__(self, backbone, nan_at_batch: int = 1, **kwargs):
        super().__init__(backbone, **kwargs)
        self.nan_at_batch = int(nan_at_batch)

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        if batch_idx == self.nan_at_batch:
            type(self).poisoned_paths = list(batch["path"])
            return loss * float("nan")
        return loss


class FailOnce(Callback):
    """Fails the first run that uses it (a marker file remembers it across the jobs of a sweep)."""

    def __init__(self, marker: str):
        from pathlib import Path

        self.marker = Path(marker)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.marker.exists():
            self.marker.touch()
            raise RuntimeError("forced failure of this trial (tests.helpers.FailOnce)")


class SignalAtStep(Callback):
    """Sends `signal` to this process after optimizer step `step`, as a cluster preempting the job would."""

    def __init__(self, step: int, signal: str = "SIGTERM"):
        self.step, self.signal = int(step), signal

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        import os
        import signal

        if trainer.global_step == self.step:
            os.kill(os.getpid(), getattr(signal, self.signal))


from sklearn.base import BaseEstimator, ClassifierMixin  # noqa: E402

from evaluation.heads import _ScoredOnOwnLabels  # noqa: E402


class MajorityHead(_ScoredOnOwnLabels, ClassifierMixin, BaseEstimator):
    """A head added by configuration alone (`eval.heads=[..., tests.helpers.MajorityHead]`): it predicts one
    label, `eval.majority.label` when set, else the most frequent training label."""

    def __init__(self, label: str | None = None, class_weight=None, random_state: int = 0):
        self.label, self.class_weight, self.random_state = label, class_weight, random_state

    @classmethod
    def settings(cls, eval_settings: dict, features: dict | None) -> dict:
        return dict(eval_settings.get("majority") or {})

    def fit(self, X, y, groups=None):
        values, counts = np.unique(np.asarray(y), return_counts=True)
        self.classes_ = values
        self.label_ = self.label if self.label is not None else values[counts.argmax()]
        return self

    def predict(self, X):
        return np.full(len(X), self.label_, dtype=self.classes_.dtype)
