"""The body of crossval.py: does training objective X make emotion recognition on unseen speakers better than
the encoder it starts from? One command, every experiment, the folds of evaluate.py.

1. The corpus's labelled clips are folded exactly as evaluate.py folds them (`evaluation.fold_plan`: the same
   `seed`, `eval.n_folds` and `eval.repeats` give the same test speakers), before anything is trained or
   embedded, so a plan the corpus cannot support fails at once.
2. Per fold: the experiment trains on the fold's training speakers only (`data.speakers`); `crossval.val_speakers`
   of them validate (early stopping, checkpoint selection) and are never tested. With `crossval.pretrain` a first
   stage (e.g. experiment=contrastive_mtl) trains on the same speakers and warm-starts the experiment.
3. Trust: the selected checkpoint and every checkpoint of its warm-start chain must not have met a test speaker
   (`seen_speakers`); a chain that records no speakers is refused unless `crossval.allow_unknown_provenance`
   (then every result says 'provenance unknown').
4. Scores on the fold's test speakers: the probes (`crossval.probes`: a head on frozen clip features) of the
   baseline (the encoder as training started: pretrained GE2E, the `init_from` checkpoint, the random init) and
   of the trained encoder; and the model's own classifier when it has one (ser_finetune).
5. Each finished fold writes `folds/<fold>/result.json`; a rerun of the same command continues from there.
   At the end: `comparison.json`, `results.md` and `paired_folds.png` (evaluation/crossval_report.py), also sent
   to the loggers.

Frozen work is done once: the frozen prefix of the trained encoder per clip (callbacks/frozen_prefix.py), and
the clip features of an unchanged encoder (lightning_modules/clip_feature_cache.py) across folds and repeats.
"""
from __future__ import annotations

import copy
import gc
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from evaluation.crossval_report import assemble, flat_scalars, write_report
from evaluation.embeddings_io import EmbeddingSet
from evaluation.fold_plan import labelled_rows, plan_for_config
from evaluation.metrics import compute_metrics
from evaluation.protocols import Fold, FoldPlan
from evaluation.provenance import check_chain
from common.errors import ConfigError

log = logging.getLogger(__name__)
FEATURES = ("embedding", "layer_stats", "auto")


# ----- settings -----
def settings_of(cfg: DictConfig) -> dict:
    from evaluation.heads import HEADS

    c = cfg.get("crossval")
    if c is None:
        raise ConfigError("crossval.py needs the crossval block (configs/crossval.yaml)")
    probes = OmegaConf.to_container(c.probes, resolve=True) if c.get("probes") else []
    for i, p in enumerate(probes):
        if not isinstance(p, dict) or set(p) != {"features", "head"}:
            raise ConfigError(f"crossval.probes[{i}]={p!r}: expected {{features: embedding|layer_stats|auto, head: <head>}}")
        if p["features"] not in FEATURES:
            raise ConfigError(f"crossval.probes[{i}].features={p['features']!r}: expected one of {list(FEATURES)}")
        if p["head"] not in HEADS:
            raise ConfigError(f"crossval.probes[{i}].head={p['head']!r}: expected one of {sorted(HEADS)}")
    val = c.get("val_speakers", 2)
    if not (isinstance(val, (int, float)) and val > 0):
        raise ConfigError(f"crossval.val_speakers={val!r}: expected a count >= 1 or a fraction in (0, 1)")
    pretrain = c.get("pretrain")
    if pretrain is not None and not isinstance(pretrain, (list, ListConfig)):
        raise ConfigError(f"crossval.pretrain={pretrain!r}: expected a list of overrides, e.g. [experiment=contrastive_mtl]")
    references = [str(r) for r in (c.get("references") or [])]
    from utils.config_checks import group_options

    bad = [r for r in references if r not in group_options("backbone")]
    if bad:
        raise ConfigError(f"crossval.references={references}: {bad} not a backbone config (configs/backbone/: "
                          f"{', '.join(group_options('backbone'))})")
    keep = c.get("keep_checkpoints", "best")
    if keep not in ("best", "none"):
        raise ConfigError(f"crossval.keep_checkpoints={keep!r}: expected best or none")
    return {"probes": probes, "val_speakers": int(val) if val >= 1 else float(val),
            "pretrain": [str(o) for o in pretrain] if pretrain else None,
            "allow_unknown_provenance": bool(c.get("allow_unknown_provenance", False)),
            "folds": list(c.folds) if c.get("folds") is not None else None, "keep_checkpoints": keep,
            "batch_size": int(c.get("batch_size", 16)), "references": references,
            "score_test": bool(c.get("score_test", True)), "refit": bool(c.get("refit", False))}


