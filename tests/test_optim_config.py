"""One optimiser config group (configs/optim/, issue 19 item 5): lr, weight_decay, warmup_steps,
backbone_lr_scales, scheduler, init_from and nonfinite_loss live there, under `model.`, and no configs/model/ file repeats them. Every
experiment keeps the values it had when each model config set them itself; the command line still overrides
one key (`model.lr=...`) or the whole block (`optim=...`); sweep files and search presets name keys that exist."""
from __future__ import annotations

import re

import pytest
import yaml
from omegaconf import OmegaConf

from tests.conftest import ROOT
from utils.compose import compose_config

CONFIGS = ROOT / "configs"
OPTIM_KEYS = ("lr", "weight_decay", "warmup_steps", "backbone_lr_scales", "scheduler", "init_from", "nonfinite_loss")
MODEL_CONFIGS = sorted(CONFIGS.glob("model/*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))


def _values(lr, weight_decay=1e-4, warmup_steps=0, backbone_lr_scales=None):
    return {"lr": lr, "weight_decay": weight_decay, "warmup_steps": warmup_steps,
            "backbone_lr_scales": backbone_lr_scales or {}, "scheduler": "cosine", "init_from": None,
            "nonfinite_loss": "error"}


# The triplet option since issue 20 (the default run learns): a 5-step warm-up and DeepTalk's filterbank at 30x lr.
TRIPLET = {"warmup_steps": 5, "backbone_lr_scales": {"filterbank": 30}}


# What each experiment composed to before the group existed (each configs/model/ file set these itself);
# None = train.py without an experiment (model=triplet). A new experiment adds its row here.
EXPECTED = {
    None: ("triplet", _values(0.003, **TRIPLET)),
    "contrastive": ("default", _values(1e-4)),
    "contrastive_mtl": ("default", _values(1e-4)),
    "contrastive_mtl_adversarial": ("default", _values(1e-4)),
    "distill": ("distill", _values(5e-4, weight_decay=0.01, warmup_steps=50)),
    "distill_base": ("distill", _values(5e-4, weight_decay=0.01, warmup_steps=4000)),  # the experiment's warm-up
    "ser_finetune": ("default", _values(1e-4)),
    "triplet_speaker": ("triplet", _values(1e-3, **TRIPLET)),  # the experiment's lr
}
# Search presets without a study name, and the experiment their comment runs them with.
PRESET_EXPERIMENT = {"contrastive_grid": "contrastive_mtl"}


def _compose(tmp_path, overrides, config_name="train.yaml"):
    return compose_config(config_name, overrides, output_dir=tmp_path, log_dir=tmp_path / "logs",
                          data_dir=tmp_path / "data")


def _optim(cfg) -> dict:
    return {k: cfg.model[k] for k in OPTIM_KEYS}


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=[p.stem for p in MODEL_CONFIGS])
def test_no_model_config_sets_the_optimiser_keys_itself(path):
    spec = yaml.safe_load(path.read_text())
    assert not set(OPTIM_KEYS) & set(spec), f"{path.name} sets {sorted(set(OPTIM_KEYS) & set(spec))}: put them " \
                                            "in a configs/optim/ option and select it in the defaults list"
    defaults = [next(iter(d)) if isinstance(d, dict) else d for d in spec.get("defaults", [])]
    picks_optim = any(re.match(r"(override\s+)?/?optim(@|$)", str(d)) for d in defaults)
    inherits = [d for d in defaults if isinstance(d, str) and (CONFIGS / "model" / f"{d}.yaml").is_file()]
    assert picks_optim or inherits, f"{path.name} neither selects an optim option nor extends a model config that does"


def test_the_optim_group_holds_the_keys_under_model():
    options = sorted(CONFIGS.glob("optim/*.yaml"))
    assert {p.stem for p in options} >= {"default", "triplet", "distill"}
    for p in options:
        assert p.read_text().startswith("# @package model\n"), f"{p.name}: its keys must land under model."
    default = yaml.safe_load((CONFIGS / "optim" / "default.yaml").read_text())
    assert set(default) == set(OPTIM_KEYS)


def test_every_experiment_is_in_the_table():
    assert set(EXPECTED) == {None, *EXPERIMENTS}


@pytest.mark.parametrize("config_name", ["train.yaml", "crossval.yaml"])
@pytest.mark.parametrize("experiment", list(EXPECTED), ids=[str(e) for e in EXPECTED])
def test_each_experiment_keeps_its_optimiser_settings(experiment, config_name, tmp_path):
    cfg = _compose(tmp_path, [] if experiment is None else [f"experiment={experiment}"], config_name)
    option, values = EXPECTED[experiment]
    assert _optim(cfg) == values
    assert cfg.hydra.runtime.choices.optim == option
    assert "optim" not in cfg  # the block lives under model., where the module constructors read it


def test_the_command_line_overrides_one_key_or_the_whole_block(tmp_path):
    cfg = _compose(tmp_path, ["experiment=ser_finetune", "model.lr=1e-3"])
    assert _optim(cfg) == {**EXPECTED["ser_finetune"][1], "lr": 1e-3}
    assert cfg.model.head_lr == 0.01  # an objective's own optimiser key stays in its model config

    cfg = _compose(tmp_path, ["model=triplet", "optim=distill"])  # the command line beats the model's pick
    assert _optim(cfg) == EXPECTED["distill"][1]

    cfg = _compose(tmp_path, ["experiment=distill", "model.weight_decay=0.5", "model.init_from=/x.ckpt",
                              "model.nonfinite_loss=skip", "model.scheduler=none", "model.warmup_steps=7"])
    assert _optim(cfg) == {"lr": 5e-4, "weight_decay": 0.5, "warmup_steps": 7, "backbone_lr_scales": {},
                           "scheduler": "none", "init_from": "/x.ckpt", "nonfinite_loss": "skip"}


def _exists(cfg, key: str) -> bool:
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return node is not None and leaf in node


@pytest.mark.parametrize("sweep", sorted(CONFIGS.glob("sweeps/*.yaml")), ids=lambda p: p.stem)
def test_wandb_sweeps_name_keys_that_exist(sweep, tmp_path):
    spec = yaml.safe_load(sweep.read_text())
    experiment = next(a.split("=", 1)[1] for a in spec["command"] if str(a).startswith("experiment="))
    cfg = _compose(tmp_path, [f"experiment={experiment}"])
    missing = [k for k in spec["parameters"] if not _exists(cfg, k)]
    assert missing == [], f"{sweep.name} sweeps keys that experiment={experiment} does not have: {missing}"


@pytest.mark.parametrize("preset", sorted(CONFIGS.glob("hparams_search/*.yaml")), ids=lambda p: p.stem)
def test_search_presets_name_keys_that_exist(preset, tmp_path):
    study = yaml.safe_load(preset.read_text())["hydra"]["sweeper"].get("study_name")
    experiment = PRESET_EXPERIMENT.get(preset.stem, study)
    cfg = _compose(tmp_path, [f"experiment={experiment}", f"hparams_search={preset.stem}"])
    missing = [k for k in cfg.hydra.sweeper.params if not _exists(cfg, k)]
    assert missing == [], f"{preset.name} searches keys that experiment={experiment} does not have: {missing}"


# ----- backbone_lr_scales: a backbone submodule learns at factor x lr -----
def _optimizer(tmp_path, overrides):
    from tasks.train import build_model

    return build_model(_compose(tmp_path, ["model.scheduler=none", *overrides])).configure_optimizers()


def test_backbone_lr_scales_give_the_named_submodule_its_own_rate(tmp_path):
    from tasks.train import build_model

    model = build_model(_compose(tmp_path, ["model.scheduler=none"]))  # the default run: DeepTalk, lr 3e-3
    names = {id(p): n for n, p in model.named_parameters()}
    groups = model.configure_optimizers().param_groups
    fast = {names[id(p)] for g in groups if g["lr"] == pytest.approx(30 * 3e-3) for p in g["params"]}
    slow = {names[id(p)] for g in groups if g["lr"] == pytest.approx(3e-3) for p in g["params"]}
    assert fast and {n.split(".")[1] for n in fast} == {"filterbank"}, sorted(fast)[:5]
    assert slow and not any(n.startswith("backbone.filterbank.") for n in slow)
    every = [names[id(p)] for g in groups for p in g["params"]]
    assert sorted(every) == sorted(n for n, p in model.named_parameters() if p.requires_grad)  # each once


def test_backbone_lr_scales_name_a_missing_submodule_in_a_warning_and_reject_bad_factors(tmp_path, caplog):
    with caplog.at_level("WARNING"):
        opt = _optimizer(tmp_path, ["backbone=ge2e"])  # GE2E has no `filterbank`
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([3e-3] * len(opt.param_groups))
    assert "filterbank" in caplog.text and "GE2E" in caplog.text.upper()
    with pytest.raises(Exception, match=r"backbone_lr_scales\.filterbank=-1: expected a positive number"):  # Hydra wraps it
        _optimizer(tmp_path, ["model.backbone_lr_scales.filterbank=-1"])
