"""The body of predict.py: apply a trained SER model to audio files and list every one of them.

Two kinds of model (`ckpt_path=`):

1. A bundle exported by evaluate.py (`<run>/model/`, or the evaluate run folder): a frozen encoder plus
   heads fitted on its embeddings (evaluation/head_bundle.py). Clips are embedded with
   `lightning_modules.clip_embedding.embed_clips` (the bundle's `features.output`; for layer_stats the
   columns of the layers the head was fitted on are kept, after checking the encoder still has the
   recorded layers), then the head predicts. The encoder's weights must still hash to what the bundle recorded.
2. A SER checkpoint: any LightningModule checkpoint written by this framework that meets the
   interface below (e.g. the coming `experiment=ser_finetune`). It predicts from the audio itself.

SER checkpoint interface (docs/predict.md):
- the checkpoint holds `module_class` ("package.module.Class"), `hyper_parameters` and `state_dict`,
  as `EmbeddingModule.on_save_checkpoint` writes them (every subclass does), so that
  `lightning_modules.checkpoints.read_checkpoint` rebuilds it;
- `hyper_parameters["class_names"]`: the C class names, in the column order of `predict_proba`;
- `predict_proba(wavs: list[Tensor]) -> Tensor (N, C)`: class probabilities (rows sum to 1) of N
  variable-length 1-D float waveforms at the module's sample rate, prepared as at training (below).
  It runs inside Lightning's predict loop (device and autocast set by the `trainer` group) but
  must not need `self.trainer`;
- the sample rate is `module.backbone.sample_rate` (every EmbeddingModule) or
  `hyper_parameters["sample_rate"]`; trimming and loudness normalisation come from the training
  datamodule's hyper-parameters Lightning stores (`datamodule_hyper_parameters.trim_silence`,
  `.normalize_loudness`), else trim=true, normalise=false (printed).

Every input file is listed in predictions.csv: `ok` (predicted; kept quality flags such as clipping in
`flags`), a quality category the policy skips (`nan_inf`, `digital_silence`, `near_silence`,
`too_short`), or why the file could not be used (`empty_file`, `unreadable` (an audio extension over
content libsndfile cannot decode), `not_audio` (any other file libsndfile does not recognise), `no_frames`,
`hidden` (names starting with "."), `hidden_folder` (not walked), `missing`). Formats come from the
content: a FLAC named .dat is read.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils.data import DataLoader

from common.errors import ConfigError

log = logging.getLogger(__name__)

OK = "ok"
PREDICTIONS_FILE = "predictions.csv"
SUMMARY_FILE = "predict_summary.json"
# probe_file reasons (datamodules/manifest.py) -> status
_REASON_STATUS = (("empty file", "empty_file"), ("missing", "missing"), ("no audio frames", "no_frames"),
                  ("all-zero header", "unreadable"), ("undecodable", "unreadable"), ("unreadable audio", "unreadable"))


@dataclass
class InputFile:
    path: str
    status: str | None = None  # None until screened; OK or why it is not predicted
    detail: str = ""
    flags: list[str] = field(default_factory=list)
    predicted: str = ""
    scores: np.ndarray | None = None


@dataclass
class Model:
    """What predict needs of either kind of model: a module to run, and how to read its output."""

    kind: str  # "bundle" | "checkpoint"
    module: torch.nn.Module
    classes: list[str]
    audio: dict  # sample_rate, trim_silence, normalize_loudness
    mode: str  # "features" (bundle: embed, then the head) | "proba" (SER checkpoint)
    features: str = "embedding"
    head: Any = None
    head_name: str | None = None
    feature_spec: dict | None = None  # the bundle's `features` (layer_stats: which layers the head reads)
    description: dict = field(default_factory=dict)


# ----- the model -----
def load_model(cfg: DictConfig) -> Model:
    from evaluation.head_bundle import choose_head, find_bundle, load_head, read_spec
    from lightning_modules.checkpoints import bundle_encoder

    ckpt = cfg.get("ckpt_path")
    if not ckpt:
        raise ConfigError("predict.py needs ckpt_path=<model>: a bundle evaluate.py exported (<run>/model or the "
                          "evaluate run folder) or a SER checkpoint (docs/predict.md)")
    path = Path(str(ckpt)).expanduser()
    if not path.exists():
        raise ConfigError(f"ckpt_path={ckpt} does not exist")
    bundle_dir = find_bundle(path)
    if bundle_dir is None and path.is_dir():
        raise ConfigError(f"ckpt_path={ckpt} is a folder without a model bundle (bundle.json, or model/bundle.json): "
                          "evaluate.py writes one to <run>/model/ (eval.export.heads)")
    if bundle_dir is None:
        return load_ser_checkpoint(path)
    spec = read_spec(bundle_dir)
    name = choose_head(spec, cfg.get("head"))
    head = load_head(bundle_dir, spec, name, allow_untrusted=bool(cfg.get("allow_untrusted_types", False)))
    features = str(spec["features"].get("output", "embedding"))
    from lightning_modules.clip_embedding import CLIP_OUTPUTS, describe_output

    if features not in CLIP_OUTPUTS:
        raise ConfigError(f"{bundle_dir}: the heads were fitted on features {features!r}, which this version cannot "
                          f"compute (known: {sorted(CLIP_OUTPUTS)})")
    module = bundle_encoder(spec["encoder"], cfg.get("encoder_ckpt_path"))
    if features == "layer_stats":
        from evaluation.layer_features import same_backbone_layers

        if "layers" not in spec["features"]:
            raise ConfigError(f"{bundle_dir}: features layer_stats without the list of layers the heads were fitted on")
        computed = describe_output(module, features)
        if not same_backbone_layers(spec["features"], computed):
            raise ConfigError(f"{bundle_dir}: the heads were fitted on layer statistics of layers "
                              f"{[(x['name'], x['dim']) for x in spec['features'].get('backbone_layers', [])]}, but the "
                              f"encoder now has {[(x['name'], x['dim']) for x in computed['layers']]}: re-export the model")
    audio = {k: spec["audio"][k] for k in ("sample_rate", "trim_silence", "normalize_loudness")}
    if module.backbone.sample_rate != audio["sample_rate"]:
        raise ConfigError(f"{bundle_dir}: encoder samples at {module.backbone.sample_rate} Hz, bundle audio at "
                          f"{audio['sample_rate']} Hz")
    entry = spec["heads"][name]
    return Model("bundle", module, [str(c) for c in entry["classes"]], audio, "features", features, head, name,
                 feature_spec=dict(spec["features"]), description={"bundle": str(bundle_dir), "head": name, "encoder": spec["encoder"].get("checkpoint")
                  or spec["encoder"].get("backbone", {}).get("_target_"), "cross_validated": entry.get("cross_validated"),
                  "trained_quality": spec["audio"].get("quality")})


def load_ser_checkpoint(path: Path) -> Model:
    """A checkpoint that predicts emotions itself (the SER checkpoint interface in the module docstring)."""
    from lightning_modules.checkpoints import read_checkpoint

    try:
        checkpoint = read_checkpoint(path)
    except ConfigError as e:
        raise ConfigError(f"ckpt_path={e}") from None
    ckpt, hp = checkpoint.raw, checkpoint.hyper_parameters
    classes = hp.get("class_names")
    if not classes:
        raise ConfigError(f"ckpt_path={path} has no `class_names` hyper-parameter, so it does not predict emotions "
                          "(an embedding checkpoint?). Fit heads on its embeddings with `python evaluate.py "
                          f"ckpt_path={path}`, which exports <run>/model/, then predict with ckpt_path=<run>/model")
    if not ckpt.get("module_class"):
        raise ConfigError(f"ckpt_path={path} has no `module_class` entry: not written by this framework's modules")
    module = checkpoint.module()
    if not callable(getattr(module, "predict_proba", None)):
        raise ConfigError(f"ckpt_path={path}: {ckpt['module_class']} has class_names but no predict_proba(wavs) method "
                          "(docs/predict.md, SER checkpoint interface)")
    sample_rate = getattr(getattr(module, "backbone", None), "sample_rate", None) or hp.get("sample_rate")
    if not sample_rate:
        raise ConfigError(f"ckpt_path={path}: no sample rate (module.backbone.sample_rate or hyper-parameter "
                          "sample_rate)")
    dm = dict(ckpt.get("datamodule_hyper_parameters") or {})
    audio = {"sample_rate": int(sample_rate), "trim_silence": bool(dm.get("trim_silence", True)),
             "normalize_loudness": bool(dm.get("normalize_loudness", False))}
    if "trim_silence" not in dm or "normalize_loudness" not in dm:
        print(f"Note: {path} does not record its training audio pipeline; using trim_silence="
              f"{audio['trim_silence']}, normalize_loudness={audio['normalize_loudness']}")
    return Model("checkpoint", module, [str(c) for c in classes], audio, "proba",
                 description={"checkpoint": str(path), "module_class": ckpt["module_class"]})


# ----- the inputs -----
def collect_inputs(inputs: Any) -> list[InputFile]:
    """Every file under the given folders (recursively, sorted) and the given files, each once."""
    if inputs is None or inputs == "" or (isinstance(inputs, (list, ListConfig)) and not len(inputs)):
        raise ConfigError("predict.py needs inputs=<folder | file | [file, folder, ...]>")
    given = [str(x) for x in inputs] if isinstance(inputs, (list, tuple, ListConfig)) else [str(inputs)]
    missing = [g for g in given if not Path(g).expanduser().exists()]
    if missing:
        raise ConfigError(f"inputs: {', '.join(missing)} do(es) not exist")
    files: list[InputFile] = []
    seen: set[str] = set()

    def add(path: Path, status: str | None = None, detail: str = "") -> None:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            files.append(InputFile(str(path), status, detail))

    for g in given:
        root = Path(g).expanduser()
        if root.is_file():
            add(root)
            continue
        walked: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in walked:  # a symlink loop, or a folder reached twice
                dirnames[:] = []
                continue
            walked.add(real)
            for d in sorted(d for d in dirnames if d.startswith(".")):
                add(Path(dirpath) / d, "hidden_folder", "hidden folder, not walked")
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith("."):
                    add(Path(dirpath) / name, "hidden", "hidden file (name starts with '.'), not read")
                else:
                    add(Path(dirpath) / name)
    return files


def _reason_status(path: str, reason: str) -> str:
    from datamodules.corpora.base import AUDIO_EXTENSIONS

    for prefix, status in _REASON_STATUS:
        if reason.startswith(prefix):
            if status == "unreadable" and not path.lower().endswith(AUDIO_EXTENSIONS):
                return "not_audio"
            return status
    return "unreadable"


def screen(files: list[InputFile], quality_cfg: Any, workers: int | None = None) -> Any:
    """Decode every file once and set its status with the project's audio-quality policy; the tally."""
    from datamodules.audio_quality import CATEGORIES, QualityPolicy
    from datamodules.manifest import probe_records_with_tally
    from datamodules.records import ClipRecord

    policy = QualityPolicy.from_config(quality_cfg)
    todo = [f for f in files if f.status is None]
    records = [ClipRecord(path=f.path, speaker="predict:unknown", corpus="predict", utt_id=f.path) for f in todo]
    kept, skipped, tally = probe_records_with_tally(records, num_workers=workers,
                                                    quality={"enabled": False} if policy is None else policy,
                                                    context="predict")
    by_path = {f.path: f for f in todo}
    for path, reason in skipped:
        f = by_path[path]
        category = reason.partition(":")[0]
        f.status = category if category in CATEGORIES else _reason_status(path, reason)
        if f.status == "not_audio":
            reason = f"not audio: libsndfile does not recognise the content ({Path(path).suffix.lower() or 'no extension'})"
        f.detail = reason + (f" ({tally.details[path]})" if tally is not None and tally.details.get(path) else "")
    for rec in kept:
        f = by_path[rec.path]
        f.status, f.flags = OK, list(rec.extra.get("quality_flags", []))
        notes = []
        if int(rec.extra.get("channels", 1)) > 1:
            notes.append(f"{rec.extra['channels']} channels downmixed")
        notes.append(f"{rec.duration:.2f} s at {rec.sample_rate} Hz")
        if f.flags and tally is not None and tally.details.get(rec.path):
            notes.append(tally.details[rec.path])
        f.detail = "; ".join(notes)
    return tally


