"""Objective: supervised SER training on the shared backbone (`experiment=ser_finetune`).

The encoder (any backbone, optionally warm-started from any objective's checkpoint with `init_from`)
feeds a layer-weighted pooling and a small classifier:

1. every layer the backbone exposes (`backbone.layers(wav)`, a list of (B, T, D_i); a backbone without
   it contributes its `frames`) is pooled over time (`stats`: mean, or mean and std), layer-normalised
   and projected to `pooled_dim` (layers differ in width and scale: GE2E's mel power vs its LSTM
   outputs), then summed with softmax weights over layers (s3prl's featurizer idea, weights learned and
   logged as `train/layer_weight_<layer name>`); `pooling=embedding` uses the final embedding instead;
2. an MLP (`classifier_hidden` units, 0 = linear) gives class logits;
3. the loss is cross-entropy with class weights n / (C * n_c) from the training part's label counts
   (`class_weights=balanced`, sklearn's "balanced"; `none` = unweighted).

Freezing (`freeze`): `all` = the encoder is fixed (no gradient, eval mode: a probe with a learned layer
mix); `none` = everything trains; `partial` = the first `freeze_stages` encoder stages are fixed. The
stages, bottom to top (`encoder_stages`): GE2E: mel (no weights), LSTM layer 1, 2, 3, the embedding
projection; DeepTalk: the DeepVOX filterbank, the reference encoder's convolutions (with their batch
norms, kept in eval mode when frozen), its GRU, the style-token layer; the context encoder: its front end,
the input projection, then each transformer block; any other backbone: its top-level submodules in
order, or the `(name, [parameter name prefixes])` list its `freeze_stages_spec()` returns.

The encoder learns at `lr` and the pooling and classifier at `head_lr` (they start from scratch).
Validation scores the validation speakers' whole clips (`val/ua`: mean recall over the classes present,
what evaluate.py calls UA; `val/wa`; `val/loss`): experiments select the checkpoint and stop early on
`val/ua`. Whole clips are cut into the backbone's utterance windows (`Backbone.clip_windows`, the
windows every utterance path uses: GE2E's partials); their pooled layer statistics are averaged and
classified once.

The predict.py SER checkpoint interface (docs/predict.md): `class_names` is a hyper-parameter (filled
from the datamodule at fit time) and `predict_proba(wavs)` returns (N, C) probabilities.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn

from datamodules.prefix import Prefix, batch_size_of, cat_batches
from evaluation.metrics import unweighted_accuracy
from lightning_modules.backbones.base import Backbone, owned_frames
from lightning_modules.embedding_module import EmbeddingModule

log = logging.getLogger(__name__)

FREEZE_MODES = ("all", "partial", "none")
POOLINGS = ("layers", "embedding")
STATS = ("mean", "mean_std")
STATS_NORMS = ("layer", "batch")
CLIP_POOLINGS = ("windows", "frames")
CLASS_WEIGHTS = ("balanced", "none")


# ----- pieces the tests check on their own -----
def class_weights_from_counts(counts: Sequence[int]) -> Tensor:
    """sklearn's "balanced" weights n / (C * n_c) over the C classes that have clips; 0 for absent ones."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or (counts < 0).any() or counts.sum() <= 0:
        raise ValueError(f"class counts must be non-negative with at least one clip, got {counts.tolist()}")
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def _stage_prefixes(backbone: Backbone) -> list[tuple[str, list[str]]]:
    """(stage name, parameter-name prefixes) bottom to top; see the module docstring."""
    from lightning_modules.backbones.context_encoder import ContextEncoderBackbone
    from lightning_modules.backbones.deeptalk import DeepTalkBackbone
    from lightning_modules.backbones.ge2e import GE2EBackbone

    spec = getattr(backbone, "freeze_stages_spec", None)
    if callable(spec):
        return [(str(n), list(p)) for n, p in spec()]
    if isinstance(backbone, GE2EBackbone):
        layers = [(f"lstm layer {i + 1}", [f"lstm.weight_ih_l{i}", f"lstm.weight_hh_l{i}", f"lstm.bias_ih_l{i}",
                                           f"lstm.bias_hh_l{i}"]) for i in range(backbone.lstm.num_layers)]
        return [("mel", []), *layers, ("embedding projection", ["linear."])]
    if isinstance(backbone, DeepTalkBackbone):
        return [("filterbank", ["filterbank."]),
                ("reference convolutions", ["reference_encoder.convs.", "reference_encoder.bns."]),
                ("reference GRU", ["reference_encoder.gru."]), ("style tokens", ["style_tokens."])]
    if isinstance(backbone, ContextEncoderBackbone):
        blocks = [(f"block {i + 1}", [f"context.blocks.{i}."]) for i in range(len(backbone.context.blocks))]
        return [("front end", ["front_end."]),
                ("input projection", ["feature_norm.", "feature_proj.", "context.mask_embedding",
                                      "context.positional.", "context.extra_tokens", "context.input_norm.",
                                      "context.alibi_scale"]), *blocks, ("final norm", ["context.final_norm."])]
    return [(name, [f"{name}."]) for name, _ in backbone.named_children()]


