"""The body of evaluate.py: get embeddings (checkpoint, backbone or .npz), then fit and score the heads.

Exactly one embedding source must be named; the provenance of the embeddings (which speakers shaped
the encoder) and the corpus report travel with them into the `.npz` and metrics.json. After the
cross-validated scoring, the heads of `eval.export.heads` are refit on every evaluated clip and saved
with the encoder reference as a bundle for predict.py (`<run>/model/`, evaluation/head_bundle.py).

`features=embedding` (default) fits the heads on the final utterance embedding; `features=layer_stats`
on the mean + std over time of every layer of the backbone (`features_layers=[...]` keeps some), which
the SVM heads then standardise per fold (`eval.layer_stats_svm`) and the `weighted_layers` head weighs.
What the columns are travels in embeddings.npz, metrics.json (`protocol.features`) and the bundle.

Clip features come from the one clip feature cache (lightning_modules/clip_feature_cache.py, in
`<paths.data_dir>/clip_features`, shared with crossval.py): keyed by the encoder's weights, the output, the audio
settings and the trainer's precision, so the runs of one encoder (features=embedding, layer_stats, auto; a
crossval.py baseline) compute each clip's features once.
"""
from __future__ import annotations

import inspect
import logging
from collections import Counter
from pathlib import Path

import lightning as L
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from callbacks.embedding_writer import EmbeddingWriter, merge_rank_files
from datamodules.records import ClipRecord
from evaluation.embeddings_io import EmbeddingSet, load_npz, save_npz
from evaluation.fold_plan import label_mask, labelled_rows, load_records, plan_for_config, records_to_set
from evaluation.provenance import Provenance
from common.errors import ConfigError
from utils.config_checks import check_data_root, check_required, check_targets
from utils.instantiators import instantiate_loggers
from tasks.train import save_resolved_config

log = logging.getLogger(__name__)
SOURCES_HELP = ("ckpt_path=<checkpoint> (any of our modules; its backbone config comes with it), "
                "backbone=ge2e|deeptalk (the encoder as configured: ge2e is the pretrained speaker model, "
                "deeptalk is untrained) or embeddings=<file>.npz (embeddings extracted before; re-fit heads only)")
# build_manifest arguments that change how a manifest is built, not which one (not in its cache key)
_BUILD_ONLY_OPTIONS = ("num_workers", "refresh", "verbose", "progress")


def embedding_source(cfg: DictConfig) -> str:
    """"checkpoint" | "backbone" | "npz": exactly one must be given (no silent untrained default)."""
    given = {"checkpoint": bool(cfg.get("ckpt_path")), "backbone": cfg.get("backbone") is not None,
             "npz": bool(cfg.get("embeddings"))}
    chosen = [k for k, v in given.items() if v]
    if len(chosen) == 1:
        return chosen[0]
    if not chosen:
        raise ConfigError(f"evaluate.py needs exactly one embedding source and got none: pass {SOURCES_HELP}")
    keys = {"checkpoint": "ckpt_path", "backbone": "backbone", "npz": "embeddings"}
    if chosen == ["checkpoint", "npz"]:
        raise ConfigError("give either ckpt_path=... or embeddings=..., not both")
    raise ConfigError(f"evaluate.py needs exactly one embedding source and got {len(chosen)}: "
                      f"{', '.join(keys[c] for c in chosen)}. Pass only one of {SOURCES_HELP}")


def complete_config(cfg: DictConfig, source: str) -> None:
    """Fill what the source decides: a checkpoint brings its backbone config (so data.sample_rate is
    the rate the checkpoint was trained at); an .npz needs no audio settings."""
    with open_dict(cfg):
        if source == "checkpoint":
            from lightning_modules.checkpoints import read_checkpoint

            if not Path(str(cfg.ckpt_path)).is_file():
                raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path!r} does not exist")
            cfg.backbone = read_checkpoint(cfg.ckpt_path).backbone_config
        elif source == "npz" and cfg.get("data") is not None:
            cfg.data.sample_rate = None  # unused: the embeddings are read from the file