def task_overrides() -> list[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return [str(o) for o in HydraConfig.get().overrides.task]
    except Exception:  # composed outside a Hydra run (tests)
        return []


def defining_overrides(overrides: list[str]) -> list[str]:
    """What makes two runs the same experiment (not where they write, not which folds this process runs)."""
    skip = ("hydra.", "crossval.folds", "crossval.out_dir", "crossval.batch_size", "crossval.keep_checkpoints",
            "logger", "trainer.accelerator", "trainer.devices")
    return sorted(o for o in overrides if not o.lstrip("+~").split("=", 1)[0].startswith(skip))


def results_dir(cfg: DictConfig, overrides: list[str]) -> Path:
    if cfg.crossval.get("out_dir"):
        return Path(str(cfg.crossval.out_dir))
    digest = hashlib.sha1("\n".join(defining_overrides(overrides)).encode()).hexdigest()[:8]
    name = f"{cfg.get('experiment_name') or 'default'}-{digest}"
    return Path(str(cfg.paths.log_dir)) / "crossval" / str(cfg.data.corpus) / name


def runs_dir_of(cfg: DictConfig, out: Path) -> Path:
    """Where the folds' training runs (checkpoints, logs) go: under the log folder, keyed by the results folder."""
    key = hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:8]
    return Path(str(cfg.paths.log_dir)) / "crossval_runs" / f"{out.name}-{key}"


def data_overrides(overrides: list[str]) -> list[str]:
    """The corpus choice of the command, for a chained first stage (its own data module, not the SER one)."""
    keys = [(o, o.lstrip("+~").split("=", 1)[0]) for o in overrides]
    return [o for o, k in keys if k in ("data", "paths.data_dir") or
            (k.startswith("data.") and k not in ("data._target_", "data.classes"))]


# ----- one fold -----
class StartSnapshot(L.Callback):
    """The encoder's weights as training starts (after any warm start): the fold's baseline encoder."""

    def __init__(self):
        self.state: dict[str, torch.Tensor] | None = None

    def on_train_start(self, trainer, pl_module):
        self.state = {k: v.detach().cpu().clone() for k, v in pl_module.backbone.state_dict().items()}


def restrict(cfg: DictConfig, stage_dir: Path, train_speakers: list[str], val_speakers, seed: int,
             epochs: int | None = None, corpus: str | None = None, corpus_speakers: list[str] | None = None) -> DictConfig:
    """A copy of `cfg` training on `train_speakers` (some of which validate), writing to `stage_dir`, quiet.
    epochs: a refit on every training speaker (val_speakers=0) for that many epochs, nothing selected.
    A stage on a pool of corpora (`data=pooled`, e.g. label-free pretraining on other corpora's audio as well)
    keeps every speaker of the other corpora and, of the evaluated `corpus`, only `train_speakers`: the rest of
    `corpus_speakers` (the fold's test speakers) is excluded."""
    from datamodules.speaker_datamodule import split_speakers

    fc = copy.deepcopy(cfg)
    with open_dict(fc):
        fc.paths.output_dir = str(stage_dir)
        fc.seed = int(seed)
        pooled = str(fc.data.get("corpus")) == "pooled"
        if pooled:
            members = [str(m["corpus"]) for m in fc.data.corpus_options.corpora]
            if corpus not in members:
                raise ConfigError(f"a pooled stage must contain the evaluated corpus {corpus} (it has {members}): its "
                                  "speakers are how the fold's test speakers are kept out")
            fc.data.speakers = None
            fc.data.exclude_speakers = sorted(set(corpus_speakers or []) - set(train_speakers))
        else:
            fc.data.speakers = list(train_speakers)
        fc.data.val_speakers = val_speakers
        fc.logger = None
        fc.ckpt_path = None
        for name in ("progress_bar", "model_summary"):
            fc.callbacks.pop(name, None)
        fc.trainer.enable_progress_bar = False
        fc.trainer.enable_model_summary = False
        if epochs is not None:
            fc.trainer.max_epochs = int(epochs)
            fc.callbacks.pop("early_stopping", None)
            if "model_checkpoint" in fc.callbacks:
                fc.callbacks.model_checkpoint.monitor = None  # the last weights
        n_fit, n_val = (len(x) for x in split_speakers(train_speakers, val_speakers, int(fc.data.get("seed", seed))))
        if pooled:  # the pool's other speakers train too: P is not limited by the fold
            n_fit = int(fc.data.get("n_speakers", n_fit))
        monitor = OmegaConf.select(fc, "callbacks.model_checkpoint.monitor", default=None)
        if monitor == "val/probe_ua" and n_val < 2:
            raise ConfigError(f"crossval.val_speakers={val_speakers}: {n_val} validation speaker(s), but this experiment "
                              "selects its checkpoint on val/probe_ua, an emotion probe scored across validation speakers "
                              "(at least 2): raise crossval.val_speakers")
        if "n_speakers" in fc.data and int(fc.data.n_speakers) > n_fit:
            log.info("data.n_speakers %d -> %d: the fold has %d training speakers", int(fc.data.n_speakers), n_fit, n_fit)
            fc.data.n_speakers = n_fit
    return fc


