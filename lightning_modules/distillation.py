"""Objective: emotion2vec-style online distillation (Ma et al., 2023; data2vec 2.0, Baevski et al., 2023).

A student context encoder (`backbones/context_encoder.py`, wrapping the configured backbone as its
front end) sees span-masked frames and regresses the representations an EMA teacher computes from
the same, unmasked clip:

* frame level: MSE on the masked frames between the student's prediction (a linear head, or
  data2vec 2.0's convolutional decoder) and the average of the teacher's top-k block outputs, each
  instance-normalised over time;
* utterance level: MSE between the student's utterance representation (`token`: one extra token;
  `chunk`: the mean of the extra tokens, emotion2vec's released choice; `global`: the mean of the
  student's frames) and the time average of the teacher's top-k outputs (layer-normalised; the time
  average of the instance-normalised frame target itself is identically zero).

Clone batches: every clip is masked `clone_batch` times in one batch; the front end and the teacher
run once per clip and their results are repeated. The teacher never gets gradients: it is updated
after every optimiser step as teacher = decay * teacher + (1 - decay) * student, the decay annealed
linearly from `ema_decay` to `ema_end_decay` over `ema_anneal_steps` updates, then held.

`self.backbone` is the student `ContextEncoderBackbone`, so validation, `evaluate.py`, clustering
and other objectives' warm starts see the distilled encoder. Defaults and the differences from
emotion2vec: docs/distillation.md.
"""
from __future__ import annotations

import copy
import difflib
import inspect
import logging
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.backbones.base import Backbone
from lightning_modules.backbones.context_encoder import ContextEncoderBackbone, ContextOutput
from lightning_modules.embedding_module import EmbeddingModule, load_backbone_weights
from datamodules.prefix import batch_size_of

log = logging.getLogger(__name__)

CONTEXT_ENCODER_TARGET = "lightning_modules.backbones.context_encoder.ContextEncoderBackbone"
UTTERANCE_MODES = ("token", "chunk", "global")
EMBEDDING_OF_MODE = {"token": "token", "chunk": "chunk", "global": "frames"}
EMA_SCOPES = ("context", "all")
TARGET_LAYERS = ("block", "ffn")
UTTERANCE_TARGETS = ("pooled_layers", "frame_target")


# ----- the pieces, as functions the tests can check on hand-made input -----
def span_mask(n_rows: int, length: int, prob: float, span: int, device: torch.device | str | None = None,
              generator: torch.Generator | None = None) -> Tensor:
    """(n_rows, length) bool mask of non-overlapping spans of `span` frames covering `prob` of each row
    in expectation: floor(prob * length / span + u) spans, u ~ U(0, 1), at least one, at uniformly random
    non-overlapping positions (adjacent spans may touch, so masked runs are multiples of `span` long)."""
    if not 0 < prob < 1:
        raise ValueError(f"model.mask_prob={prob}: expected 0 < mask_prob < 1")
    if span < 1 or span > length:
        raise ValueError(f"model.mask_span={span}: expected 1 <= mask_span <= {length} frames (the crop's frames); "
                         "raise data.crop_seconds or lower model.mask_span")
    max_spans = length // span
    u = torch.rand(n_rows, generator=generator)
    n_spans = torch.floor(prob * length / span + u).long().clamp(1, max_spans)
    mask = torch.zeros(n_rows, length, dtype=torch.bool)
    offsets = torch.arange(span)
    for row, n in enumerate(n_spans.tolist()):
        # choose n of the (length - n * (span - 1)) "compressed" positions, then re-expand: non-overlapping
        slots = length - n * (span - 1)
        chosen = torch.randperm(slots, generator=generator)[:n].sort().values
        starts = chosen + torch.arange(n) * (span - 1)
        mask[row, (starts[:, None] + offsets[None, :]).reshape(-1)] = True
    return mask.to(device) if device is not None else mask


def ema_decay_at(update: int, start: float, end: float, anneal_steps: int) -> float:
    """data2vec's `get_annealed_rate`: linear from `start` (update 0) to `end` (update >= anneal_steps)."""
    if anneal_steps <= 0 or update >= anneal_steps:
        return float(end)
    return float(start + (end - start) * update / anneal_steps)


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """teacher <- decay * teacher + (1 - decay) * student for parameters; buffers copied."""
    t_params, s_params = list(teacher.parameters()), list(student.parameters())
    if len(t_params) != len(s_params):
        raise RuntimeError("teacher and student have different parameter lists")
    torch._foreach_lerp_(t_params, [p.detach() for p in s_params], 1.0 - decay)
    for tb, sb in zip(teacher.buffers(), student.buffers()):
        tb.copy_(sb)


