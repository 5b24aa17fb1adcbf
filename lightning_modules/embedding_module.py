"""What every objective shares: a backbone, the optimiser, validation on held-out speakers, prediction,
the non-finite-loss guard and the provenance every checkpoint records.

Objectives subclass `EmbeddingModule` and implement only `training_step`. Because the backbone
config is stored in the hyperparameters, any checkpoint of any objective can be reloaded with
`load_from_checkpoint(path)` and used for evaluation.

Validation (validation speakers only; their batches carry speaker and emotion label ids):
- `val/eer`: speaker-verification EER over pairs of validation clips (what speaker objectives select on);
- `val/probe_ua`, `val/probe_wa` every `probe_every_n_epochs` epochs (at epochs N-1, 2N-1, ... like
  ModelCheckpoint's `every_n_epochs`): a linear emotion probe scored speaker-independently within the
  validation speakers (`validation_metrics.speaker_independent_probe`); emotion objectives select on
  `val/probe_ua`. Clips without a label are left out and counted (`val/probe_clips` = those used).
Under DDP the validation embeddings of all ranks are gathered, rank 0 computes the metrics and
broadcasts them, so every rank logs the same values (checkpoint monitors are per rank).

Provenance: `checkpoint["seen_speakers"]` (sorted corpus-qualified speaker ids whose audio or labels
shaped the weights: this fit's training + validation speakers, plus those of the `init_from` and
resumed checkpoints), `checkpoint["seen_corpora"]` (`{corpus: root}`) and
`checkpoint["provenance_unknown_from"]` (checkpoints in its warm-start history that recorded no speakers:
then nobody can say whom the weights heard, and evaluation says so), so evaluation can refuse to score a
speaker the encoder has already met.
"""
from __future__ import annotations

import functools
import logging
import math
from typing import Any, Mapping

import lightning as L
import numpy as np
import torch

from evaluation.eer import compute_eer, pairwise_trials
from lightning_modules.backbone_factory import build_backbone
from lightning_modules.backbones.base import Backbone
from lightning_modules.clip_embedding import embed_clips
from lightning_modules.validation_metrics import speaker_independent_probe, unweighted_weighted_accuracy

log = logging.getLogger(__name__)

NONFINITE_MODES = ("error", "skip")


UNKNOWN_PROVENANCE_KEY = "provenance_unknown_from"


def read_provenance(checkpoint: Mapping, source: str = "") -> tuple[set[str] | None, dict[str, str], list[str]]:
    """(seen speakers, seen corpora, checkpoints in its history that recorded no speakers) of a checkpoint dict.

    seen speakers is None for a checkpoint that records none (from elsewhere, or older): nobody can say
    whom its weights heard, and a warm start from it inherits that (`provenance_unknown_from`)."""
    seen = checkpoint.get("seen_speakers")
    unknown = list(checkpoint.get(UNKNOWN_PROVENANCE_KEY) or [])
    if seen is None:
        unknown.append(source or "a checkpoint without seen_speakers")
    return (None if seen is None else set(seen)), dict(checkpoint.get("seen_corpora") or {}), unknown


def load_backbone_weights(backbone: Backbone, ckpt_path: str, prefix: str = "backbone.") -> tuple:
    """Warm start: copy `backbone.*` weights from a checkpoint of any of our modules (safe loading).

    Returns the checkpoint's provenance (`read_provenance`): the warm-started weights carry it."""
    from lightning_modules.checkpoints import read_checkpoint

    ckpt = read_checkpoint(ckpt_path).raw
    state = ckpt.get("state_dict", ckpt)
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not sub:
        raise ValueError(f"init_from={ckpt_path}: no '{prefix}*' weights in this checkpoint")
    missing, unexpected = backbone.load_state_dict(sub, strict=False)
    if missing or unexpected:
        raise ValueError(f"init_from={ckpt_path}: backbone mismatch; missing {missing[:5]}, unexpected {unexpected[:5]} "
                         f"(was it trained with another backbone config?)")
    log.info("warm start: loaded %d backbone tensors from %s", len(sub), ckpt_path)
    return read_provenance(ckpt, str(ckpt_path))