# ----- running the model -----
def run_model(cfg: DictConfig, model: Model, paths: list[str], work_dir: Path) -> np.ndarray | None:
    """(N, D) features or (N, C) probabilities of `paths` in order; None on non-zero DDP ranks."""
    from callbacks.embedding_writer import EmbeddingWriter, merge_rank_files
    from datamodules.datasets import UtteranceDataset, collate_utterances
    from datamodules.records import ClipRecord

    records = [ClipRecord(path=p, speaker="predict:unknown", corpus="predict", utt_id=p) for p in paths]
    a = model.audio
    dataset = UtteranceDataset(records, a["sample_rate"], trim=a["trim_silence"], normalize_loudness=a["normalize_loudness"])
    loader = DataLoader(dataset, batch_size=int(cfg.batch_size), shuffle=False, collate_fn=collate_utterances,
                        num_workers=int(cfg.num_workers))
    writer = EmbeddingWriter(work_dir)
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=[writer], logger=False, use_distributed_sampler=True)
    from lightning_modules.clip_embedding import ClipPredictor

    trainer.predict(ClipPredictor(model.module, model.mode, model.features), dataloaders=loader,
                    return_predictions=False)
    if trainer.global_rank != 0:
        return None
    values, n_padded = merge_rank_files(work_dir, len(paths))
    if n_padded:
        how = "pooled over their own frames, unpadded" if model.features == "layer_stats" else "zero-padded"
        log.warning("%d of %d clips were shorter than one encoder window and were %s", n_padded, len(paths), how)
    return values