def build_embedding_module(cfg: DictConfig):
    from lightning_modules.checkpoints import load_embedding_module
    from lightning_modules.embedding_module import EmbeddingModule

    if cfg.get("ckpt_path"):
        return load_embedding_module(cfg.ckpt_path)
    return EmbeddingModule(backbone=OmegaConf.to_container(cfg.backbone, resolve=True)).eval()


def embedding_provenance(cfg: DictConfig, source: str) -> Provenance:
    if source == "checkpoint":
        from lightning_modules.checkpoints import read_checkpoint

        return read_checkpoint(cfg.ckpt_path).provenance
    target = str(OmegaConf.select(cfg, "backbone._target_", default="?"))
    return Provenance("backbone", target, seen_speakers=(),
                      note="no training in this framework; weights a backbone ships with (GE2E: VoxCeleb 1+2 and "
                           "LibriSpeech) are not tracked by speaker")


def feature_output(cfg: DictConfig) -> str:
    """The clip_embedding output the heads are fitted on (`features=`), checked."""
    from lightning_modules.clip_embedding import CLIP_OUTPUTS

    output = cfg.get("features") or "embedding"
    if not isinstance(output, str) or output not in CLIP_OUTPUTS:
        raise ConfigError(f"features={output!r}: expected one of {sorted(CLIP_OUTPUTS)} (embedding: the final "
                          "utterance embedding; layer_stats: mean + std over time of every layer; auto: both, the head picks per fold)")
    if cfg.get("features_layers") is not None and output != "layer_stats":
        raise ConfigError(f"features_layers={cfg.features_layers} selects layers of features=layer_stats, but "
                          f"features={output}: pass features=layer_stats or drop features_layers")
    return output


def _layer_selection(cfg: DictConfig) -> list | None:
    wanted = cfg.get("features_layers")
    if wanted is None:
        return None
    return list(OmegaConf.to_container(wanted, resolve=True)) if isinstance(wanted, ListConfig) else [wanted]


def select_features(cfg: DictConfig, emb_set: EmbeddingSet, where: str) -> EmbeddingSet:
    """`emb_set` with the columns `features` / `features_layers` ask for; a file of other features is refused."""
    from evaluation.layer_features import output_of, select_layers

    output = feature_output(cfg)
    held = output_of(emb_set.features)
    if held != output:
        raise ConfigError(f"{where} holds features {held!r} but features={output}: pass features={held} to "
                          f"evaluate them, or extract {output} features (evaluate.py backbone=... or ckpt_path=... "
                          f"features={output})")
    if output != "layer_stats":
        return emb_set
    try:
        X, description = select_layers(emb_set.embeddings, emb_set.features, _layer_selection(cfg))
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from e
    out = emb_set.subset(np.arange(len(emb_set)))
    out.embeddings, out.features = X, description
    return out


def heads_for(heads: list[str], features: dict | None, where: str) -> list[str]:
    """The heads that can be fitted on these features (each head's `features`): a head that cannot is an error
    for the evaluated set, and left out with a note for a compare_to set. Features that none of the asked heads
    take (features=auto) get the registered heads made for them, with a note."""
    from evaluation.heads import HEADS, head_class
    from evaluation.layer_features import output_of

    output = output_of(features)
    fit = [h for h in heads if output in head_class(h).features]
    if not fit:
        own = [name for name, cls in HEADS.items() if tuple(cls.features) == (output,)]
        if own:
            print(f"Note: features={output}: head(s) {own} are made for them; eval.heads={list(heads)} do not apply")
            return own
    wrong = [h for h in heads if h not in fit]
    if wrong and where == "evaluated":
        raise ConfigError(f"eval.heads has {wrong}, which cannot be fitted on features={output} (they take "
                          f"{', '.join(f'{h}: {list(head_class(h).features)}' for h in wrong)}): pass other features "
                          "or drop the head(s)")
    for h in wrong:
        print(f"Note: {where} holds features {output!r}: head {h} is not scored on it")
    return fit