def instance_normalised_average(layers: list[Tensor]) -> Tensor:
    """Average of (B, T, D) layer outputs, each normalised per clip and channel over time (float32)."""
    stacked = torch.stack([y.float() for y in layers])  # (K, B, T, D)
    k, b, t, d = stacked.shape
    normed = F.instance_norm(stacked.reshape(k * b, t, d).transpose(1, 2)).transpose(1, 2)
    return normed.reshape(k, b, t, d).mean(0)


def channel_std(x: Tensor) -> Tensor:
    """Mean over channels of the std over all frames: data2vec's collapse monitor (near 0 = collapsed)."""
    return x.detach().float().reshape(-1, x.shape[-1]).std(0).mean()


def pooled_layer_target(layers: list[Tensor]) -> Tensor:
    """(B, D) utterance target: the time mean of the average of the raw layer outputs, layer-normalised
    over channels. (The time mean of the instance-normalised frame target is zero by construction.)"""
    pooled = torch.stack([y.float().mean(1) for y in layers]).mean(0)
    return F.layer_norm(pooled, pooled.shape[-1:])


def utterance_prediction(out: ContextOutput, mode: str) -> Tensor:
    """The student's (B, D) utterance representation for the utterance-level loss."""
    if mode == "token":
        return out.tokens[:, 0]
    if mode == "chunk":
        return out.tokens.mean(1)
    if mode == "global":
        return out.frames.mean(1)
    raise ValueError(f"model.utterance={mode!r}: expected one of {UTTERANCE_MODES}")