def encoder_stages(backbone: Backbone) -> list[tuple[str, list[str]]]:
    """(stage name, its parameter names) bottom to top; every parameter is in exactly one stage."""
    names = [n for n, _ in backbone.named_parameters()]
    stages, taken = [], set()
    for stage, prefixes in _stage_prefixes(backbone):
        mine = [n for n in names if n not in taken and any(n == p or n.startswith(p) for p in prefixes)]
        taken.update(mine)
        stages.append((stage, mine))
    left = [n for n in names if n not in taken]
    if left:
        stages.append(("other", left))
    return stages


def _rows(x: Tensor | Prefix, start: int, stop: int) -> Tensor | Prefix:
    return Prefix(x.values[start:stop], x.cut, x.n_samples) if isinstance(x, Prefix) else x[start:stop]


class LayerWeightedPooling(nn.Module):
    """Per-layer time statistics -> normalisation -> Linear(pooled_dim), summed with softmax weights.

    norm: "layer" normalises each clip's statistics of a layer across their columns (LayerNorm); "batch"
    standardises every column across clips (BatchNorm without affine, running statistics at evaluation:
    what the frozen probe's StandardScaler does)."""

    def __init__(self, layer_dims: Sequence[int], pooled_dim: int, stats: str = "mean", norm: str = "layer"):
        super().__init__()
        if stats not in STATS:
            raise ValueError(f"model.stats={stats!r}: expected one of {STATS}")
        if norm not in STATS_NORMS:
            raise ValueError(f"model.stats_norm={norm!r}: expected one of {STATS_NORMS}")
        self.stats = stats
        k = 2 if stats == "mean_std" else 1
        self.norms = nn.ModuleList((nn.LayerNorm(d * k) if norm == "layer" else nn.BatchNorm1d(d * k, affine=False))
                                   for d in layer_dims)
        self.projections = nn.ModuleList(nn.Linear(d * k, pooled_dim) for d in layer_dims)
        self.layer_logits = nn.Parameter(torch.zeros(len(layer_dims)))

    def time_stats(self, layers: Sequence[Tensor]) -> list[Tensor]:
        """[(B, T_i, D_i)] or [(B, D_i)] (already pooled) -> [(B, k * D_i)]."""
        out = []
        for x in layers:
            x = x.float()
            if x.dim() == 2:
                out.append(torch.cat([x, torch.zeros_like(x)], -1) if self.stats == "mean_std" else x)
            elif self.stats == "mean":
                out.append(x.mean(1))
            else:  # two-pass moments: torch's std over the middle dimension was 2.5x slower on CPU
                mean = x.mean(1, keepdim=True)
                out.append(torch.cat([mean.squeeze(1), (x - mean).square().mean(1).sqrt()], -1))
        return out

    @property
    def weights(self) -> Tensor:
        return self.layer_logits.softmax(0)

    def forward(self, pooled: Sequence[Tensor]) -> Tensor:
        if len(pooled) != len(self.projections):
            raise ValueError(f"LayerWeightedPooling: {len(pooled)} layers, built for {len(self.projections)}")
        w = self.weights
        return sum(w[i] * proj(norm(p)) for i, (p, norm, proj) in enumerate(zip(pooled, self.norms, self.projections)))