def train_stage(cfg: DictConfig, snapshot: bool) -> dict:
    from tasks.train import train

    snap = StartSnapshot() if snapshot else None
    with open_dict(cfg):
        if snap is not None:
            cfg.callbacks.start_snapshot = {"_target_": "tasks.crossval.StartSnapshot"}
    metrics, objs = train(cfg)
    trainer = objs["trainer"]
    if snapshot:
        snap = next(cb for cb in trainer.callbacks if isinstance(cb, StartSnapshot))
    best = metrics.get("best_ckpt_path") or ""
    selector = trainer.checkpoint_callback
    score = getattr(selector, "best_model_score", None) if best else None
    purity = []
    for cb in trainer.callbacks:
        for r in getattr(cb, "history", []) or []:
            if isinstance(getattr(r, "monitor", None), dict) and r.monitor.get("purity") is not None:
                purity.append(float(r.monitor["purity"]))
    return {"best": best, "score": None if score is None else float(score),
            "monitor": getattr(selector, "monitor", None), "model": objs["model"].cpu(), "datamodule": objs["datamodule"],
            "epochs_run": int(trainer.current_epoch), "snapshot": snap.state if snap is not None else None,
            "stopped_early": any(getattr(cb, "stopped_epoch", 0) > 0 for cb in trainer.callbacks),
            "cluster_purity": purity}


def score_probes(side: str, backbone, ctx: dict, fold, probes: list[dict], fit_speakers=None) -> dict:
    """{`<side>/<features>/<head>`: scores} of every probe on the fold (fit on its training rows, or on those of
    `fit_speakers` only, tested on its test rows)."""
    from evaluation.run_heads import run_evaluation
    from lightning_modules.clip_feature_cache import clip_features
    from tasks.evaluate import head_kwargs_from

    out = {}
    features = clip_features(backbone, ctx["dm"], ctx["records"], [p["features"] for p in probes], ctx["cache_dir"],
                             ctx["batch_size"])
    for p in probes:
        X, description = features[p["features"]]
        ls = ctx["label_set"]
        es = EmbeddingSet(X, ls.emotion, ls.speaker, utt_id=ls.utt_id, features=description)
        kwargs = head_kwargs_from(ctx["eval"], description, [p["head"]])
        if fit_speakers is not None:
            keep = fold.train_idx[np.isin(ls.speaker[fold.train_idx], list(fit_speakers))]
            fold = Fold(fold.name, keep, fold.test_idx, fold.test_speakers, fold.repeat)
        one = FoldPlan(protocol="kfold", requested="crossval", folds=[fold])
        res = run_evaluation(es, heads=[p["head"]], plan=one, seed=ctx["seed"] + fold.repeat,
                             balancing=ctx["eval"].balancing, head_kwargs=kwargs, out_dir=None, verbose=False,
                             class_order=ctx["classes"])
        f = res[p["head"]]["folds"][0]
        out[f"{side}/{p['features']}/{p['head']}"] = {"ua": f["ua"], "wa": f["wa"], "macro_f1": f["macro_f1"],
                                                      "n_fit": int(f["n_fit"]), "n_test": int(f["n_test"])}
    return out