class ConvDecoder(nn.Module):
    """data2vec 2.0's `Decoder1d`: project to `dim`, `layers` residual blocks of grouped conv + LayerNorm
    (no affine) + GELU, project back. Predicts the teacher target of every frame from the student's."""

    def __init__(self, in_dim: int, dim: int = 384, kernel: int = 7, layers: int = 4, groups: int = 16):
        super().__init__()
        if dim % groups:
            raise ValueError(f"model.decoder.dim={dim} must be divisible by model.decoder.groups={groups}")
        self.kernel = kernel
        self.convs = nn.ModuleList(nn.Conv1d(in_dim if i == 0 else dim, dim, kernel, padding=kernel // 2, groups=groups)
                                   for i in range(layers))
        self.proj = nn.Linear(dim, in_dim)

    def forward(self, x: Tensor) -> Tensor:
        y = x.transpose(1, 2)
        residual = y
        for conv in self.convs:
            z = conv(y)
            if self.kernel % 2 == 0:
                z = z[..., :-1]
            z = F.gelu(F.layer_norm(z.transpose(1, 2), z.shape[1:2]).transpose(1, 2))
            y = z + residual if z.shape == residual.shape else z
            residual = y
        return self.proj(y.transpose(1, 2))


def student_spec(backbone: Mapping[str, Any], encoder: Mapping[str, Any] | None, utterance: str) -> dict:
    """The student's backbone config: the front end wrapped in a context encoder (or, when `backbone`
    already is a context-encoder config, e.g. when a checkpoint is rebuilt, that config unchanged)."""
    encoder = dict(encoder or {})
    valid = [k for k in inspect.signature(ContextEncoderBackbone).parameters if k != "front_end"]
    for key in encoder:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            raise ValueError(f"unknown key model.encoder.{key}" + (f"; did you mean model.encoder.{close[0]}?" if close else "")
                             + f" Valid keys: {valid}")
    if str(backbone.get("_target_")) == CONTEXT_ENCODER_TARGET:
        spec = dict(backbone)
        clash = {k: (v, spec[k]) for k, v in encoder.items() if k in spec and spec[k] != v}
        if clash:
            raise ValueError(f"model.encoder conflicts with the context-encoder backbone config: {clash} "
                             "(model.encoder value, backbone value)")
        return spec
    encoder.setdefault("embedding", EMBEDDING_OF_MODE[utterance])
    spec = {"_target_": CONTEXT_ENCODER_TARGET, "front_end": dict(backbone), **encoder}
    if backbone.get("sample_rate") is not None:  # configs interpolate ${backbone.sample_rate}
        spec.setdefault("sample_rate", backbone["sample_rate"])
    return spec


class DistillationModule(EmbeddingModule):
    """encoder: the context encoder's size and options (`ContextEncoderBackbone` arguments).
    mask_prob, mask_span: span masking of the student's frames. clone_batch: masks per clip.
    top_k: teacher blocks averaged into the target. target_layer: "block" (block outputs) or "ffn"
        (FFN output before the last residual, emotion2vec's `end_of_block_targets: false`).
    utterance: "token" | "chunk" | "global": the student's utterance representation.
    utterance_target: "pooled_layers" (time mean of the raw top-k teacher outputs, layer-normalised) or
        "frame_target" (time mean of the instance-normalised frame target, data2vec 2.0's code: zero
        whenever the target layers are instance-normalised, see docs/distillation.md).
    frame_weight, utterance_weight: loss weights.
    ema_decay, ema_end_decay, ema_anneal_steps: the teacher's EMA schedule.
    ema_scope: "context" (teacher = EMA of everything after the front end and input projection, which
        it shares with the student: data2vec 2.0 / emotion2vec, whose CNN is not EMA'd) or "all".
    decoder: None for a linear frame head, or {dim, kernel, layers, groups} for data2vec 2.0's conv decoder.
    init_from: a checkpoint of any objective: a distillation (or context-encoder) checkpoint restores the
        whole student encoder (and decoder); any other one warm-starts the front end from its backbone.
    """

    def __init__(self, backbone: Backbone | Mapping[str, Any], encoder: Mapping[str, Any] | None = None,
                 mask_prob: float = 0.5, mask_span: int = 5, clone_batch: int = 4, top_k: int = 3,
                 target_layer: str = "block", utterance: str = "chunk", utterance_target: str = "pooled_layers",
                 frame_weight: float = 1.0,
                 utterance_weight: float = 1.0, ema_decay: float = 0.999, ema_end_decay: float = 0.99999,
                 ema_anneal_steps: int = 1000, ema_scope: str = "context", decoder: Mapping[str, int] | None = None,
                 init_from: str | None = None, **kwargs):
        if utterance not in UTTERANCE_MODES:
            raise ValueError(f"model.utterance={utterance!r}: expected one of {UTTERANCE_MODES}")
        if utterance_target not in UTTERANCE_TARGETS:
            raise ValueError(f"model.utterance_target={utterance_target!r}: expected one of {UTTERANCE_TARGETS}")
        if ema_scope not in EMA_SCOPES:
            raise ValueError(f"model.ema_scope={ema_scope!r}: expected one of {EMA_SCOPES}")
        if target_layer not in TARGET_LAYERS:
            raise ValueError(f"model.target_layer={target_layer!r}: expected one of {TARGET_LAYERS}")
        if clone_batch < 1:
            raise ValueError(f"model.clone_batch={clone_batch}: expected >= 1")
        if not 0 <= ema_decay <= ema_end_decay <= 1:
            raise ValueError(f"model.ema_decay={ema_decay}, model.ema_end_decay={ema_end_decay}: expected "
                             "0 <= ema_decay <= ema_end_decay <= 1")
        if frame_weight < 0 or utterance_weight < 0 or frame_weight + utterance_weight == 0:
            raise ValueError(f"model.frame_weight={frame_weight}, model.utterance_weight={utterance_weight}: "
                             "expected non-negative weights, not both 0")
        if utterance in ("token", "chunk"):
            n_extra = (encoder or {}).get("n_extra_tokens", inspect.signature(ContextEncoderBackbone).parameters[
                "n_extra_tokens"].default)
            if not isinstance(backbone, Backbone) and str(backbone.get("_target_")) == CONTEXT_ENCODER_TARGET:
                n_extra = backbone.get("n_extra_tokens", n_extra)
            if int(n_extra) < 1:
                raise ValueError(f"model.utterance={utterance!r} needs encoder.n_extra_tokens >= 1, got {n_extra}")
        if isinstance(backbone, Backbone):
            student = backbone if isinstance(backbone, ContextEncoderBackbone) else \
                ContextEncoderBackbone(backbone, **{"embedding": EMBEDDING_OF_MODE[utterance], **dict(encoder or {})})
        else:
            student = student_spec(backbone, encoder, utterance)
        super().__init__(student, init_from=None, **kwargs)
        self.save_hyperparameters(ignore=["backbone"] if isinstance(backbone, Backbone) else [])
        if not isinstance(backbone, Backbone):
            self.hparams["backbone"] = student  # the checkpoint rebuilds the whole student encoder
        if not isinstance(self.backbone, ContextEncoderBackbone):
            raise TypeError(f"the distillation student must be a ContextEncoderBackbone, got {type(self.backbone).__name__}")
        context = self.backbone.context
        if not 1 <= top_k <= len(context.blocks):
            raise ValueError(f"model.top_k={top_k}: expected 1 <= top_k <= encoder.depth={len(context.blocks)}")
        if utterance in ("token", "chunk") and context.n_extra < 1:
            raise ValueError(f"model.utterance={utterance!r} needs encoder.n_extra_tokens >= 1, got 0")
        dim = self.backbone.embedding_dim
        self.decoder = ConvDecoder(dim, **dict(decoder)) if decoder else nn.Linear(dim, dim)
        if init_from:
            self.warm_start(init_from)
        self.teacher = copy.deepcopy(self.backbone.context if ema_scope == "context" else self.backbone)
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        self._ema_global_step: int | None = None

    # ----- warm start -----
    def warm_start(self, path: str) -> None:
        from lightning_modules.checkpoints import read_checkpoint

        sd = read_checkpoint(path).raw  # the one reader: load_backbone_weights below reuses this read
        sd = sd.get("state_dict", sd)
        whole_student = any(k.startswith("backbone.context.") for k in sd)  # a distilled (context-encoder) student
        target = self.backbone if whole_student else self.backbone.front_end
        try:
            provenance = load_backbone_weights(target, path)
        except RuntimeError as e:  # shape mismatches
            raise ValueError(f"init_from={path}: its backbone weights do not fit this "
                             f"{'student encoder' if whole_student else 'front end'} ({e})") from e
        self._inherit(*provenance)  # the warm-started weights carry the speakers they have met
        if whole_student:
            dec = {k[len("decoder."):]: v for k, v in sd.items() if k.startswith("decoder.")}
            if dec:
                try:
                    self.decoder.load_state_dict(dec)
                except RuntimeError as e:
                    raise ValueError(f"init_from={path}: its frame decoder does not fit model.decoder ({e})") from e

    # ----- the teacher -----
    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # targets without dropout
        return self

    @property
    def ema_student(self) -> nn.Module:
        return self.backbone.context if self.hparams.ema_scope == "context" else self.backbone

    def current_ema_decay(self) -> float:
        h = self.hparams
        return ema_decay_at(int(self.ema_updates), h.ema_decay, h.ema_end_decay, h.ema_anneal_steps)

    @torch.no_grad()
    def teacher_targets(self, wav: Tensor, student_features: Tensor) -> tuple[Tensor, Tensor]:
        """((B, T, D) frame targets, (B, D) utterance targets) from the unmasked clip, once per clip."""
        h = self.hparams
        out = self.teacher(student_features.detach()) if h.ema_scope == "context" else self.teacher.encode(wav)
        layers = (out.ffn_outputs if h.target_layer == "ffn" else out.block_outputs)[-h.top_k:]
        frame_target = instance_normalised_average(layers)
        if h.utterance_target == "frame_target":  # emotion2vec / data2vec 2.0's code: orig_targets.mean(dim=1)
            return frame_target, frame_target.mean(1)
        return frame_target, pooled_layer_target(layers)

    # ----- training -----
    def distillation_losses(self, wav: Tensor) -> dict[str, Tensor]:
        h = self.hparams
        feats = self.backbone.features(wav)  # front end once per clip
        target, utt_target = self.teacher_targets(wav, feats)
        b, t, _ = feats.shape
        clones = h.clone_batch
        mask = span_mask(b * clones, t, h.mask_prob, h.mask_span, device=feats.device)
        out = self.backbone.context(feats.repeat_interleave(clones, 0), mask)
        pred = self.decoder(out.frames)
        frame_target = target.repeat_interleave(clones, 0)
        frame_loss = F.mse_loss(pred[mask].float(), frame_target[mask])
        utt_target = utt_target.repeat_interleave(clones, 0)
        utt_loss = F.mse_loss(utterance_prediction(out, h.utterance).float(), utt_target)
        loss = h.frame_weight * frame_loss + h.utterance_weight * utt_loss
        return {"loss": loss, "frame_loss": frame_loss.detach(), "utterance_loss": utt_loss.detach(),
                "masked_fraction": mask.float().mean(), "target_std": channel_std(target),
                "pred_std": channel_std(pred.detach())}

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        wav = batch["wav"]
        parts = self.distillation_losses(wav)
        n = batch_size_of(wav)
        for name in ("frame_loss", "utterance_loss", "masked_fraction", "target_std", "pred_std"):
            self.log(f"train/{name}", parts[name], batch_size=n)
        self.log("train/ema_decay", self.current_ema_decay(), batch_size=n)
        self.log("train/loss", parts["loss"], prog_bar=True, batch_size=n)
        return parts["loss"]

    def on_train_start(self) -> None:
        self._ema_global_step = self.trainer.global_step

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # One EMA update per optimiser step (not per batch under gradient accumulation).
        step = self.trainer.global_step
        if self._ema_global_step is None or step > self._ema_global_step:
            self.ema_step()
            self._ema_global_step = step

    def ema_step(self) -> None:
        ema_update_(self.teacher, self.ema_student, self.current_ema_decay())
        self.ema_updates += 1