def corpus_report(h, records: list[ClipRecord]) -> dict:
    """The manifest summary of the evaluated corpus (every count it carries, names of skipped files
    cut to a few per reason), or counts from the records where no summary exists (synthetic)."""
    if h.corpus == "pooled":  # one report per member corpus (datamodules/pooled.py)
        from lightning.fabric.utilities.data import AttributeDict

        from datamodules.pooled import corpus_of, per_corpus_counts, pool_members

        members = []
        for m in pool_members(h.corpus_options):
            mh = AttributeDict(corpus=m["corpus"], root=m["root"], corpus_options=m["options"], cache_dir=h.cache_dir,
                               quality=h.get("quality"))
            members.append(corpus_report(mh, [r for r in records if corpus_of(r.speaker) == m["corpus"]]))
        return {"corpus": "pooled", "per_corpus": per_corpus_counts(records), "members": members}
    report: dict = {"corpus": h.corpus, "root": str(h.root)}
    summary = None
    if h.corpus != "synthetic":
        from datamodules.manifest import load_summary

        options = {k: v for k, v in dict(h.corpus_options or {}).items() if k not in _BUILD_ONLY_OPTIONS}
        if "quality" in inspect.signature(load_summary).parameters:
            options["quality"] = h.get("quality")
        try:
            summary = load_summary(h.corpus, h.root, h.cache_dir, **options)
        except FileNotFoundError as e:
            log.warning("data report: %s", e)
    if summary is None:
        report.update(num_clips=len(records), num_speakers=len({r.speaker for r in records}),
                      per_emotion=dict(Counter(str(r.emotion) for r in records)),
                      note="no manifest summary for this corpus: counts taken from the records")
        return report
    for key, value in summary.items():
        if key == "skipped":  # up to 1000 names per reason: keep a few, the counts are in skipped_counts
            report["skipped_examples"] = {reason: names[:5] for reason, names in value.items()}
        else:
            report[key] = value
    return report


def prepare_corpus(cfg: DictConfig):
    """(the datamodule, every clip of the corpus): the manifest is built here, nothing is embedded."""
    check_required(cfg, ["data.root", "data.corpus"])
    check_data_root(cfg.data)
    check_targets(cfg.data, "data")
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    return datamodule, load_records(cfg.data)


class PredictLoop:
    """How evaluate.py computes the clips the feature cache lacks (`clip_features`' compute): Lightning's predict
    loop (all devices, the trainer's precision, DDP with each clip once); one trainer for every pass of a run."""

    def __init__(self, cfg: DictConfig, module, datamodule, out_dir: Path, precision: str):
        self.cfg, self.module, self.datamodule, self.out_dir, self.precision = cfg, module, datamodule, out_dir, precision
        self.trainer: L.Trainer | None = None
        self.passes = 0

    def __call__(self, records: list[ClipRecord], output: str) -> np.ndarray | None:
        from lightning_modules.clip_feature_cache import precision_key

        self.passes += 1
        if self.trainer is None:
            writer = EmbeddingWriter(self.out_dir / "predictions")
            self.trainer = instantiate(self.cfg.trainer, callbacks=[writer], logger=False, use_distributed_sampler=True)
            if precision_key(self.trainer.precision) != self.precision:  # the cache key must say what computed them
                raise RuntimeError(f"the trainer runs at precision {self.trainer.precision}, the feature cache was "
                                   f"keyed for {self.precision} (trainer.precision={self.cfg.trainer.get('precision')})")
        loader = self.datamodule.utterance_loader(records, batch_size=self.cfg.eval.batch_size)
        if output == "embedding":
            predictor = self.module
        else:  # the same predict loop, with another clip_embedding output
            from lightning_modules.clip_embedding import ClipPredictor

            predictor = ClipPredictor(self.module, "features", output)
        self.trainer.predict(predictor, dataloaders=loader, return_predictions=False)
        if self.trainer.global_rank != 0:
            return None
        emb, n_padded = merge_rank_files(self.out_dir / "predictions", len(records))
        if n_padded:
            how = {"embedding": "were zero-padded", "layer_stats": "were pooled over their own frames, unpadded",
                   "auto": "were zero-padded (embedding) and pooled over their own frames (layer statistics)"}
            log.warning("%s: %d of %d clips were shorter than one %.2f s window and %s", output, n_padded,
                        len(records), self.module.backbone.window_seconds, how.get(output, "were padded"))
        return emb