def _guard_training_step(step):
    @functools.wraps(step)
    def guarded(self: "EmbeddingModule", batch, batch_idx, *args, **kwargs):
        return self.guard_nonfinite(step(self, batch, batch_idx, *args, **kwargs), batch, batch_idx)

    guarded._nonfinite_guarded = True
    return guarded


class EmbeddingModule(L.LightningModule):
    """lr, weight_decay, warmup_steps, scheduler ("cosine" | "none"): AdamW and its schedule.
    backbone_lr_scales: {backbone submodule: factor}: its parameters learn at factor x their group's lr
        (`filterbank: 30`: DeepTalk's DeepVOX filterbank trained from scratch, configs/optim/triplet.yaml); a name
        that matches no trainable parameter of this backbone (e.g. GE2E) is named in a warning and ignored.
    init_from: checkpoint of any objective to warm-start the backbone from.
    val_max_pairs: verification trials sampled for `val/eer`.
    probe_every_n_epochs: emotion probe schedule (0 = never); probe_folds: speaker folds of the probe
        (at most the number of labelled validation speakers); probe_C: its inverse L2 strength.
    nonfinite_loss: "error" (stop, naming the batch's clips) or "skip" (drop the batch, counted).
    """

    def __init_subclass__(cls, **kwargs):
        # Every objective's training_step goes through the non-finite guard (the shared training path).
        super().__init_subclass__(**kwargs)
        step = cls.__dict__.get("training_step")
        if step is not None and not getattr(step, "_nonfinite_guarded", False):
            cls.training_step = _guard_training_step(step)

    def __init__(self, backbone: Backbone | Mapping[str, Any], lr: float = 1e-3, weight_decay: float = 1e-4,
                 warmup_steps: int = 0, scheduler: str = "cosine", init_from: str | None = None,
                 val_max_pairs: int = 200_000, probe_every_n_epochs: int = 1, probe_folds: int = 5,
                 probe_C: float = 1.0, nonfinite_loss: str = "error",
                 backbone_lr_scales: Mapping[str, float] | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"] if isinstance(backbone, Backbone) else [])
        if nonfinite_loss not in NONFINITE_MODES:
            raise ValueError(f"model.nonfinite_loss={nonfinite_loss!r}: expected one of {NONFINITE_MODES}")
        if int(probe_every_n_epochs) < 0:
            raise ValueError(f"model.probe_every_n_epochs={probe_every_n_epochs}: expected >= 0 (0 = no probe)")
        if int(probe_folds) < 2:
            raise ValueError(f"model.probe_folds={probe_folds}: expected >= 2")
        for name, factor in (backbone_lr_scales or {}).items():
            if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor <= 0:
                raise ValueError(f"model.backbone_lr_scales.{name}={factor!r}: expected a positive number")
        self.backbone = build_backbone(backbone)
        self.seen_speakers: set[str] = set()
        self.seen_corpora: dict[str, str] = {}
        self.unknown_provenance: list[str] = []  # warm starts whose speakers nobody recorded
        if init_from:
            self._inherit(*load_backbone_weights(self.backbone, init_from))
        self.n_nonfinite_batches = 0
        self._val: list[dict[str, torch.Tensor]] = []
        self._reported_unlabelled = False

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.backbone.embed(wav)

    # ----- the non-finite guard (wraps every subclass's training_step) -----
    def guard_nonfinite(self, out: Any, batch: Mapping, batch_idx: int) -> Any:
        loss = out.get("loss") if isinstance(out, Mapping) else out
        if not isinstance(loss, torch.Tensor):
            return out
        local_finite = bool(torch.isfinite(loss.detach()).all())
        finite = local_finite
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:  # every rank must take the same branch
            finite = trainer.strategy.reduce_boolean_decision(local_finite, all=True)
        if finite:
            return out
        where = (f"epoch {self.current_epoch}, batch {batch_idx}, optimizer step {self.global_step}"
                 if trainer is not None else f"batch {batch_idx}")
        paths = list(batch.get("path", [])) if isinstance(batch, Mapping) else []
        clips = (f"its clips: {', '.join(map(str, paths))}" if paths else "its clips: (batch carries no paths)") \
            if not local_finite else "the non-finite loss was on another rank"
        if self.hparams.nonfinite_loss == "error":
            raise FloatingPointError(f"non-finite training loss ({float(loss.detach().float().mean())}) at {where}; "
                                     f"{clips}. Set model.nonfinite_loss=skip to skip such batches (counted)")
        self.n_nonfinite_batches += 1
        log.warning("skipped batch with a non-finite training loss at %s (%d skipped so far); %s", where,
                    self.n_nonfinite_batches, clips)
        self.log("train/nonfinite_batches", float(self.n_nonfinite_batches), batch_size=1)
        return None

    # ----- validation on held-out speakers -----
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        emb = embed_clips(self, batch["wavs"]).values
        n = len(emb)
        row = {"embedding": emb, "index": batch["index"].cpu()}
        for key in ("speaker", "emotion"):
            row[key] = batch[key].cpu() if key in batch else torch.full((n,), -1, dtype=torch.long)
        self._val.append(row)

    def probe_due(self) -> bool:
        every = int(self.hparams.probe_every_n_epochs)
        return every > 0 and (self.current_epoch + 1) % every == 0

    def _gathered_validation(self) -> dict[str, np.ndarray]:
        """This epoch's validation rows of every rank, each clip once, ordered by dataset index."""
        if self._val:
            rows = {k: torch.cat([r[k] for r in self._val]) for k in self._val[0]}
        else:  # a rank without validation batches still takes part in the gather
            rows = {"embedding": torch.zeros(0, self.backbone.embedding_dim),
                    **{k: torch.zeros(0, dtype=torch.long) for k in ("index", "speaker", "emotion")}}
        self._val.clear()
        if self.trainer.world_size > 1:
            rows = {k: self._all_gather_rows(v) for k, v in rows.items()}
        if not len(rows["index"]):
            return {}
        idx = rows["index"].numpy()
        _, first = np.unique(idx, return_index=True)  # DistributedSampler pads with repeats
        return {k: v.numpy()[first] for k, v in rows.items()}

    def _all_gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """all_gather of per-rank tensors whose first dimension may differ (padded, then trimmed)."""
        device = self.device
        t = t.to(device)
        counts = self.all_gather(torch.tensor(len(t), device=device)).reshape(-1).tolist()
        n_max = max(int(c) for c in counts)
        padded = torch.cat([t, t.new_zeros((n_max - len(t), *t.shape[1:]))])
        everything = self.all_gather(padded).reshape(len(counts), n_max, *t.shape[1:])
        return torch.cat([everything[r, : int(c)] for r, c in enumerate(counts)]).cpu()

    def validation_metrics(self, rows: dict[str, np.ndarray]) -> dict[str, float]:
        out: dict[str, float] = {}
        if not rows:
            return out
        emb, speakers, emotions = rows["embedding"], rows["speaker"], rows["emotion"]
        bad = ~np.isfinite(emb).all(1)
        if bad.any():
            weights = "finite" if all(bool(torch.isfinite(p).all()) for p in self.parameters()) else "NOT finite"
            return {"error": f"validation at epoch {self.current_epoch}: the encoder gave non-finite embeddings for "
                             f"{int(bad.sum())} of {len(bad)} validation clips (dataset indices "
                             f"{rows['index'][bad][:5].tolist()}); its weights are {weights}"}
        if len(np.unique(speakers)) >= 2:
            scores, labels, _, _ = pairwise_trials(emb, speakers, max_pairs=self.hparams.val_max_pairs, seed=0)
            if 0 < labels.sum() < len(labels):
                out["val/eer"] = compute_eer(scores, labels)
        if not self.probe_due():
            return out
        labelled = emotions >= 0
        if not self._reported_unlabelled and (~labelled).any():
            log.info("emotion probe: %d of %d validation clips have no label and are left out", int((~labelled).sum()),
                     len(labelled))
            self._reported_unlabelled = True
        if len(np.unique(speakers[labelled])) < 2 or len(np.unique(emotions[labelled])) < 2:
            log.warning("emotion probe skipped: it needs labelled clips of at least 2 validation speakers and 2 classes "
                        "(data.val_label_field, data.val_speakers)")
            return out
        pred = speaker_independent_probe(emb[labelled], emotions[labelled], speakers[labelled],
                                         self.hparams.probe_folds, self.hparams.probe_C)
        out["val/probe_ua"], out["val/probe_wa"] = unweighted_weighted_accuracy(pred, emotions[labelled])
        out["val/probe_clips"] = float(labelled.sum())
        return out

    def on_validation_epoch_end(self) -> None:
        rows = self._gathered_validation()
        if self.trainer.sanity_checking:
            return
        metrics = self.validation_metrics(rows) if self.trainer.is_global_zero else {}
        if self.trainer.world_size > 1:
            metrics = self.trainer.strategy.broadcast(metrics, src=0)
        if "error" in metrics:  # raised on every rank together
            raise FloatingPointError(metrics["error"])
        for name, value in metrics.items():
            self.log(name, value, prog_bar=name in ("val/eer", "val/probe_ua"), sync_dist=False)

    # ----- prediction: whole-utterance embeddings for evaluation -----
    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        out = embed_clips(self, batch["wavs"])
        return {"embeddings": out.values, "index": batch["index"].cpu(), "n_padded": out.n_padded}

    # ----- checkpoints: the class to rebuild, and which speakers shaped the weights -----
    def _inherit(self, speakers, corpora: Mapping[str, str], unknown=()) -> None:
        self.seen_speakers |= set(speakers or ())
        for corpus, root in corpora.items():
            self.seen_corpora.setdefault(str(corpus), str(root))
        for src in unknown:
            if src not in self.unknown_provenance:
                self.unknown_provenance.append(str(src))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._inherit(*read_provenance(checkpoint, "the resumed checkpoint"))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Lets evaluate.py rebuild the right objective from the checkpoint alone.
        checkpoint["module_class"] = f"{type(self).__module__}.{type(self).__qualname__}"
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if hasattr(dm, "seen_speakers"):
            seen = dm.seen_speakers()
            self._inherit(seen["speakers"], seen["corpora"])
        elif self._trainer is not None and not getattr(self, "_warned_provenance", False):
            log.warning("checkpoint provenance: the datamodule (%s) cannot say which speakers it trains on; "
                        "seen_speakers only lists those inherited from earlier checkpoints", type(dm).__name__)
            self._warned_provenance = True
        checkpoint["seen_speakers"] = sorted(self.seen_speakers)
        checkpoint["seen_corpora"] = dict(sorted(self.seen_corpora.items()))
        checkpoint[UNKNOWN_PROVENANCE_KEY] = list(self.unknown_provenance)

    # ----- optimisation -----
    def optimizer_param_groups(self) -> list[dict]:
        """AdamW parameter groups; objectives with parts trained from scratch (heads) give them their own lr."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def scaled_param_groups(self, groups: list[dict]) -> list[dict]:
        """`groups` with the backbone parameters named by `backbone_lr_scales` split off, at factor x their lr.

        A parameter under several names takes the longest name's factor."""
        scales = {f"backbone.{k}": float(v) for k, v in (self.hparams.get("backbone_lr_scales") or {}).items()}
        if not scales:
            return groups
        names = {id(p): n for n, p in self.named_parameters()}

        def prefix_of(p: torch.Tensor) -> str | None:
            name = names.get(id(p), "")
            hits = [k for k in scales if name == k or name.startswith(k + ".")]
            return max(hits, key=len) if hits else None

        out, used = [], set()
        for group in groups:
            split: dict[str | None, list] = {}
            for p in group["params"]:
                split.setdefault(prefix_of(p), []).append(p)
            base_lr = float(group.get("lr", self.hparams.lr))
            for prefix, params in split.items():
                if prefix is not None:
                    used.add(prefix)
                out.append({**group, "params": params} if prefix is None else
                           {**group, "params": params, "lr": base_lr * scales[prefix]})
        unused = sorted(k.removeprefix("backbone.") for k in set(scales) - used)
        if unused:
            log.warning("model.backbone_lr_scales: %s has no trainable parameters under %s; ignored",
                        type(self.backbone).__name__, unused)
        return out

    def configure_optimizers(self):
        h = self.hparams
        groups = self.scaled_param_groups([g for g in self.optimizer_param_groups() if g["params"]])
        opt = torch.optim.AdamW(groups, lr=h.lr, weight_decay=h.weight_decay)
        if h.scheduler == "none":
            return opt
        if h.scheduler != "cosine":
            raise ValueError(f"model.scheduler={h.scheduler!r}: expected 'cosine' or 'none'")
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warm = int(h.warmup_steps)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            progress = min(1.0, (step - warm) / max(1, total - warm))
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
