"""emotion2vec-style distillation: masks, the EMA teacher, targets, utterance losses, clone batches,
warm starts, training end to end (1 process, DDP on 2 CPU processes, bf16) and evaluation."""
from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchaudio
from omegaconf import open_dict
from torch import nn

from lightning_modules.backbones.base import Backbone
from lightning_modules.backbones.context_encoder import ContextEncoderBackbone, ContextOutput
from lightning_modules.distillation import (DistillationModule, ema_decay_at, instance_normalised_average, span_mask,
                                            utterance_prediction)
from lightning_modules.checkpoints import load_embedding_module
from tasks.train import train


class MelFrontEnd(Backbone):
    """Log-mel (100 Hz) -> linear: a front end that trains in seconds on CPU (tests only)."""

    def __init__(self, sample_rate: int = 16000, n_mels: int = 24, dim: int = 16):
        super().__init__()
        self.sample_rate, self.frame_dim, self.embedding_dim = sample_rate, dim, dim
        self.mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=400, hop_length=160, n_mels=n_mels)
        self.proj = nn.Linear(n_mels, dim)

    def frames(self, wav: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.log(self.mel(wav.float()) + 1e-6).transpose(1, 2))

    def embed(self, wav: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.frames(wav).mean(1), dim=1)


TINY_ENCODER = {"dim": 32, "depth": 3, "heads": 2, "n_extra_tokens": 3, "conv_pos_depth": 2, "conv_pos_width": 10,
                "conv_pos_groups": 4, "dropout": 0.0, "attention_dropout": 0.0, "frame_pooling": 2}
TINY = ["model=distill", "model.encoder.dim=32", "model.encoder.depth=3", "model.encoder.heads=2",
        "model.encoder.n_extra_tokens=3", "model.encoder.conv_pos_depth=2", "model.encoder.conv_pos_width=10",
        "model.encoder.conv_pos_groups=4", "model.top_k=2", "model.clone_batch=2"]
QUIET = ["callbacks.model_summary=null", "callbacks.progress_bar=null", "+trainer.enable_progress_bar=false",
         "data.trim_silence=false", "callbacks.model_checkpoint.monitor=null"]


@pytest.fixture
def distill_cfg(train_cfg_factory):
    """The tiny distillation run over MelFrontEnd at 16 kHz. The whole backbone config is replaced (not
    just its _target_), so the default backbone's own keys and sample rate never reach the test."""
    def factory(*overrides: str):
        cfg = train_cfg_factory(*TINY, *QUIET, *overrides)
        with open_dict(cfg):
            cfg.backbone = {"_target_": "tests.test_distill.MelFrontEnd", "sample_rate": 16000}
        return cfg

    return factory


def tiny_module(**kwargs) -> DistillationModule:
    torch.manual_seed(0)
    args = {"encoder": TINY_ENCODER, "top_k": 2, "clone_batch": 2, "scheduler": "none", **kwargs}
    return DistillationModule({"_target_": "tests.test_distill.MelFrontEnd"}, **args)