def extract(cfg: DictConfig, out_dir: Path, provenance: Provenance, datamodule, records: list[ClipRecord]) -> EmbeddingSet:
    """Features of every clip of the corpus, from the one clip feature cache (`<paths.data_dir>/clip_features`,
    lightning_modules/clip_feature_cache.py, shared with crossval.py): keyed by the encoder's weights, the output,
    the audio settings and the trainer's precision; the clips it lacks go through Lightning's predict loop
    (`PredictLoop`: all devices, any precision). None on a DDP rank other than 0."""
    from lightning_modules.clip_feature_cache import CACHE_FOLDER, cache_files, clip_features, precision_key

    h = datamodule.hparams
    output = feature_output(cfg)
    module = build_embedding_module(cfg)
    if module.backbone.sample_rate != h.sample_rate:
        raise ConfigError(f"backbone samples at {module.backbone.sample_rate} Hz but data.sample_rate={h.sample_rate}")
    precision = precision_key(OmegaConf.select(cfg, "trainer.precision", default=None))
    cache_dir = Path(str(cfg.paths.data_dir)) / CACHE_FOLDER
    loop = PredictLoop(cfg, module, datamodule, out_dir, precision)
    got = clip_features(module.backbone, datamodule, records, output, cache_dir, int(cfg.eval.batch_size),
                        precision=precision, compute=loop)
    if got is None:
        return None  # type: ignore[return-value]  # non-zero DDP rank: rank 0 has the features
    if not loop.passes:
        log.info("embeddings: reusing cache %s (delete it to re-extract)",
                 ", ".join(str(p) for p in cache_files(module.backbone, datamodule, output, cache_dir, precision)))
    emb, description = got[output]
    split_map = OmegaConf.to_container(cfg.eval.split_map, resolve=True) if cfg.eval.get("split_map") else None
    emb_set = records_to_set(records, emb, cfg.eval.label_field, split_map)
    emb_set.features = description
    emb_set.provenance = {**provenance.to_dict(), "data": corpus_report(h, records)}
    save_npz(emb_set, out_dir / "embeddings.npz")
    log.info("embeddings: %d clips -> %s (re-fit heads with embeddings=%s)", len(records), out_dir / "embeddings.npz",
             out_dir / "embeddings.npz")
    return emb_set


def npz_provenance(emb_set: EmbeddingSet, path: str) -> Provenance:
    if emb_set.provenance is None:
        log.warning("%s carries no provenance (an older extraction?): cannot tell whether its encoder heard the "
                    "test speakers; results are labelled 'provenance unknown'", path)
        return Provenance("npz", str(path), None, note="embeddings file without provenance: leakage cannot be ruled out")
    return Provenance.from_dict(emb_set.provenance)


def align_to(reference: EmbeddingSet, other: EmbeddingSet, other_path: str) -> EmbeddingSet:
    """`other` reordered to `reference`'s rows by utt_id; refuses sets that do not hold the same clips
    with the same labels and speakers (a comparison on different clips compares nothing)."""
    if reference.utt_id is None or other.utt_id is None:
        raise ConfigError(f"eval.compare_to={other_path}: both embedding sets need utt_id arrays to match clips")
    ref_ids, other_ids = reference.utt_id.tolist(), other.utt_id.tolist()
    for name, ids in (("the evaluated set", ref_ids), (other_path, other_ids)):
        dup = len(ids) - len(set(ids))
        if dup:
            raise ConfigError(f"eval.compare_to: {name} has {dup} duplicate utt_id(s)")
    only_ref, only_other = sorted(set(ref_ids) - set(other_ids)), sorted(set(other_ids) - set(ref_ids))
    if only_ref or only_other:
        raise ConfigError(f"eval.compare_to={other_path} does not hold the same clips: {len(only_ref)} clip(s) only in "
                          f"the evaluated set (e.g. {only_ref[:3]}), {len(only_other)} only in {other_path} "
                          f"(e.g. {only_other[:3]}); compare embeddings of one corpus extracted with the same settings")
    index = {u: i for i, u in enumerate(other_ids)}
    aligned = other.subset(np.array([index[u] for u in ref_ids]))
    for field in ("emotion", "speaker"):
        differ = np.flatnonzero(getattr(aligned, field) != getattr(reference, field))
        if differ.size:
            raise ConfigError(f"eval.compare_to={other_path}: {differ.size} clip(s) have another {field} than in the "
                              f"evaluated set (e.g. utt_id {reference.utt_id[differ[:3]].tolist()}); extract both with "
                              "the same eval.label_field")
    # the protocol columns come from the reference so that both are folded identically
    return EmbeddingSet(embeddings=aligned.embeddings, emotion=reference.emotion, speaker=reference.speaker,
                        split=reference.split, session=reference.session, utt_id=reference.utt_id,
                        speaker_unknown=reference.speaker_unknown, provenance=aligned.provenance,
                        features=aligned.features)