class SERFinetuneModule(EmbeddingModule):
    """class_names: the classes, in output order (null: the datamodule's `class_names`, at fit time).
    freeze: all | partial | none; freeze_stages: encoder stages fixed under `partial`.
    pooling: layers | embedding; stats: mean | mean_std (per layer, over time); pooled_dim: width of the
        pooled representation; classifier_hidden: hidden units of the classifier (0 = linear); dropout.
    class_weights: balanced (from the training part's counts) | none.
    stats_norm: layer (LayerNorm of each clip's statistics) | batch (every column standardised across clips).
    clip_pooling: how a whole clip's statistics are formed from its windows: windows (the mean of each window's
        statistics) | frames (the statistics of all its frames, each counted once: features=layer_stats' rule).
    lr: the encoder's learning rate; head_lr: the pooling's and classifier's.
    All EmbeddingModule options apply as well (init_from, weight_decay, scheduler, warmup_steps, ...).
    """

    def __init__(self, backbone: Backbone | Mapping[str, Any], class_names: Sequence[str] | None = None,
                 freeze: str = "partial", freeze_stages: int = 2, pooling: str = "layers", stats: str = "mean_std",
                 pooled_dim: int = 256, classifier_hidden: int = 0, dropout: float = 0.2,
                 class_weights: str = "balanced", head_lr: float = 1e-2, max_windows_per_batch: int = 64,
                 stats_norm: str = "layer", clip_pooling: str = "windows", **kwargs):
        kwargs.setdefault("probe_every_n_epochs", 0)  # its own classifier is scored instead of a probe
        super().__init__(backbone, **kwargs)
        self.save_hyperparameters(ignore=["backbone"] if isinstance(backbone, Backbone) else [])
        if freeze not in FREEZE_MODES:
            raise ValueError(f"model.freeze={freeze!r}: expected one of {FREEZE_MODES}")
        if pooling not in POOLINGS:
            raise ValueError(f"model.pooling={pooling!r}: expected one of {POOLINGS}")
        if class_weights not in CLASS_WEIGHTS:
            raise ValueError(f"model.class_weights={class_weights!r}: expected one of {CLASS_WEIGHTS}")
        if not head_lr > 0:
            raise ValueError(f"model.head_lr={head_lr}: expected > 0")
        stages = encoder_stages(self.backbone)
        if freeze == "partial" and not 0 < int(freeze_stages) <= len(stages):
            raise ValueError(f"model.freeze_stages={freeze_stages}: expected 1..{len(stages)} for this backbone "
                             f"(stages: {[s for s, _ in stages]})")
        self.frozen_parameters = self._apply_freeze(stages)
        self.unread_parameters = self._fix_unread_parameters()
        if clip_pooling not in CLIP_POOLINGS:
            raise ValueError(f"model.clip_pooling={clip_pooling!r}: expected one of {CLIP_POOLINGS}")
        self.pooling = LayerWeightedPooling(self._layer_dims(), pooled_dim, stats, stats_norm)
        self.classifier: nn.Module | None = None
        if class_names:
            self._build_classifier([str(c) for c in class_names])
        self.train_class_counts: list[int] | None = None
        self._val_rows: list[dict[str, Tensor]] = []
        self._frozen_val_stats: dict[int, tuple[Tensor, ...]] = {}  # freeze=all: clip index -> its statistics

    # ----- construction -----
    def _apply_freeze(self, stages: list[tuple[str, list[str]]]) -> list[str]:
        h = self.hparams
        if h.freeze == "none":
            return []
        names = [n for _, ps in (stages if h.freeze == "all" else stages[: int(h.freeze_stages)]) for n in ps]
        params = dict(self.backbone.named_parameters())
        for n in names:
            params[n].requires_grad_(False)
        log.info("ser_finetune: freeze=%s: %d of %d encoder tensors fixed (%s)", h.freeze, len(names), len(params),
                 ", ".join(s for s, _ in (stages if h.freeze == "all" else stages[: int(h.freeze_stages)])))
        return names

    def _fix_unread_parameters(self) -> list[str]:
        """Encoder tensors that nothing the pooling reads depends on (GE2E's embedding projection under layer
        pooling) are fixed too: DDP would otherwise wait for their gradients and stop ("parameters that were not
        used in producing the loss"). Found from the graph of one dummy window, so it holds for any backbone."""
        trainable = [(n, p) for n, p in self.backbone.named_parameters() if p.requires_grad]
        if not trainable:
            return []
        was = self.backbone.training
        self.backbone.eval()  # the graph's shape, not its values: no batch-norm statistics move
        try:
            with torch.enable_grad():
                outs = self.encoder_outputs(torch.zeros(2, self.backbone.window_samples()[0]))
                grads = torch.autograd.grad(sum(o.float().sum() for o in outs), [p for _, p in trainable],
                                            allow_unused=True)
        finally:
            self.backbone.train(was)
        unread = [n for (n, p), g in zip(trainable, grads) if g is None]
        for n, p in trainable:
            if n in unread:
                p.requires_grad_(False)
        if unread:
            log.info("ser_finetune: %d encoder tensor(s) the pooling never reads are fixed: %s", len(unread),
                     ", ".join(unread))
        return unread

    @torch.no_grad()
    def _layer_dims(self) -> list[int]:
        was = self.backbone.training
        self.backbone.eval()
        try:
            probe = torch.zeros(1, self.backbone.window_samples()[0])
            return [int(x.shape[-1]) for x in self.encoder_outputs(probe)]
        finally:
            self.backbone.train(was)

    def _build_classifier(self, class_names: list[str]) -> None:
        h = self.hparams
        n = len(class_names)
        if n < 2:
            raise ValueError(f"model.class_names={class_names}: expected at least 2 classes")
        hidden = int(h.classifier_hidden)
        layers: list[nn.Module] = [nn.Dropout(h.dropout)]
        if hidden > 0:
            layers += [nn.Linear(h.pooled_dim, hidden), nn.ReLU(), nn.Dropout(h.dropout), nn.Linear(hidden, n)]
        else:
            layers.append(nn.Linear(h.pooled_dim, n))
        self.classifier = nn.Sequential(*layers)
        self.register_buffer("class_weights", torch.ones(n))
        self.hparams.class_names = list(class_names)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if stage != "fit" or dm is None:
            return
        names = getattr(dm, "class_names", None)
        if not names:
            raise ValueError(f"ser_finetune trains on emotion labels: the datamodule ({type(dm).__name__}) has no "
                             "class_names; use data._target_=datamodules.emotion_datamodule.EmotionDataModule "
                             "(experiment=ser_finetune sets it)")
        if self.classifier is None:
            self._build_classifier(list(names))
        elif list(self.hparams.class_names) != list(names):
            raise ValueError(f"model.class_names={list(self.hparams.class_names)} but the datamodule's classes are "
                             f"{list(names)} (data.classes): they must be the same, in the same order")
        counts = [int(c) for c in dm.train_class_counts()]
        self.train_class_counts = counts
        if self.hparams.class_weights == "balanced":
            self.class_weights.copy_(class_weights_from_counts(counts).to(self.class_weights.device))
        missing = [c for c, n in zip(names, counts) if n == 0]
        if missing:
            log.warning("ser_finetune: no training clip of class(es) %s in this training part", missing)
        log.info("ser_finetune: training counts %s, class weights %s", dict(zip(names, counts)),
                 [round(float(w), 3) for w in self.class_weights])

    def train(self, mode: bool = True):
        """Frozen parts stay in eval mode (batch-norm statistics and dropout of a fixed encoder do not move)."""
        super().train(mode)
        if mode and self.hparams.freeze == "all":
            self.backbone.eval()
        elif mode and self.hparams.freeze == "partial":
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
                    m.eval()
        return self

    # ----- forward -----
    def encoder_outputs(self, wav: Tensor) -> list[Tensor]:
        """What the pooling reads: every layer (B, T, D_i), or the final embedding [(B, E)]."""
        if self.hparams.pooling == "embedding":
            return [self.backbone.embed(wav)]
        layers = getattr(self.backbone, "layers", None)
        return list(layers(wav)) if callable(layers) else [self.backbone.frames(wav)]

    def pooled_stats(self, wav: Tensor) -> list[Tensor]:
        """(B, S) crops -> per-layer time statistics [(B, k * D_i)]; no encoder graph when it is frozen."""
        if self.hparams.freeze == "all":
            with torch.no_grad():
                return [s.detach() for s in self.pooling.time_stats(self.encoder_outputs(wav))]
        return self.pooling.time_stats(self.encoder_outputs(wav))

    def logits_from_stats(self, stats: Sequence[Tensor]) -> Tensor:
        if self.classifier is None:
            raise RuntimeError("SERFinetuneModule: no classifier yet; it is built from model.class_names or, at fit "
                               "time, from the datamodule's class_names")
        return self.classifier(self.pooling(stats)).float()

    def forward(self, wav: Tensor) -> Tensor:
        """(B, S) crops -> (B, C) logits."""
        return self.logits_from_stats(self.pooled_stats(wav))

    def clip_logits(self, wavs: Sequence[Tensor | Prefix]) -> Tensor:
        """(N, C) logits of N variable-length clips (waveforms or whole-clip prefixes): the statistics of the
        backbone's utterance windows pooled per clip (`clip_pooling`), classified once."""
        if not len(wavs):
            return torch.zeros(0, len(self.hparams.class_names or []))
        return self.logits_from_stats(self.clip_stats(wavs))

    def clip_stats(self, wavs: Sequence[Tensor | Prefix]) -> list[Tensor]:
        """Per-layer time statistics [(N, k * D_i)] of N variable-length clips, pooled per clip as `clip_logits`
        classifies them."""
        device = self.class_weights.device if self.classifier is not None else next(self.parameters()).device
        windows, owners, spans = [], [], []
        for i, w in enumerate(wavs):
            pieces, own, _ = self.backbone.clip_windows(w.to(device))
            windows.append(pieces)
            owners += [i] * batch_size_of(pieces)
            spans += own
        windows_t = cat_batches(windows)
        owner = torch.tensor(owners, device=device)
        step = int(self.hparams.max_windows_per_batch)
        if self.hparams.clip_pooling == "frames":
            per_clip: list[list[list[Tensor]]] = [[] for _ in wavs]
            for j in range(0, len(owners), step):
                outs = self.encoder_outputs(_rows(windows_t, j, j + step))
                for r in range(batch_size_of(_rows(windows_t, j, j + step))):
                    per_clip[owners[j + r]].append([owned_frames(o[r], spans[j + r]) if o.dim() == 3 else o[r: r + 1]
                                                    for o in outs])
            return [torch.cat(layer) for layer in zip(*[self.pooling.time_stats(
                [torch.cat(list(ws)).unsqueeze(0) for ws in zip(*clip)]) for clip in per_clip])]
        chunks = [self.pooling.time_stats(self.encoder_outputs(_rows(windows_t, j, j + step)))
                  for j in range(0, len(owners), step)]
        count = torch.bincount(owner, minlength=len(wavs)).clamp_min(1).unsqueeze(1).float()
        stats = []
        for layer in range(len(chunks[0])):
            values = torch.cat([c[layer] for c in chunks])
            summed = torch.zeros(len(wavs), values.shape[1], device=device).index_add_(0, owner, values)
            stats.append(summed / count)
        return stats

    @torch.no_grad()
    def predict_proba(self, wavs: Sequence[Tensor]) -> Tensor:
        """(N, C) class probabilities (rows sum to 1) of N variable-length 1-D waveforms (docs/predict.md)."""
        was = self.training
        self.eval()
        try:
            return self.clip_logits(list(wavs)).float().softmax(-1)
        finally:
            self.train(was)

    def layer_names(self) -> list[str]:
        """Names of the pooled layers (the backbone's `layer_names()` where it has one for them)."""
        if self.hparams.pooling == "embedding":
            return ["embedding"]
        n = len(self.pooling.projections)
        names = list(getattr(self.backbone, "layer_names", lambda: [])())
        return names if len(names) == n else [f"layer{i + 1}" for i in range(n)]

    def layer_weight_table(self) -> dict[str, float]:
        """{layer name: softmax weight}, as evaluate.py's weighted-layer probe reports them."""
        return dict(zip(self.layer_names(), (float(w) for w in self.pooling.weights.detach()), strict=True))

    # ----- training -----
    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        if "emotion" not in batch:
            raise KeyError("ser_finetune: training batches carry no `emotion`; use data._target_="
                           "datamodules.emotion_datamodule.EmotionDataModule (experiment=ser_finetune sets it)")
        target = batch["emotion"].long()
        logits = self(batch["wav"])
        weight = self.class_weights if self.hparams.class_weights == "balanced" else None
        loss = F.cross_entropy(logits, target, weight=weight, ignore_index=-1)
        n = len(target)
        with torch.no_grad():
            acc = (logits.argmax(1) == target).float().mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/acc", acc, batch_size=n)
        for name, w in self.layer_weight_table().items():
            self.log(f"train/layer_weight_{name}", w, batch_size=n)
        return loss

    def optimizer_param_groups(self) -> list[dict]:
        encoder = [p for p in self.backbone.parameters() if p.requires_grad]
        ids = {id(p) for p in encoder}
        head = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        return [{"params": encoder}, {"params": head, "lr": float(self.hparams.head_lr)}]

    # ----- validation: the classifier itself on the validation speakers' whole clips -----
    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._frozen_val_stats = {}

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        wavs = batch["wavs"]
        logits = (self.logits_from_stats(self._validation_stats(batch)) if len(wavs) else self.clip_logits(wavs))
        logits = logits.float().cpu()
        n = len(logits)
        target = batch["emotion"].cpu() if "emotion" in batch else torch.full((n,), -1, dtype=torch.long)
        self._val_rows.append({"logits": logits, "emotion": target, "index": batch["index"].cpu()})

    def _validation_stats(self, batch: dict) -> list[Tensor]:
        """The validation clips' statistics. Under `freeze=all` they cannot change during a fit, so each clip's are
        computed at the first validation and read back after (the classifier still scores them every epoch)."""
        wavs = batch["wavs"]
        if not (self.hparams.freeze == "all" and self.trainer.state.fn == TrainerFn.FITTING):
            return self.clip_stats(wavs)
        keys = [int(i) for i in batch["index"]]
        missing = [j for j, k in enumerate(keys) if k not in self._frozen_val_stats]
        if missing:
            for j, layers in zip(missing, zip(*[s.split(1) for s in self.clip_stats([wavs[j] for j in missing])])):
                self._frozen_val_stats[keys[j]] = tuple(x.detach() for x in layers)
        return [torch.cat(layer) for layer in zip(*(self._frozen_val_stats[k] for k in keys))]

    def on_validation_epoch_end(self) -> None:
        rows = self._val_rows
        self._val_rows = []
        n_classes = len(self.hparams.class_names or [])
        if rows:
            cat = {k: torch.cat([r[k] for r in rows]) for k in rows[0]}
        else:
            cat = {"logits": torch.zeros(0, n_classes), "emotion": torch.zeros(0, dtype=torch.long),
                   "index": torch.zeros(0, dtype=torch.long)}
        if self.trainer.world_size > 1:  # every rank gathers the same rows, so every rank logs the same values
            cat = {k: self._all_gather_rows(v) for k, v in cat.items()}
        if self.trainer.sanity_checking or not len(cat["index"]):
            return
        _, first = np.unique(cat["index"].numpy(), return_index=True)  # DistributedSampler pads with repeats
        logits, target = cat["logits"][first], cat["emotion"][first]
        labelled = target >= 0
        if not labelled.any():
            log.warning("ser_finetune: no labelled validation clip: val/ua is not computed")
            return
        logits, target = logits[labelled], target[labelled]
        pred = logits.argmax(1)
        metrics = {"val/ua": unweighted_accuracy(target.numpy(), pred.numpy()),
                   "val/wa": float((pred == target).float().mean()),
                   "val/loss": float(F.cross_entropy(logits, target)),
                   "val/clips": float(len(target))}
        for name, value in metrics.items():
            self.log(name, value, prog_bar=name == "val/ua", sync_dist=False)

    # ----- checkpoints -----
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        # The warm start is already in the weights (and its speakers in seen_speakers): rebuilding the module
        # from the checkpoint must not read that file again (it may have moved); where it came from is kept.
        hp = checkpoint.get("hyper_parameters")
        if hp is not None and hp.get("init_from"):
            checkpoint["warm_started_from"] = hp["init_from"]
            checkpoint["hyper_parameters"] = {**hp, "init_from": None}
        checkpoint["train_class_counts"] = self.train_class_counts