def score_classifier(module, ctx: dict, fold) -> dict | None:
    """The model's own emotion classifier on the test clips (SER checkpoints: `class_names`, `predict_proba`)."""
    names = list(getattr(module.hparams, "class_names", None) or [])
    if not names or not hasattr(module, "predict_proba"):
        return None
    test = [ctx["records"][i] for i in fold.test_idx]
    probs = []
    with torch.no_grad():
        for batch in ctx["dm"].utterance_loader(test, ctx["batch_size"]):
            probs.append(module.predict_proba(batch["wavs"]).float().cpu())
    pred = np.asarray(names)[torch.cat(probs).argmax(1).numpy()]
    true = ctx["label_set"].emotion[fold.test_idx]
    unknown = sorted(set(true.tolist()) - set(names))
    if unknown:
        raise ConfigError(f"the model classifies {names} but the evaluated labels include {unknown} (eval.classes)")
    m = compute_metrics(true, pred, ctx["classes"])
    return {"ua": m["ua"], "wa": m["wa"], "macro_f1": m["macro_f1"], "n_test": int(len(test))}


def reference_encoder(name: str):
    """A backbone config of configs/backbone/ as it is (e.g. the pretrained GE2E), untrained here."""
    from lightning_modules.backbone_factory import build_backbone
    from utils.config_checks import CONFIG_DIR

    spec = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "backbone" / f"{name}.yaml"), resolve=True)
    return build_backbone(spec).eval()


def baseline_encoder(stage_cfg: DictConfig, state: dict):
    """The encoder training started from, rebuilt fresh (every parameter trainable, as evaluate.py builds one:
    its features are those of the frozen encoder, whatever the run froze)."""
    from lightning_modules.backbone_factory import build_backbone

    spec = OmegaConf.to_container(stage_cfg.backbone, resolve=True)
    model_spec = OmegaConf.to_container(stage_cfg.model, resolve=True)
    if "distillation" in str(model_spec.get("_target_", "")):  # the student wraps the backbone
        from lightning_modules.distillation import student_spec

        spec = student_spec(spec, model_spec.get("encoder"), model_spec.get("utterance", "chunk"))
    backbone = build_backbone(spec)
    backbone.load_state_dict(state)
    backbone.requires_grad_(True)
    if hasattr(backbone, "front_end") and getattr(backbone, "freeze_front_end", False):
        backbone.front_end.requires_grad_(False)  # the architecture's own choice, not the run's
    return backbone.eval()