def head_kwargs_from(e: DictConfig, features: dict | None = None, heads: list[str] | None = None) -> dict:
    """Each head's constructor arguments, from the `eval` block and the features (the head says which:
    `evaluation.heads` `settings`)."""
    from evaluation.heads import head_class

    heads = list(e.heads) if heads is None else heads
    settings = OmegaConf.to_container(e, resolve=True)
    return {name: head_class(name).settings(settings, features) for name in heads}


def features_record(features: dict | None, head_kwargs: dict) -> dict | None:
    """The feature description for metrics.json, with how the heads treated the columns."""
    from evaluation.heads import head_class
    from evaluation.layer_features import output_of

    if features is None:
        return None
    out = dict(features)
    if output_of(features) != "embedding":
        out["heads_standardized"] = {name: head_class(name).standardizes(kw) for name, kw in head_kwargs.items()}
        svm = next((head_class(n).svm_settings(kw) for n, kw in head_kwargs.items()
                    if head_class(n).svm_settings(kw) is not None), {}) or {}
        out["heads_note"] = (f"columns standardised on each fold's training rows (SVM heads: eval.layer_stats_svm, "
                             f"standardize={svm.get('standardize')}, gamma={svm.get('gamma')})")
    return out


def export_heads(cfg: DictConfig, source: str) -> list[str]:
    """The heads to export (checked before any extraction: a typo should not cost an extraction)."""
    e = cfg.eval
    names = list(OmegaConf.select(cfg, "eval.export.heads", default=None) or [])
    if len(set(names)) != len(names):
        raise ConfigError(f"eval.export.heads lists a head twice: {names}")
    not_evaluated = [n for n in names if n not in list(e.heads)]
    if not_evaluated:  # a note, not an error: eval.heads=[svm] with the default export must keep working
        print(f"Note: eval.export.heads={names}: {not_evaluated} not exported, not in eval.heads={list(e.heads)} (an "
              "exported head needs its cross-validated estimate: add it to eval.heads to export it)")
        names = [n for n in names if n not in not_evaluated]
    if names and source == "npz":
        print(f"Note: no model is exported from embeddings={cfg.embeddings}: a file of embeddings carries no encoder to "
              "apply to new audio. Run evaluate.py with ckpt_path=... or backbone=... to export one for predict.py "
              "(eval.export.heads=[] silences this note)")
        return []
    return names


def export_features(cfg: DictConfig, emb_set: EmbeddingSet | None = None) -> dict | None:
    """What the heads were fitted on (a clip_embedding output and, for layer_stats, the layers kept and all
    the backbone's, which predict.py recomputes and checks); None when it cannot be told."""
    from lightning_modules.clip_embedding import CLIP_OUTPUTS

    features = cfg.get("features")
    output = "embedding" if features is None else features
    if not (isinstance(output, str) and output in CLIP_OUTPUTS):
        return None
    if emb_set is not None and emb_set.features is not None:
        return dict(emb_set.features)
    return {"output": output}


