"""experiment=ser_finetune: supervised SER training on the shared backbone. It runs, it learns emotion on
speakers it never met (fold-wise, synthetic corpus), its freeze modes fix what they say, its class weights
come from the training part's counts, its metrics.json has evaluate.py's schema, and predict.py applies
its checkpoint."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from lightning_modules.ser_finetune import SERFinetuneModule, class_weights_from_counts, encoder_stages
from tests.conftest import TINY_CORPUS, make_cfg

CLASSES = ["angry", "happy", "neutral", "sad"]
QUIET = ["callbacks.model_summary=null", "callbacks.progress_bar=null", "+trainer.enable_progress_bar=false"]
GE2E = {"_target_": "lightning_modules.backbones.ge2e.GE2EBackbone"}
DEEPTALK = {"_target_": "lightning_modules.backbones.deeptalk.DeepTalkBackbone", "sample_rate": 8000}


# ----- the experiment runs -----
def test_fast_dev_run_of_the_experiment(train_cfg_factory):
    from tasks.train import train

    cfg = train_cfg_factory("experiment=ser_finetune", "debug=fdr", "data.val_batch_size=4", *QUIET)  # one val batch
    assert cfg.callbacks.model_checkpoint.monitor == cfg.optimized_metric == "val/ua"
    assert cfg.callbacks.model_checkpoint.mode == "max" and cfg.callbacks.early_stopping.monitor == "val/ua"
    metrics, objs = train(cfg)
    model = objs["model"]
    assert model.hparams.class_names == CLASSES  # filled from the datamodule: what predict.py reads
    assert np.isfinite(metrics["train/loss"]) and 0.0 <= metrics["val/ua"] <= 1.0
    assert len(model.layer_weight_table()) == len(model.backbone.layers(torch.zeros(1, 16000)))  # GE2E: mel + 3 LSTM


# ----- pieces -----
def test_freeze_all_computes_each_validation_clip_once_per_fit_and_scores_it_exactly(train_cfg_factory, monkeypatch):
    """Under freeze=all a validation clip's statistics cannot change during a fit: they are computed at the first
    validation only (issue 17: a freeze=all epoch must cost far less than a forward pass), and the metrics of the
    last epoch equal those of a validation from scratch."""
    from tasks.train import train

    calls = []
    clip_stats = SERFinetuneModule.clip_stats
    monkeypatch.setattr(SERFinetuneModule, "clip_stats", lambda self, wavs: calls.append(len(wavs)) or clip_stats(self, wavs))
    cfg = train_cfg_factory("experiment=ser_finetune", "model.freeze=all", "trainer.max_epochs=3", "trainer.min_epochs=1",
                            "data.batches_per_epoch=2", "callbacks.early_stopping=null", "callbacks.model_checkpoint=null",
                            *QUIET)
    metrics, objs = train(cfg)
    trainer, model, dm = objs["trainer"], objs["model"], objs["datamodule"]
    assert sum(calls) == len(dm.val_records)  # sanity check + 3 epochs, every clip computed once
    assert set(model._frozen_val_stats) == set(range(len(dm.val_records)))
    again = trainer.validate(model, datamodule=dm, verbose=False)[0]  # outside a fit: computed afresh
    assert sum(calls) == 2 * len(dm.val_records)
    for key in ("val/ua", "val/wa", "val/loss"):
        assert again[key] == pytest.approx(float(metrics[key]), abs=1e-6), key


def test_class_weights_are_balanced_from_counts_and_absent_classes_get_zero():
    w = class_weights_from_counts([10, 30, 0, 20])
    np.testing.assert_allclose(w.numpy(), [2.0, 2 / 3, 0.0, 1.0], rtol=1e-6)  # n / (C_present * n_c), n = 60
    with pytest.raises(ValueError, match="at least one clip"):
        class_weights_from_counts([0, 0])


def test_val_ua_is_evaluates_ua_over_the_classes_present():
    """val/ua is evaluation.metrics.unweighted_accuracy (the one UA), here with a class only predicted."""
    from evaluation.metrics import unweighted_accuracy

    model = SERFinetuneModule(GE2E, class_names=CLASSES, freeze="all")
    logged = {}
    model.log = lambda name, value, **kw: logged.__setitem__(name, value)
    model._trainer = SimpleNamespace(world_size=1, sanity_checking=False)
    pred, target = torch.tensor([0, 1, 1, 0, 2]), torch.tensor([0, 1, 0, 0, 1])  # class 2 only predicted
    model._val_rows = [{"logits": F.one_hot(pred, 4).float(), "emotion": target, "index": torch.arange(5)}]
    model.on_validation_epoch_end()
    assert logged["val/ua"] == unweighted_accuracy(target.numpy(), pred.numpy()) == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_class_weights_come_from_the_training_speakers_only(tmp_path, synthetic_cache):
    cfg = make_cfg("train.yaml", tmp_path, ["experiment=ser_finetune", *TINY_CORPUS], synthetic_cache)
    dm = instantiate(cfg.data, _convert_="all")
    dm.prepare_data(), dm.setup("fit")
    GlobalHydra.instance().clear()
    val = set(dm.val_speakers)
    assert val and not val & {r.speaker for r in dm.train_records}
    assert dm.train_class_counts().sum() == len(dm.train_records)
    dm.train_emotion_ids = np.array([0] * 10 + [1] * 30 + [3] * 20)  # an imbalanced training part
    model = SERFinetuneModule(GE2E, freeze="all")
    model._trainer = SimpleNamespace(datamodule=dm)
    model.setup("fit")
    assert model.hparams.class_names == CLASSES and model.train_class_counts == [10, 30, 0, 20]
    np.testing.assert_allclose(model.class_weights.numpy(), class_weights_from_counts([10, 30, 0, 20]).numpy())


# ----- freeze modes -----
def _steps(model: SERFinetuneModule, n_classes: int = 4, steps: int = 2, seconds: float = 1.0) -> None:
    gen = torch.Generator().manual_seed(0)
    wav = 0.1 * torch.randn(4, int(seconds * model.backbone.sample_rate), generator=gen)
    target = torch.arange(4) % n_classes
    opt = model.configure_optimizers()
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(wav), target).backward()
        opt.step()


@pytest.mark.parametrize("mode", ["all", "partial", "none"])
def test_freeze_modes_fix_what_they_say(mode):
    model = SERFinetuneModule(GE2E, class_names=CLASSES, freeze=mode, freeze_stages=2, scheduler="none", lr=1e-3)
    before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    _steps(model)
    lstm = [f"lstm.{kind}_l{k}" for k in range(3) for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    frozen = {"all": lstm + ["linear.weight", "linear.bias"], "partial": lstm[:4], "none": []}[mode]
    params = dict(model.backbone.named_parameters())
    assert sorted(model.frozen_parameters) == sorted(frozen)
    for name in frozen:
        assert not params[name].requires_grad and torch.equal(params[name], before[name]), name
    for name in set(lstm) - set(frozen):
        assert params[name].requires_grad and not torch.equal(params[name], before[name]), name
    # the embedding projection feeds no layer the pooling reads: fixed whatever the mode (DDP needs every trainable
    # tensor in the graph), and listed apart from the stages `freeze` fixed
    unread = [] if mode == "all" else ["linear.bias", "linear.weight"]
    assert sorted(model.unread_parameters) == unread
    for name in ["linear.weight", "linear.bias"]:
        assert not params[name].requires_grad and torch.equal(params[name], before[name]), name
    assert model.backbone.training == (mode != "all")  # a fixed encoder stays in eval mode while the head trains
    head = model.classifier[-1].weight
    assert head.requires_grad


@pytest.mark.parametrize("backbone,mode", [("ge2e", "partial"), ("ge2e", "none"), ("deeptalk", "partial"),
                                           ("deeptalk", "none")])
def test_every_trainable_tensor_gets_a_gradient_so_ddp_can_run(backbone, mode):
    """DDP (trainer=ddp, ddp_sim) stops on a trainable tensor that gets no gradient: the loss must reach every one."""
    model = SERFinetuneModule(GE2E if backbone == "ge2e" else DEEPTALK, class_names=CLASSES, freeze=mode,
                              scheduler="none")
    wav = 0.1 * torch.randn(4, int(0.5 * model.backbone.sample_rate), generator=torch.Generator().manual_seed(0))
    model.train()
    torch.nn.functional.cross_entropy(model(wav), torch.arange(4) % len(CLASSES)).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


def test_partial_freeze_keeps_frozen_batch_norm_statistics_fixed():
    model = SERFinetuneModule(DEEPTALK, class_names=CLASSES, freeze="partial", freeze_stages=2, scheduler="none",
                              lr=1e-3)
    stages = dict(encoder_stages(model.backbone))
    assert set(stages["reference convolutions"]) <= set(model.frozen_parameters)
    bn = model.backbone.reference_encoder.bns[0]
    stats = bn.running_mean.clone()
    gru = model.backbone.reference_encoder.gru.weight_hh_l0.detach().clone()
    _steps(model, seconds=0.5)
    assert not bn.training and torch.equal(bn.running_mean, stats)
    assert not torch.equal(model.backbone.reference_encoder.gru.weight_hh_l0, gru)  # the GRU above fine-tunes


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="model.freeze='some'"):
        SERFinetuneModule(GE2E, freeze="some")
    with pytest.raises(ValueError, match=r"model.freeze_stages=9: expected 1..5"):
        SERFinetuneModule(GE2E, freeze="partial", freeze_stages=9)


def test_warm_start_carries_weights_and_provenance_and_the_checkpoint_does_not_reread_it(tmp_path):
    from lightning_modules.checkpoints import load_embedding_module

    tiny = {"_target_": "tests.helpers.TinyBackbone"}
    source = SERFinetuneModule(tiny, class_names=CLASSES, freeze="none")
    for p in source.backbone.parameters():
        p.data.normal_()
    init = tmp_path / "pretrained.ckpt"
    torch.save({"state_dict": source.state_dict(), "seen_speakers": ["synthetic:spk001"]}, init)
    model = SERFinetuneModule(tiny, class_names=CLASSES, freeze="none", init_from=str(init))
    for (name, p), q in zip(model.backbone.named_parameters(), source.backbone.parameters()):
        assert torch.equal(p, q), name
    assert "synthetic:spk001" in model.seen_speakers
    ckpt = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(ckpt)
    assert ckpt["hyper_parameters"]["init_from"] is None and ckpt["warm_started_from"] == str(init)
    assert model.hparams.init_from == str(init)  # the live module is untouched
    path = tmp_path / "ser.ckpt"
    torch.save(ckpt, path)
    init.unlink()  # a moved or deleted warm-start file must not break loading (predict.py)
    loaded = load_embedding_module(str(path))
    wav = [0.1 * torch.randn(16000)]
    torch.testing.assert_close(loaded.predict_proba(wav), model.predict_proba(wav))
    assert "synthetic:spk001" in loaded.seen_speakers




def test_frames_pooling_gives_the_statistics_of_features_layer_stats_and_batch_norm_standardises():
    """clip_pooling=frames: a whole clip's statistics are those of all its frames, each once (what the frozen
    layer_stats probe reads); stats_norm=batch standardises each column across clips like the probe's scaler."""
    model = SERFinetuneModule(GE2E, class_names=CLASSES, freeze="all", clip_pooling="frames", stats_norm="batch").eval()
    clips = [0.1 * torch.randn(n) for n in (9000, 30000, 52000)]
    captured = {}
    model.logits_from_stats = lambda stats: captured.setdefault("stats", stats) and torch.zeros(len(clips), 4)
    model.clip_logits(clips)
    got = torch.cat(captured["stats"], 1)
    want, _ = model.backbone.layer_stats_utterances(clips)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    norm = model.pooling.norms[0]
    assert isinstance(norm, torch.nn.BatchNorm1d) and not norm.affine
    with pytest.raises(ValueError, match="stats_norm"):
        SERFinetuneModule(GE2E, class_names=CLASSES, stats_norm="scaler")
    with pytest.raises(ValueError, match="clip_pooling"):
        SERFinetuneModule(GE2E, class_names=CLASSES, clip_pooling="mean")