def run_fold(fold, ctx: dict, cfg: DictConfig, settings: dict, out: Path) -> dict:
    from lightning_modules.checkpoints import read_checkpoint

    fold_dir = out / "folds" / fold.name
    result_file = fold_dir / "result.json"
    run_dir = ctx["runs_dir"] / fold.name  # checkpoints and training logs (the results folder stays small)
    if result_file.is_file():
        log.info("fold %s: read back from %s", fold.name, result_file)
        return json.loads(result_file.read_text())
    shutil.rmtree(fold_dir, ignore_errors=True)  # an unfinished fold starts clean
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.perf_counter()
    ls = ctx["label_set"]
    train_speakers = sorted(set(ls.speaker[fold.train_idx].tolist()))
    seed = int(cfg.seed) + fold.repeat
    entry: dict = {"fold": fold.describe(), "train_speakers": train_speakers}
    main_cfg = restrict(cfg, run_dir / "train", train_speakers, settings["val_speakers"], seed)
    first = None
    if settings["pretrain"]:
        from utils.compose import compose_config

        own_data = any(o.lstrip("+~").split("=", 1)[0] == "data" for o in settings["pretrain"])
        pre = compose_config("train.yaml", ([] if own_data else data_overrides(ctx["overrides"])) + settings["pretrain"],
                             output_dir=run_dir / "pretrain", inside_run=True)
        with open_dict(pre):
            pre.paths.data_dir, pre.paths.log_dir = str(cfg.paths.data_dir), str(cfg.paths.log_dir)
        pre = restrict(pre, run_dir / "pretrain", train_speakers, settings["val_speakers"], seed,
                       corpus=str(cfg.data.corpus), corpus_speakers=ctx["corpus_speakers"])
        first = train_stage(pre, snapshot=True)
        init = first["best"] or str(run_dir / "pretrain" / "checkpoints" / "last.ckpt")
        entry["pretrain"] = {"selected_checkpoint": init, "selected_on": first["monitor"], "score": first["score"],
                             "epochs_run": first["epochs_run"], "cluster_purity": first["cluster_purity"]}
        with open_dict(main_cfg):
            main_cfg.model.init_from = init
        baseline_cfg, snapshot = pre, first["snapshot"]
        first.pop("model"), first.pop("datamodule")
    run = train_stage(main_cfg, snapshot=first is None)
    if first is None:
        baseline_cfg, snapshot = main_cfg, run["snapshot"]
    refit = None
    if settings["refit"] and run["best"]:
        epochs = int(read_checkpoint(run["best"]).raw.get("epoch", run["epochs_run"] - 1)) + 1
        refit_cfg = restrict(main_cfg if first is None else main_cfg, run_dir / "refit", train_speakers, 0, seed,
                             epochs=epochs)
        with open_dict(refit_cfg):
            refit_cfg.callbacks.pop("start_snapshot", None)
        refit = train_stage(refit_cfg, snapshot=False)
        entry["refit"] = {"epochs": epochs, "checkpoint": refit["best"] or "last epoch",
                          "fit_speakers": sorted({r.speaker for r in refit["datamodule"].train_records})}
    final = refit or run
    module = read_checkpoint(final["best"]).module() if final["best"] else final["model"]
    dm = final["datamodule"]
    test_speakers = list(fold.test_speakers)
    if set(dm.val_speakers) & set(test_speakers) or {r.speaker for r in dm.train_records} & set(test_speakers):
        raise RuntimeError(f"fold {fold.name}: the run's training or validation speakers include test speakers")
    init = module.hparams.get("init_from")
    chain = read_checkpoint(final["best"]).chain() if final["best"] else [
        {"path": "<the run's last weights>", "missing": False, "seen": sorted(module.seen_speakers),
         "unknown_from": list(module.unknown_provenance)}] + (
        [] if not init else read_checkpoint(init).chain() if Path(init).is_file() else
        [{"path": str(init), "missing": True, "seen": None, "unknown_from": []}])
    trust = check_chain(chain, test_speakers, settings["allow_unknown_provenance"], where=f"fold {fold.name}: ")
    scores = {}
    if settings["score_test"]:
        start = baseline_encoder(baseline_cfg, snapshot)
        scores.update(score_probes("baseline", start, ctx, fold, settings["probes"]))
        fit_speakers = sorted({r.speaker for r in dm.train_records})
        if len(fit_speakers) < len(train_speakers):  # what the probes do with the trained model's rows only
            scores.update(score_probes("baseline[fit]", start, ctx, fold, settings["probes"], fit_speakers))
        for name in settings["references"]:
            scores.update(score_probes(f"reference-{name}", reference_encoder(name), ctx, fold, settings["probes"]))
        scores.update(score_probes("trained", module.backbone, ctx, fold, settings["probes"]))
        own = score_classifier(module, ctx, fold)
        if own is not None:
            own["n_fit"] = int(len(dm.train_records))
            scores["trained/classifier"] = own
    layer_weights = module.layer_weight_table() if hasattr(module, "layer_weight_table") else None
    entry.update({"val_speakers": list(dm.val_speakers), "fit_speakers": sorted({r.speaker for r in dm.train_records}),
                  "selected_checkpoint": run["best"] or "last epoch", "selected_on": run["monitor"] if run["best"] else None,
                  "selected_score": run["score"], "epochs_run": run["epochs_run"], "stopped_early": run["stopped_early"],
                  "cluster_purity": run["cluster_purity"], "layer_weights": layer_weights, "trust": trust,
                  "labels": ["provenance unknown"] if trust["status"] != "clean" else [], "scores": scores,
                  "seconds": round(time.perf_counter() - t0, 1)})
    if settings["keep_checkpoints"] == "none" or run["best"]:
        for p in (run_dir / "train" / "checkpoints").glob("*.ckpt"):
            if settings["keep_checkpoints"] == "none" or str(p) != run["best"]:
                p.unlink()
    fold_dir.mkdir(parents=True, exist_ok=True)
    tmp = result_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(entry, indent=2) + "\n")
    tmp.replace(result_file)
    log.info("fold %s (%s): %s; selected on %s = %s, %.1f min", fold.name, ", ".join(test_speakers),
             ", ".join(f"{k} {100 * v['ua']:.1f}" for k, v in scores.items()) or "test speakers not scored",
             entry["selected_on"], entry["selected_score"], entry["seconds"] / 60)
    del module, run
    gc.collect()
    return entry


# ----- the task -----
def plan_of(cfg: DictConfig):
    """(records, labelled set, plan): evaluate.py's folds of the configured corpus, nothing embedded."""
    from tasks.evaluate import prepare_corpus

    dm, records = prepare_corpus(cfg)
    label_set, rows, left_out = labelled_rows(records, cfg.eval)
    plan = plan_for_config(cfg.eval, cfg.seed, label_set)
    return dm, [records[i] for i in rows], label_set, plan, left_out