def export_model(cfg: DictConfig, source: str, names: list[str], emb_set: EmbeddingSet, results: dict,
                 out_dir: Path) -> Path | None:
    """Refit `names` on every evaluated clip (the deployment model) and save them with the encoder reference."""
    from datamodules.audio_quality import QualityPolicy
    from evaluation.balancing import balance_training
    from evaluation.head_bundle import backbone_encoder, save_bundle
    from lightning_modules.checkpoints import checkpoint_reference
    from evaluation.heads import head_class, make_head
    from evaluation.run_heads import with_nystroem

    features = export_features(cfg, emb_set)
    if features is None:
        print(f"Note: no model exported: features={cfg.get('features')!r} is not an output predict.py can recompute "
              "(lightning_modules/clip_embedding.py CLIP_OUTPUTS)")
        return None
    e = cfg.eval
    X, y, speakers = emb_set.embeddings, emb_set.emotion, emb_set.speaker
    rows, class_weight = balance_training(y, e.balancing, seed=cfg.seed)
    kwargs_by_head = head_kwargs_from(e, emb_set.features)
    nystroem = results.get("protocol", {}).get("nystroem", {})
    heads, info = {}, {}
    for name in names:
        kwargs = with_nystroem(name, {"random_state": cfg.seed, **kwargs_by_head.get(name, {})}, nystroem.get(name))
        if class_weight is not None:
            kwargs["class_weight"] = class_weight
        kwargs = head_class(name).export_settings(kwargs)
        heads[name] = make_head(name, **kwargs).fit(X[rows], y[rows], groups=speakers[rows])
        cv = results.get(name, {})
        info[name] = {"params": kwargs, "cross_validated": {
            **{k: cv.get(k) for k in ("ua", "ua_ci95", "wa", "wa_ci95", "macro_f1", "n_scores")},
            "protocol": results["protocol"].get("name"), "repeats": results["protocol"].get("repeats"),
            "evaluation": results["protocol"].get("evaluation"),
            "metrics_file": "../metrics.json"}}
    if source == "checkpoint":
        encoder = checkpoint_reference(cfg.ckpt_path)
    else:
        backbone_cfg = OmegaConf.to_container(cfg.backbone, resolve=True)
        encoder = backbone_encoder(backbone_cfg, build_embedding_module(cfg))
        if backbone_encoder(backbone_cfg, build_embedding_module(cfg))["weights_sha256"] != encoder["weights_sha256"]:
            print(f"Note: no model exported: backbone {backbone_cfg.get('_target_')} builds different weights each time "
                  "(randomly initialised, i.e. untrained), so the encoder the heads were fitted on cannot be rebuilt. "
                  "Train it and evaluate the checkpoint (ckpt_path=...) to export a model")
            return None
    d = cfg.data
    policy = QualityPolicy.from_config(d.get("quality"))
    audio = {"sample_rate": int(d.sample_rate), "trim_silence": bool(d.trim_silence),
             "normalize_loudness": bool(d.normalize_loudness), "quality": None if policy is None else policy.to_dict()}
    features["dim"] = int(X.shape[1])
    training = {"corpus": str(d.corpus), "root": str(d.root), "n_clips": int(len(rows)),
                "n_evaluated_clips": len(emb_set), "n_speakers": int(len(np.unique(speakers[rows]))),
                "counts": dict(sorted(Counter(y[rows].tolist()).items())), "balancing": e.balancing, "seed": cfg.seed}
    classes = list(results["protocol"].get("class_order") or emb_set.classes)
    path = save_bundle(out_dir / "model", encoder=encoder, audio=audio, features=features, classes=classes,
                       heads=heads, head_info=info, training=training, label_field=str(e.label_field))
    print(f"Model: heads {names} refit on all {len(rows)} evaluated clips -> {path} (apply with "
          f"`python predict.py ckpt_path={path} inputs=<folder>`; the cross-validated figures above are its estimate)")
    return path