def bundle_columns(model: Model, values: np.ndarray) -> np.ndarray:
    """The columns the bundle's head was fitted on: for layer_stats, the kept layers of all the backbone's."""
    spec = model.feature_spec or {}
    if spec.get("output") != "layer_stats":
        return values
    from evaluation.layer_features import select_layers

    full = {**spec, "layers": spec.get("backbone_layers", spec["layers"])}
    return select_layers(values, full, [str(x["name"]) for x in spec["layers"]])[0]


def apply_outputs(model: Model, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(predicted labels, (N, C) probabilities in `model.classes` order)."""
    if model.mode == "features":
        from evaluation.head_bundle import head_outputs

        return head_outputs(model.head, bundle_columns(model, values))
    if values.ndim != 2 or values.shape[1] != len(model.classes):
        raise ValueError(f"predict_proba returned shape {values.shape}; expected (N, {len(model.classes)}) for "
                         f"class_names {model.classes}")
    return np.asarray(model.classes)[values.argmax(axis=1)], values.astype(np.float64)


# ----- outputs -----
def write_predictions(files: Sequence[InputFile], classes: Sequence[str], path: Path) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "status", "predicted", *(f"p_{c}" for c in classes), "flags", "detail"])
        for f in files:
            scores = [f"{v:.6f}" for v in f.scores] if f.scores is not None else [""] * len(classes)
            w.writerow([f.path, f.status, f.predicted, *scores, ";".join(f.flags), f.detail])
    tmp.replace(path)
    return path


def summarize(files: Sequence[InputFile], model: Model, tally: Any) -> dict:
    statuses = Counter(f.status for f in files)
    predicted = Counter(f.predicted for f in files if f.status == OK)
    return {"n_inputs": len(files), "status_counts": dict(statuses.most_common()),
            "predicted_counts": {c: int(predicted.get(c, 0)) for c in model.classes},
            "flagged": {flag: [f.path for f in files if flag in f.flags] for flag in sorted({x for f in files for x in f.flags})},
            "model": {"kind": model.kind, "classes": model.classes, **model.description},
            "quality": None if tally is None else tally.summary()}


def print_summary(summary: dict, csv_path: Path) -> None:
    statuses = ", ".join(f"{s} {n}" for s, n in summary["status_counts"].items())
    predicted = ", ".join(f"{c} {n}" for c, n in summary["predicted_counts"].items())
    print(f"Predicted {summary['status_counts'].get(OK, 0)} of {summary['n_inputs']} input files ({statuses})")
    print(f"  predicted classes: {predicted}")
    for flag, paths in summary["flagged"].items():
        print(f"  kept with flag {flag}: {len(paths)} ({', '.join(paths[:5])}{' ...' if len(paths) > 5 else ''})")
    print(f"  -> {csv_path}")


def predict(cfg: DictConfig) -> dict:
    from tasks.train import save_resolved_config

    out_dir = Path(cfg.paths.output_dir)
    files = collect_inputs(cfg.get("inputs"))  # cheap checks first: a typo must not wait for the model
    model = load_model(cfg)
    save_resolved_config(cfg, out_dir)
    quality_cfg = OmegaConf.to_container(cfg.quality, resolve=True) if cfg.get("quality") is not None else None
    trained_quality = model.description.get("trained_quality")
    tally = screen(files, quality_cfg, cfg.get("probe_workers"))
    if tally is not None and trained_quality and tally.policy.to_dict() != trained_quality:
        log.info("quality policy differs from the evaluated corpus's: %s (evaluated with %s)", tally.policy.to_dict(),
                 trained_quality)
    usable = [f for f in files if f.status == OK]
    if usable:
        values = run_model(cfg, model, [f.path for f in usable], out_dir / "predict_parts")
        if values is None:  # non-zero DDP rank
            return {}
        labels, scores = apply_outputs(model, values)
        for f, label, row in zip(usable, labels, scores, strict=True):
            f.predicted, f.scores = str(label), row
    else:
        log.warning("no usable audio among the %d inputs: nothing to predict", len(files))
    csv_path = write_predictions(files, model.classes, out_dir / PREDICTIONS_FILE)
    summary = summarize(files, model, tally)
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print_summary(summary, csv_path)
    return summary