def crossval(cfg: DictConfig) -> dict:
    settings = settings_of(cfg)
    overrides = task_overrides()
    with open_dict(cfg):  # keys read from Hydra's runtime: fixed now (the chained stages compose configs of their own)
        for key in ("experiment_name", "paths.output_dir", "paths.work_dir"):
            OmegaConf.update(cfg, key, OmegaConf.select(cfg, key, default=None), force_add=True)
    dm, records, label_set, plan, left_out = plan_of(cfg)
    from evaluation.fold_plan import load_records

    corpus_speakers = sorted({r.speaker for r in load_records(cfg.data)})
    out = results_dir(cfg, overrides)
    out.mkdir(parents=True, exist_ok=True)
    folds = plan.folds if settings["folds"] is None else [plan.folds[i] for i in _fold_indices(settings["folds"], plan)]
    classes = list(cfg.eval.classes) if cfg.eval.get("classes") else sorted(set(label_set.emotion.tolist()))
    command = "python crossval.py " + " ".join(overrides)
    log.info("crossval: %d folds (%s), results in %s", len(folds), plan.protocol, out)
    (out / "command.txt").write_text(command + "\n")
    scoring_dm = dm
    if hasattr(scoring_dm, "use_prefixes"):
        scoring_dm.use_prefixes(None)
    ctx = {"dm": scoring_dm, "records": records, "label_set": label_set, "eval": cfg.eval, "seed": int(cfg.seed),
           "classes": classes, "cache_dir": Path(str(cfg.paths.data_dir)) / "clip_features",
           "batch_size": settings["batch_size"], "overrides": overrides, "runs_dir": runs_dir_of(cfg, out),
           "corpus_speakers": corpus_speakers}
    for f in folds:
        run_fold(f, ctx, cfg, settings, out)
    done = _finished_folds(out, plan)
    report_settings = {"command": command, "experiment": str(cfg.get("experiment_name") or "default"),
                       "corpus": str(cfg.data.corpus), "seed": int(cfg.seed), "val_speakers": settings["val_speakers"],
                       "probes": settings["probes"], "pretrain": settings["pretrain"],
                       "plan": {**plan.describe(), "n_folds": len(plan.folds)}, "left_out": left_out,
                       "n_clips": len(records), "n_speakers": len(set(label_set.speaker.tolist())),
                       "folds_run": [f["fold"]["name"] for f in done]}
    result = assemble(done, report_settings)
    files = write_report(result, out)
    _log_to_loggers(cfg, result, files)
    print(files["results"].read_text())
    missing = len(plan.folds) - len(done)
    print(f"wrote {', '.join(str(p) for p in files.values())}" +
          (f"; {missing} fold(s) of the plan not run yet (rerun without crossval.folds to finish)" if missing else ""))
    return result


def _fold_indices(wanted: list, plan) -> list[int]:
    n = len(plan.folds)
    bad = [k for k in wanted if not (isinstance(k, int) and 0 <= k < n)]
    if bad:
        raise ConfigError(f"crossval.folds={wanted}: expected fold indices in 0..{n - 1} "
                          f"({', '.join(f.name for f in plan.folds)})")
    return sorted(set(wanted))


def _finished_folds(out: Path, plan) -> list[dict]:
    """Every fold of the plan with a result in the folder (this process's and those of others)."""
    done = []
    for f in plan.folds:
        p = out / "folds" / f.name / "result.json"
        if p.is_file():
            r = json.loads(p.read_text())
            if r["fold"]["test_speakers"] != list(f.test_speakers):
                raise ConfigError(f"{p}: fold {f.name} tested {r['fold']['test_speakers']}, the plan says "
                                  f"{list(f.test_speakers)}: this folder belongs to another plan (crossval.out_dir)")
            done.append(r)
    return done


def _log_to_loggers(cfg: DictConfig, result: dict, files: dict) -> None:
    from utils.instantiators import instantiate_loggers

    loggers = instantiate_loggers(cfg.get("logger"))
    for lg in loggers:
        lg.log_metrics(flat_scalars(result))
        if "plot" in files and hasattr(lg, "log_image"):
            lg.log_image(key="crossval/paired_folds", images=[str(files["plot"])])
        if hasattr(lg, "save"):
            lg.save()