# ----- masks -----
@pytest.mark.parametrize("length,prob,span", [(100, 0.5, 5), (75, 0.3, 3), (40, 0.65, 10)])
def test_span_mask_has_the_configured_ratio_and_span(length, prob, span):
    g = torch.Generator().manual_seed(0)
    mask = span_mask(4000, length, prob, span, generator=g)
    assert mask.shape == (4000, length) and mask.dtype == torch.bool
    per_row = mask.sum(1)
    expected_spans = prob * length / span
    assert set((per_row // span).tolist()) <= {int(np.floor(expected_spans)), int(np.ceil(expected_spans))}
    assert torch.all(per_row % span == 0)  # whole, non-overlapping spans
    assert abs(mask.float().mean().item() - prob) < 0.01  # the configured ratio in expectation
    # every maximal masked run is a multiple of the span (adjacent spans touch, none is cut)
    padded = F.pad(mask.int(), (1, 1))
    edges = padded[:, 1:] - padded[:, :-1]
    for row in range(0, 4000, 97):
        starts, ends = (edges[row] == 1).nonzero().flatten(), (edges[row] == -1).nonzero().flatten()
        assert torch.all((ends - starts) % span == 0)
    # span starts are spread over the whole clip
    assert mask[:, 0].any() and mask[:, -1].any()


def test_span_mask_rejects_settings_that_cannot_work():
    with pytest.raises(ValueError, match="model.mask_span"):
        span_mask(2, 4, 0.5, 5)
    with pytest.raises(ValueError, match="model.mask_prob"):
        span_mask(2, 40, 1.0, 5)


def test_masked_frames_are_hidden_from_the_student():
    """Changing the input at masked positions does not change the output (the mask replaces them
    before the positional convolution, so nothing leaks)."""
    torch.manual_seed(0)
    enc = ContextEncoderBackbone({"_target_": "tests.test_distill.MelFrontEnd"}, **TINY_ENCODER).eval()
    x = torch.randn(2, 30, 32)
    mask = span_mask(2, 30, 0.5, 5)
    y = x.clone()
    y[mask] = torch.randn(int(mask.sum()), 32) * 10
    a, b = enc.context(x, mask), enc.context(y, mask)
    assert torch.allclose(a.frames, b.frames, atol=1e-5) and torch.allclose(a.tokens, b.tokens, atol=1e-5)
    assert not torch.allclose(enc.context(x).frames, enc.context(y).frames, atol=1e-3)


# ----- the teacher -----
def test_ema_decay_anneals_linearly_then_holds():
    assert ema_decay_at(0, 0.999, 0.99999, 1000) == 0.999
    assert ema_decay_at(500, 0.999, 0.99999, 1000) == pytest.approx(0.999495)
    assert ema_decay_at(1000, 0.999, 0.99999, 1000) == ema_decay_at(10**6, 0.999, 0.99999, 1000) == 0.99999


class RecordStudent(L.Callback):
    """Copies the student's EMA'd parameters at the start and after every optimiser step (callbacks run
    before the module's on_train_batch_end, i.e. before the EMA update of that step)."""

    def __init__(self):
        self.initial: list[torch.Tensor] = []
        self.snapshots: list[list[torch.Tensor]] = []

    def on_train_start(self, trainer, pl_module):
        self.initial = [p.detach().clone() for p in pl_module.ema_student.parameters()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.snapshots.append([p.detach().clone() for p in pl_module.ema_student.parameters()])


@pytest.mark.parametrize("scope", ["context", "all"])
def test_teacher_is_the_exact_ema_of_the_student_after_k_steps(distill_cfg, scope):
    cfg = distill_cfg("trainer.max_epochs=1", "data.batches_per_epoch=4", "model.scheduler=none",
                            "model.lr=0.01", "model.ema_decay=0.5", "model.ema_end_decay=0.9", "model.ema_anneal_steps=2",
                            f"model.ema_scope={scope}", "+trainer.limit_val_batches=0",
                            "+callbacks.record._target_=tests.test_distill.RecordStudent")
    _, objs = train(cfg)
    model = objs["model"]
    recorder = next(cb for cb in objs["trainer"].callbacks if isinstance(cb, RecordStudent))
    initial = recorder.initial
    assert len(recorder.snapshots) == 4 and int(model.ema_updates) == 4 == objs["trainer"].global_step
    expected = initial
    for k, student in enumerate(recorder.snapshots):
        d = ema_decay_at(k, 0.5, 0.9, 2)  # 0.5, 0.7, 0.9, 0.9
        expected = [d * t + (1 - d) * s for t, s in zip(expected, student)]
    teacher = list(model.teacher.parameters())
    assert len(teacher) == len(expected)
    for t, e in zip(teacher, expected):
        assert torch.allclose(t, e, atol=1e-6, rtol=1e-5)
    moved = sum(float((s - i).abs().sum()) for s, i in zip(recorder.snapshots[-1], initial))
    assert moved > 0  # the student did move, so the comparison means something


def test_no_gradient_reaches_the_teacher():
    model = tiny_module()
    model.log = lambda *a, **k: None
    wav = torch.randn(3, 16000)
    loss = model.training_step({"wav": wav}, 0)
    loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in model.teacher.parameters())
    student_grads = [p.grad for p in model.backbone.context.parameters() if p.requires_grad]
    assert student_grads and all(g is not None for g in student_grads)
    opt = model.configure_optimizers()
    in_opt = {id(p) for group in opt.param_groups for p in group["params"]}
    assert not in_opt & {id(p) for p in model.teacher.parameters()}
    assert {id(p) for p in model.decoder.parameters()} <= in_opt
    # the teacher stays in eval mode (targets without dropout) even when the module trains
    model.train()
    assert not model.teacher.training and model.backbone.training


# ----- targets and losses on hand-made input -----
def test_target_is_the_average_of_instance_normalised_layers():
    torch.manual_seed(0)
    layers = [torch.randn(2, 7, 3) * s + m for s, m in ((1.0, 0.0), (5.0, 3.0), (0.1, -2.0))]
    got = instance_normalised_average(layers)

    def by_hand(y):  # normalise each (clip, channel) over time, biased variance, eps 1e-5
        mu = y.mean(1, keepdim=True)
        var = y.var(1, unbiased=False, keepdim=True)
        return (y - mu) / torch.sqrt(var + 1e-5)

    assert torch.allclose(got, sum(by_hand(y) for y in layers) / 3, atol=1e-5)
    single = instance_normalised_average(layers[1:2])
    assert torch.allclose(single.mean(1), torch.zeros(2, 3), atol=1e-5)
    assert torch.allclose(single.std(1, unbiased=False), torch.ones(2, 3), atol=1e-3)


def test_each_utterance_variant_predicts_what_it_says():
    tokens = torch.tensor([[[1.0, 2.0], [3.0, 6.0], [5.0, 10.0]]])  # one clip, 3 extra tokens
    frames = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    out = ContextOutput(tokens, frames, [frames], [frames])
    assert torch.equal(utterance_prediction(out, "token"), torch.tensor([[1.0, 2.0]]))
    assert torch.equal(utterance_prediction(out, "chunk"), torch.tensor([[3.0, 6.0]]))
    assert torch.equal(utterance_prediction(out, "global"), torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="model.utterance"):
        utterance_prediction(out, "cls")


@pytest.mark.parametrize("mode", ["token", "chunk", "global"])
def test_utterance_loss_regresses_the_chosen_representation_onto_the_utterance_target(mode, monkeypatch):
    """End to end through the module, with the teacher's targets and the student's outputs replaced by
    hand-made tensors: the utterance loss is the MSE between the chosen representation and the clip's
    utterance target, repeated for every clone."""
    model = tiny_module(utterance=mode, clone_batch=2)
    b, t, d = 2, 50, 32
    frame_target = torch.randn(b, t, d)
    utt_target = torch.arange(b * d, dtype=torch.float32).reshape(b, d) / 10
    monkeypatch.setattr(model, "teacher_targets", lambda wav, feats: (frame_target, utt_target))
    tokens, frames = torch.randn(2 * b, 3, d), torch.randn(2 * b, t, d)
    monkeypatch.setattr(model.backbone.context, "forward", lambda x, mask: ContextOutput(tokens, frames, [frames], [frames]))
    monkeypatch.setattr(model.backbone, "features", lambda wav: torch.zeros(b, t, d))
    parts = model.distillation_losses(torch.zeros(b, 16000))
    rep = {"token": tokens[:, 0], "chunk": tokens.mean(1), "global": frames.mean(1)}[mode]
    expected = torch.stack([((rep[i] - utt_target[i // 2]) ** 2).mean() for i in range(2 * b)]).mean()
    assert torch.allclose(parts["utterance_loss"], expected, atol=1e-6)


@pytest.mark.parametrize("which", ["pooled_layers", "frame_target"])
def test_teacher_targets_on_hand_made_teacher_outputs(which, monkeypatch):
    """Frame target = mean of the top-k instance-normalised blocks; utterance target = layer norm of the
    time-and-layer mean of the raw blocks, or (data2vec 2.0's formula) the time mean of the frame target,
    which instance normalisation makes exactly zero."""
    model = tiny_module(top_k=2, utterance_target=which)
    torch.manual_seed(3)
    blocks = [torch.randn(2, 20, 32) * (i + 1) + i for i in range(3)]
    monkeypatch.setattr(model.teacher, "forward", lambda x, mask=None: ContextOutput(blocks[-1][:, :3], blocks[-1], blocks,
                                                                                     [-y for y in blocks]))
    frame, utt = model.teacher_targets(torch.zeros(2, 16000), torch.zeros(2, 20, 32))
    assert torch.allclose(frame, instance_normalised_average(blocks[1:]))  # the top 2 of 3, not the ffn outputs
    if which == "frame_target":
        assert torch.allclose(utt, torch.zeros(2, 32), atol=1e-5)
    else:
        pooled = (blocks[1].mean(1) + blocks[2].mean(1)) / 2
        assert torch.allclose(utt, F.layer_norm(pooled, (32,)), atol=1e-5)


def test_clone_batch_runs_front_end_and_teacher_once_per_clip():
    model = tiny_module(clone_batch=4)
    calls = {"front": [], "teacher": [], "student": []}
    front = model.backbone.front_end.frames
    model.backbone.front_end.frames = lambda wav: calls["front"].append(len(wav)) or front(wav)
    model.teacher.blocks[0].register_forward_hook(lambda m, i, o: calls["teacher"].append(i[0].shape[0]))
    model.backbone.context.blocks[0].register_forward_hook(lambda m, i, o: calls["student"].append(i[0].shape[0]))
    masks = []
    original_ctx = model.backbone.context.forward
    model.backbone.context.forward = lambda x, mask=None: masks.append(mask) or original_ctx(x, mask)
    targets = []
    original_targets = model.teacher_targets
    model.teacher_targets = lambda wav, feats: targets.append(original_targets(wav, feats)) or targets[-1]
    model.distillation_losses(torch.randn(3, 16000))
    assert calls == {"front": [3], "teacher": [3], "student": [12]}
    assert len(targets) == 1 and all(y.shape[0] == 3 and not y.requires_grad for y in targets[0])
    clip_masks = masks[0].view(3, 4, -1)
    assert all(len({tuple(m.tolist()) for m in clip_masks[c]}) > 1 for c in range(3))  # each clone its own mask


def test_a_nonfinite_loss_names_the_clips_or_is_skipped():
    """The shared guard (model.nonfinite_loss) wraps the distillation step too: a NaN clip stops training
    with the clip's path, or (skip) the step returns no loss, so no optimiser step is taken on it."""
    model = tiny_module()
    model.log = lambda *a, **k: None
    wav = torch.randn(2, 16000)
    wav[1, 100] = float("nan")
    batch = {"wav": wav, "path": ["a.wav", "b.wav"]}
    with pytest.raises(FloatingPointError, match="b.wav"):
        model.training_step(batch, 0)
    skipping = tiny_module(nonfinite_loss="skip")
    skipping.log = lambda *a, **k: None
    assert skipping.training_step(batch, 0) is None and skipping.n_nonfinite_batches == 1


def test_bad_settings_name_the_key():
    with pytest.raises(ValueError, match="model.utterance"):
        tiny_module(utterance="cls")
    with pytest.raises(ValueError, match="model.top_k"):
        tiny_module(top_k=4)  # 3 blocks
    with pytest.raises(ValueError, match="model.utterance_target"):
        tiny_module(utterance_target="mean")
    with pytest.raises(ValueError, match="model.ema_scope"):
        tiny_module(ema_scope="front")
    with pytest.raises(ValueError, match="encoder.n_extra_tokens"):
        tiny_module(encoder={**TINY_ENCODER, "n_extra_tokens": 0})  # chunk needs utterance tokens
    tiny_module(utterance="global", encoder={**TINY_ENCODER, "n_extra_tokens": 0, "embedding": "frames"})
    with pytest.raises(ValueError, match="model.encoder.dimm; did you mean model.encoder.dim"):
        tiny_module(encoder={**TINY_ENCODER, "dimm": 16})


# ----- the backbone seen by evaluation -----
def test_context_encoder_backbone_interface():
    torch.manual_seed(0)
    enc = ContextEncoderBackbone({"_target_": "tests.test_distill.MelFrontEnd"}, **TINY_ENCODER).eval()
    wav = torch.randn(2, 16000)
    layers = enc.layers(wav)
    assert len(layers) == 3 and all(y.shape == (2, 51, 32) for y in layers)  # 101 frames at 100 Hz, pooled by 2
    assert torch.allclose(layers[-1], enc.frames(wav))
    out = enc.encode(wav)
    assert torch.allclose(enc.embed(wav), F.normalize(out.tokens.mean(1), dim=1), atol=1e-6)
    enc.embedding = "frames"
    assert torch.allclose(enc.embed(wav), F.normalize(out.frames.mean(1), dim=1), atol=1e-6)
    emb, n_padded = enc.embed_utterances([torch.randn(40000), torch.randn(8000)])
    assert emb.shape == (2, 32) and n_padded == 1


# ----- end to end -----
class LossHistory(L.Callback):
    def __init__(self):
        self.rows: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        m = trainer.callback_metrics
        self.rows.append({k: float(m[k]) for k in ("train/frame_loss", "train/utterance_loss", "train/ema_decay",
                                                    "train/masked_fraction")})


def test_training_lowers_both_losses_logs_the_schedule_and_evaluates(distill_cfg, tmp_path, synthetic_cache):
    cfg = distill_cfg("trainer.max_epochs=4", "data.batches_per_epoch=6", "model.lr=0.003",
                            "model.warmup_steps=0", "model.ema_anneal_steps=10", "+callbacks.history._target_="
                            "tests.test_distill.LossHistory")
    metrics, objs = train(cfg)
    history = next(cb for cb in objs["trainer"].callbacks if isinstance(cb, LossHistory)).rows
    assert len(history) == 24
    # first vs last epoch (6 batches each: single batches differ by +-0.1 in frame loss, new masks and clips)
    for key, ratio in (("train/frame_loss", 0.9), ("train/utterance_loss", 0.5)):
        first, last = np.mean([r[key] for r in history[:6]]), np.mean([r[key] for r in history[-6:]])
        assert last < ratio * first, f"{key} did not fall: {first:.4f} -> {last:.4f}"
    decays = [r["train/ema_decay"] for r in history]
    assert decays[0] == pytest.approx(0.999) and decays[-1] == pytest.approx(0.99999)
    assert all(a <= b for a, b in zip(decays, decays[1:]))
    assert all(0.3 < r["train/masked_fraction"] < 0.7 for r in history)
    assert "val/eer" in metrics  # held-out speakers, embedded by the student
    assert 0.0 <= metrics["val/probe_ua"] <= 1.0  # the emotion probe on the validation speakers

    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    dm = objs["datamodule"]
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert saved["seen_speakers"] == sorted({r.speaker for r in dm.train_records + dm.val_records})
    reloaded = load_embedding_module(str(ckpt))
    assert isinstance(reloaded, DistillationModule) and isinstance(reloaded.backbone, ContextEncoderBackbone)
    wav = [torch.randn(24000)]
    assert torch.allclose(reloaded.backbone.embed_utterances(wav)[0], objs["model"].cpu().eval().backbone.embed_utterances(wav)[0],
                          atol=1e-6)

    from tests.conftest import make_cfg
    from tasks.evaluate import evaluate

    eval_cfg = make_cfg("evaluate.yaml", tmp_path / "eval", [
        "data.corpus_options.n_speakers=8", "data.corpus_options.clips_per_emotion=2", "data.val_speakers=2",
        "eval.n_folds=2", "eval.repeats=1", "eval.heads=[linear]", "eval.allow_transductive=true",
        f"ckpt_path={ckpt}"], synthetic_cache)
    results = evaluate(eval_cfg)
    assert 0.0 <= results["linear"]["ua"] <= 1.0

    # warm starts: a distillation checkpoint restores the whole student ...
    warm = tiny_module(init_from=str(ckpt))
    student = objs["model"].backbone.state_dict()
    assert all(torch.equal(v, student[k]) for k, v in warm.backbone.state_dict().items())
    assert all(torch.equal(t, s) for t, s in zip(warm.teacher.parameters(), warm.backbone.context.parameters()))
    assert warm.seen_speakers == set(saved["seen_speakers"])  # and the speakers those weights have met


def test_a_warm_start_reads_its_checkpoint_once(tmp_path, monkeypatch):
    """The student, its decoder and the speakers they met come from one read (lightning_modules/checkpoints.py)."""
    source = tiny_module()
    with torch.no_grad():
        for param in source.parameters():
            param.add_(0.1)
    ckpt = tmp_path / "student.ckpt"
    torch.save({"state_dict": source.state_dict(), "seen_speakers": ["s1", "s2"]}, ckpt)
    reads, load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: reads.append(a[0]) or load(*a, **k))
    warm = tiny_module(init_from=str(ckpt))
    assert reads == [str(ckpt)]
    assert all(torch.equal(v, source.backbone.state_dict()[k]) for k, v in warm.backbone.state_dict().items())
    assert all(torch.equal(v, source.decoder.state_dict()[k]) for k, v in warm.decoder.state_dict().items())
    assert warm.seen_speakers == {"s1", "s2"}


def test_warm_start_from_another_objective_fills_the_front_end(tmp_path):
    torch.manual_seed(1)
    other = MelFrontEnd()
    ckpt = tmp_path / "other.ckpt"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in other.state_dict().items()}}, ckpt)
    model = tiny_module(init_from=str(ckpt))
    assert torch.equal(model.backbone.front_end.proj.weight, other.proj.weight)
    torch.save({"state_dict": {"backbone.proj.weight": torch.zeros(3, 3)}}, ckpt)
    with pytest.raises(ValueError, match="init_from"):
        tiny_module(init_from=str(ckpt))


def test_ddp_on_two_cpu_processes(distill_cfg):
    cfg = distill_cfg("trainer=ddp_sim", "trainer.max_epochs=1", "data.batches_per_epoch=2",
                            "data.n_speakers=2", "data.n_per_speaker=2")
    metrics, objs = train(cfg)
    assert objs["trainer"].world_size == 2
    assert np.isfinite(metrics["train/frame_loss"]) and np.isfinite(metrics["train/utterance_loss"])
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert int(ckpt["state_dict"]["ema_updates"]) == ckpt["global_step"] == 2


def test_bf16_mixed_on_cpu(distill_cfg):
    cfg = distill_cfg("trainer.precision=bf16-mixed", "trainer.max_epochs=1",
                            "data.batches_per_epoch=2")
    metrics, objs = train(cfg)
    assert objs["trainer"].precision == "bf16-mixed"
    assert np.isfinite(metrics["train/loss"])
    assert all(p.dtype == torch.float32 for p in objs["model"].teacher.parameters())


def test_context_encoder_backbone_config_fits_a_distill_checkpoint(tmp_path):
    """`backbone=context_encoder` (for other objectives) has experiment=distill's sizes: a distillation
    checkpoint warm-starts it without mismatch, and the warm-started encoder embeds like the student."""
    from omegaconf import OmegaConf

    from lightning_modules.embedding_module import EmbeddingModule
    from tests.conftest import make_cfg
    from tasks.train import build_model

    distill = build_model(make_cfg("train.yaml", tmp_path / "a", ["experiment=distill"])).eval()
    ckpt = tmp_path / "distill.ckpt"
    torch.save({"state_dict": distill.state_dict()}, ckpt)
    cfg = make_cfg("train.yaml", tmp_path / "b", ["experiment=contrastive_mtl", "backbone=context_encoder"])
    other = EmbeddingModule(OmegaConf.to_container(cfg.backbone, resolve=True), init_from=str(ckpt)).eval()
    wav = torch.randn(2, 32000)
    assert torch.allclose(other.backbone.embed(wav), distill.backbone.embed(wav), atol=1e-5)


class StartWeights(L.Callback):
    def on_train_start(self, trainer, pl_module):
        self.state = copy.deepcopy(pl_module.state_dict())


def _held_out_frame_loss(model: DistillationModule, wavs: torch.Tensor) -> float:
    model.eval()
    torch.manual_seed(0)  # the same masks for every model compared
    with torch.no_grad():
        return float(model.distillation_losses(wavs)["frame_loss"])


@pytest.mark.slow
def test_student_learns_to_predict_hidden_frames_of_unseen_speakers(distill_cfg):
    """Learning, measured on validation speakers whose audio is never trained on: the distilled
    student predicts its teacher's (instance-normalised) targets at masked frames with MSE well below
    1, the error of the best context-free guess (0), and below its random initialisation's.
    Measured (seed 12345, 40 steps): 1.21 at initialisation -> 0.87. Emotion separability is a
    different matter: see docs/distillation.md (on this synthetic set distillation does not beat
    the random initialisation's linear-probe UA)."""
    cfg = distill_cfg("data.corpus_options.n_speakers=12", "data.corpus_options.clips_per_emotion=4",
                            "data.val_speakers=4", "data.n_speakers=4", "data.n_per_speaker=4", "data.crop_seconds=1.0",
                            "trainer.max_epochs=5", "+trainer.limit_val_batches=0", "model.lr=0.002",
                            "model.warmup_steps=10", "+callbacks.start._target_=tests.test_distill.StartWeights")
    metrics, objs = train(cfg)
    model, dm = objs["model"].cpu(), objs["datamodule"]
    assert not {r.speaker for r in dm.train_records} & {r.speaker for r in dm.val_records}
    batch = next(iter(dm.utterance_loader(dm.val_records, batch_size=len(dm.val_records))))
    wavs = torch.stack([w[:16000] for w in batch["wavs"]])
    end = _held_out_frame_loss(model, wavs)
    start_model = copy.deepcopy(model)
    start_model.load_state_dict(next(cb for cb in objs["trainer"].callbacks if isinstance(cb, StartWeights)).state)
    start = _held_out_frame_loss(start_model, wavs)
    assert end < 0.93 and end < start - 0.2, f"held-out masked-frame MSE {start:.3f} -> {end:.3f}"