def evaluate(cfg: DictConfig) -> dict:
    source = embedding_source(cfg)  # before anything else: a missing source is the first thing to say
    output = feature_output(cfg)
    heads_for(list(cfg.eval.heads), {"output": output}, "evaluated")  # a head that cannot fit: said before extraction
    exported = export_heads(cfg, source)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    complete_config(cfg, source)
    out_dir = Path(cfg.paths.output_dir)
    save_resolved_config(cfg, out_dir)
    if source == "npz":
        emb_set = load_npz(cfg.embeddings)
        provenance = npz_provenance(emb_set, cfg.embeddings)
    else:
        provenance = embedding_provenance(cfg, source)
        datamodule, records = prepare_corpus(cfg)
        plan_for_config(cfg.eval, cfg.seed, labelled_rows(records, cfg.eval)[0])  # a plan that cannot work fails now
        emb_set = extract(cfg, out_dir, provenance, datamodule, records)
    if emb_set is None:  # non-zero DDP rank after extraction
        return {}
    e = cfg.eval
    emb_set = select_features(cfg, emb_set, str(cfg.embeddings) if source == "npz" else "the extracted set")
    other = None
    if e.get("compare_to"):
        other = align_to(emb_set, load_npz(e.compare_to), str(e.compare_to))
    data_report = dict((emb_set.provenance or {}).get("data") or {"note": "no corpus report stored with these embeddings"})
    keep, left_out = label_mask(emb_set, list(e.classes) if e.get("classes") else None, e.label_field)
    data_report["left_out_by_evaluation"] = left_out
    emb_set = emb_set.subset(np.flatnonzero(keep))
    print(f"Evaluating {len(emb_set)} clips, {len(set(emb_set.speaker))} speakers, labels "
          f"{dict(sorted(Counter(emb_set.emotion.tolist()).items()))}"
          + (f"; left out: {left_out}" if left_out else ""))

    loggers = instantiate_loggers(cfg.get("logger"))
    logger_fn = (lambda d: [lg.log_metrics(d) for lg in loggers]) if loggers else None
    from evaluation.run_heads import run_evaluation

    plan = plan_for_config(e, cfg.seed, emb_set)
    heads = heads_for(list(e.heads), emb_set.features, "evaluated")
    head_kwargs = head_kwargs_from(e, emb_set.features, heads)
    run_kwargs = dict(protocol=e.protocol, n_folds=e.n_folds, seed=cfg.seed, balancing=e.balancing,
                      allow_transductive=bool(e.get("allow_transductive", False)), plan=plan)
    results = run_evaluation(emb_set, out_dir=out_dir, logger_fn=logger_fn, provenance=provenance,
                             data_report=data_report, heads=heads, head_kwargs=head_kwargs,
                             features=features_record(emb_set.features, head_kwargs), **run_kwargs)
    if other is not None:
        from evaluation.comparison import compare_results

        other = other.subset(np.flatnonzero(keep))
        other_heads = heads_for(heads, other.features, str(e.compare_to))
        other_kwargs = head_kwargs_from(e, other.features, other_heads)
        other_results = run_evaluation(other, out_dir=out_dir / "compare_to", provenance=npz_provenance(other, e.compare_to),
                                       data_report=data_report, verbose=False, heads=other_heads,
                                       head_kwargs=other_kwargs, features=features_record(other.features, other_kwargs),
                                       **run_kwargs)
        results["comparison"] = compare_results(results, other_results, out_dir, name_a=_source_name(cfg, source),
                                                name_b=str(e.compare_to))
    if exported:
        model_dir = export_model(cfg, source, exported, emb_set, results, out_dir)
        if model_dir is not None:
            results["model"] = str(model_dir)
    if e.get("verification_analysis"):
        from evaluation.verification_analysis import run_verification_analysis

        results["verification"] = run_verification_analysis(emb_set, out_dir=out_dir)
    for lg in loggers:
        _log_images(lg, out_dir)
    return results


def _source_name(cfg: DictConfig, source: str) -> str:
    if source == "npz":
        return str(cfg.embeddings)
    if source == "checkpoint":
        return str(cfg.ckpt_path)
    return f"backbone {OmegaConf.select(cfg, 'backbone._target_', default='?')}"


def _log_images(logger, out_dir: Path) -> None:
    if hasattr(logger, "log_image"):
        pngs = sorted(out_dir.glob("*.png"))
        if pngs:
            logger.log_image(key="eval/figures", images=[str(p) for p in pngs], caption=[p.stem for p in pngs])
