"""predict.py and the model bundles evaluate.py exports: head probabilities, the safe (skops) head files,
the encoder hash check, the bad-input matrix at the predict stage, the evaluate -> predict round trip
and the interface for SER fine-tuning checkpoints."""
from __future__ import annotations

import numpy as np
import pytest

from evaluation.embeddings_io import synthetic_set
from evaluation.heads import SadFirstHead, SVMHead, make_head


def _split(sep: float = 1.0, seed: int = 0):
    s = synthetic_set(n_speakers=10, clips_per_speaker=24, dim=16, separation=sep, seed=seed)
    train = np.isin(s.speaker, [f"spk{k:03d}" for k in range(7)])
    return s.embeddings[train], s.emotion[train], s.speaker[train], s.embeddings[~train], s.emotion[~train]


# ----- probabilities of the heads (what an exported head reports per class) -----
@pytest.mark.parametrize("name", ["linear", "detection", "svm", "sad_first"])
def test_exported_heads_give_probabilities_that_rank_the_true_class(name):
    X, y, spk, X_te, y_te = _split()
    kwargs = {"svm": {"probability": True}} if name == "sad_first" else {"probability": True} if name == "svm" else {}
    head = make_head(name, **kwargs).fit(X, y, groups=spk)
    proba = head.predict_proba(X_te)
    assert proba.shape == (len(X_te), len(head.classes_))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    assert (proba >= 0).all()
    truth = head.scoring_labels(y_te)
    col = {c: i for i, c in enumerate(head.classes_)}
    p_true = proba[np.arange(len(truth)), [col[t] for t in truth]]
    # learnable data: the true class gets clearly more than chance on held-out speakers
    assert p_true.mean() > 1.5 / len(head.classes_)


def test_svm_probability_does_not_change_its_decisions():
    """The exported SVM is refit with calibrated probabilities; its predictions are the evaluated model's."""
    X, y, spk, X_te, _ = _split(sep=0.4, seed=1)
    plain = SVMHead().fit(X, y, groups=spk)
    calibrated = SVMHead(probability=True).fit(X, y, groups=spk)
    np.testing.assert_array_equal(plain.predict(X_te), calibrated.predict(X_te))
    with pytest.raises(ValueError, match="probability=True"):
        plain.predict_proba(X_te)


def test_svm_calibration_folds_are_speaker_disjoint():
    X, y, spk, *_ = _split()
    head = SVMHead(probability=True, calibration_folds=3).fit(X, y, groups=spk)
    assert head.calibration_ == {"method": "sigmoid", "folds": 3, "speaker_disjoint": True}
    no_groups = SVMHead(probability=True, calibration_folds=3).fit(X, y)
    assert no_groups.calibration_["speaker_disjoint"] is False


def test_sad_first_probabilities_combine_its_two_stages():
    X, y, spk, X_te, _ = _split(sep=0.5, seed=2)
    head = SadFirstHead(svm={"probability": True}).fit(X, y, groups=spk)
    proba = head.predict_proba(X_te)
    classes = head.classes_.tolist()
    p1 = head.stage1_.predict_proba(X_te)[:, head.stage1_.classes_.tolist().index(1)]
    p2 = head.stage2_.predict_proba(X_te)
    np.testing.assert_allclose(proba[:, classes.index("sad")], p1, atol=1e-12)
    for j, c in enumerate(head.stage2_.classes_):
        np.testing.assert_allclose(proba[:, classes.index(c)], (1 - p1) * p2[:, j], atol=1e-12)


# ----- evaluate.py exports a bundle; predict.py applies it -----
import csv  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import lightning as L  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402

from evaluation.head_bundle import BundleError, UntrustedHeadError, head_outputs, load_head, read_spec  # noqa: E402
from tests.conftest import ROOT, TINY_CORPUS, make_cfg  # noqa: E402
from utils.config_checks import ConfigError  # noqa: E402

EVAL_CORPUS = [o for o in TINY_CORPUS if not o.startswith("data.n_")]
GE2E = {"_target_": "lightning_modules.backbones.ge2e.GE2EBackbone", "sample_rate": 16000}


def _noise(seconds: float, sr: int = 16000, amplitude: float = 0.1, seed: int = 0) -> np.ndarray:
    return (amplitude * np.random.default_rng(seed).standard_normal(int(seconds * sr))).astype("float32")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, synthetic_cache):
    """evaluate.py with the pretrained GE2E on the tiny synthetic corpus, exporting three heads."""
    from datamodules.speaker_datamodule import load_corpus_records
    from tasks.evaluate import evaluate

    out = tmp_path_factory.mktemp("evaluate")
    cfg = make_cfg("evaluate.yaml", out, EVAL_CORPUS + [
        "backbone=ge2e", "eval.n_folds=2", "eval.repeats=1", "eval.heads=[svm,sad_first,linear]",
        "eval.export.heads=[linear,svm,sad_first]", "eval.verification_analysis=false"], synthetic_cache)
    evaluate(cfg)
    h = cfg.data
    records = load_corpus_records(h.corpus, h.root, str(synthetic_cache / "manifests"), dict(h.corpus_options))
    GlobalHydra.instance().clear()
    return out, {r.utt_id: r.path for r in records}


def _predict(tmp_path: Path, *overrides: str) -> tuple[Path, dict]:
    from tasks.predict import predict

    cfg = make_cfg("predict.yaml", tmp_path, list(overrides))
    summary = predict(cfg)
    GlobalHydra.instance().clear()
    return tmp_path / "predictions.csv", summary


def _rows(csv_path: Path) -> dict[str, dict]:
    with open(csv_path, newline="") as f:
        return {Path(r["path"]).name: r for r in csv.DictReader(f)}


def _clip_folder(folder: Path, paths: dict[str, str], n: int = 8) -> dict[str, str]:
    """n clips of the evaluated corpus copied into `folder` (file name -> utt_id), plus a corrupt and a silent file."""
    folder.mkdir(parents=True)
    chosen = {}
    for utt_id in sorted(paths)[:n]:
        name = Path(paths[utt_id]).name
        shutil.copy(paths[utt_id], folder / name)
        chosen[name] = utt_id
    (folder / "corrupt.wav").write_bytes(np.random.default_rng(0).integers(1, 255, 3000, dtype=np.uint8).tobytes())
    sf.write(str(folder / "silent.wav"), np.zeros(16000, dtype="float32"), 16000, subtype="PCM_16")
    return chosen


def test_evaluate_exports_the_heads_refit_on_every_evaluated_clip(evaluated):
    out, _ = evaluated
    bundle = out / "model"
    spec = read_spec(bundle)
    assert set(spec["heads"]) == {"linear", "svm", "sad_first"} and spec["default_head"] == "linear"
    assert spec["encoder"]["kind"] == "backbone" and spec["encoder"]["backbone"]["_target_"] == GE2E["_target_"]
    assert spec["audio"] == {**spec["audio"], "sample_rate": 16000, "trim_silence": True, "normalize_loudness": False}
    assert spec["audio"]["quality"]["actions"]["digital_silence"] == "skip"
    assert spec["features"] == {"output": "embedding", "dim": 256}
    assert spec["classes"] == ["angry", "happy", "neutral", "sad"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert spec["training"]["n_clips"] == metrics["protocol"]["n_rows"] == 64
    for name, entry in spec["heads"].items():
        assert entry["cross_validated"]["ua"] == metrics[name]["ua"]  # the estimate travels with the model
        assert entry["cross_validated"]["evaluation"] == "speaker-independent"
    # the deployment head is fitted on all clips, not on one fold's training part
    emb = np.load(out / "embeddings.npz", allow_pickle=False)
    linear = load_head(bundle, spec, "linear")
    assert linear.model_.named_steps["scale"].n_samples_seen_ == len(emb["embeddings"])
    svm = load_head(bundle, spec, "svm")
    assert svm.calibration_["speaker_disjoint"] and svm.predict_proba(emb["embeddings"]).shape == (64, 4)


def test_predict_round_trip_equals_the_bundle_head_on_evaluates_embeddings(evaluated, tmp_path):
    out, paths = evaluated
    chosen = _clip_folder(tmp_path / "clips", paths)
    csv_path, summary = _predict(tmp_path / "run", f"ckpt_path={out}", f"inputs={tmp_path / 'clips'}")  # run folder
    rows = _rows(csv_path)
    assert set(rows) == set(chosen) | {"corrupt.wav", "silent.wav"}
    assert rows["corrupt.wav"]["status"] == "unreadable" and rows["silent.wav"]["status"] == "digital_silence"
    assert rows["corrupt.wav"]["predicted"] == rows["silent.wav"]["predicted"] == ""
    spec = read_spec(out / "model")
    head = load_head(out / "model", spec, "linear")
    emb = np.load(out / "embeddings.npz", allow_pickle=False)
    index = {u: i for i, u in enumerate(emb["utt_id"].tolist())}
    X = emb["embeddings"][[index[chosen[name]] for name in sorted(chosen)]]
    labels, proba = head_outputs(head, X)
    classes = spec["heads"]["linear"]["classes"]
    for name, label, p in zip(sorted(chosen), labels, proba):
        assert rows[name]["status"] == "ok" and rows[name]["predicted"] == label
        np.testing.assert_allclose([float(rows[name][f"p_{c}"]) for c in classes], p, atol=1e-4)
    assert summary["status_counts"] == {"ok": len(chosen), "unreadable": 1, "digital_silence": 1}
    assert sum(summary["predicted_counts"].values()) == len(chosen)
    # another exported head, chosen by name
    csv_svm, _ = _predict(tmp_path / "run_svm", f"ckpt_path={out / 'model'}", f"inputs={tmp_path / 'clips'}",
                          "head=sad_first")
    sad_first = load_head(out / "model", spec, "sad_first")
    got = _rows(csv_svm)
    assert [got[n]["predicted"] for n in sorted(chosen)] == sad_first.predict(X).tolist()
    with pytest.raises(BundleError, match=r"head='detection' is not in this bundle"):
        _predict(tmp_path / "run_bad", f"ckpt_path={out}", f"inputs={tmp_path / 'clips'}", "head=detection")


def test_predict_bad_input_matrix_lists_every_file(evaluated, tmp_path):
    """The bad-input folder of tests/test_bad_audio.py (its builder), through `python predict.py`."""
    from tests.test_bad_audio import _plant

    out, _ = evaluated
    root = tmp_path / "inputs"
    for k in range(3):
        path = root / "good" / f"good{k}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), _noise(1.0, seed=k), 16000, subtype="PCM_16")
    _plant(root)
    sf.write(str(root / "flac_named.dat"), _noise(1.0, seed=9), 16000, format="FLAC")  # content decides
    (root / ".DS_Store").write_bytes(b"\x00\x01")
    (root / ".cache").mkdir()
    (root / ".cache" / "x.wav").write_bytes(b"")
    expected = {
        "good0.wav": "ok", "good1.wav": "ok", "good2.wav": "ok",
        "empty.wav": "empty_file", "random_bytes.wav": "unreadable", "all_zero.wav": "digital_silence",
        "near_silent.wav": "near_silence", "clipped.wav": "ok", "nan_samples.wav": "nan_inf", "short.wav": "too_short",
        "stereo_48k.wav": "ok", "hires_96k.wav": "ok", "flac_inside.wav": "ok", "picture.wav": "unreadable",
        "notes.txt": "not_audio", "flac_named.dat": "ok", ".DS_Store": "hidden", ".cache": "hidden_folder",
    }
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(ROOT / "predict.py"), f"ckpt_path={out / 'model'}", f"inputs={root}",
                           f"hydra.run.dir={run}"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(run / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(Path(r["path"]).name for r in rows) == sorted(expected)  # every file, once
    by_name = {Path(r["path"]).name: r for r in rows}
    for name, status in expected.items():
        assert by_name[name]["status"] == status, (name, by_name[name])
        probs = [v for k, v in by_name[name].items() if k.startswith("p_")]
        if status == "ok":
            assert by_name[name]["predicted"] in ("angry", "happy", "neutral", "sad")
            assert abs(sum(map(float, probs)) - 1) < 1e-4
        else:
            assert by_name[name]["predicted"] == "" and all(v == "" for v in probs)
    assert by_name["clipped.wav"]["flags"] == "clipping"
    assert "2 channels downmixed" in by_name["stereo_48k.wav"]["detail"]
    assert "96000 Hz" in by_name["hires_96k.wav"]["detail"]
    assert "-60 dBFS" in by_name["near_silent.wav"]["detail"]
    # the printed summary counts every status
    assert "Predicted 8 of 18 input files" in proc.stdout, proc.stdout
    for status in ("empty_file 1", "unreadable 2", "digital_silence 1", "near_silence 1", "nan_inf 1", "too_short 1",
                   "not_audio 1", "hidden 1", "hidden_folder 1", "kept with flag clipping: 1"):
        assert status in proc.stdout, (status, proc.stdout)


class Payload:
    """A type no trusted list contains (what a crafted head file could smuggle in)."""

    def __init__(self):
        self.x = 1


def test_head_file_with_an_untrusted_type_is_refused_unless_opted_in(evaluated, tmp_path, capsys):
    import skops.io as sio

    from tasks.predict import load_model

    out, _ = evaluated
    bundle = tmp_path / "bundle"
    shutil.copytree(out / "model", bundle)
    spec = read_spec(bundle)
    head = load_head(bundle, spec, "linear")
    head.payload_ = Payload()
    sio.dump(head, bundle / "heads" / "linear.skops")
    clip = tmp_path / "a.wav"
    sf.write(str(clip), _noise(1.0), 16000)
    cfg = make_cfg("predict.yaml", tmp_path / "run", [f"ckpt_path={bundle}", f"inputs={clip}"])
    with pytest.raises(UntrustedHeadError, match=r"tests\.test_predict\.Payload.*allow_untrusted_types=true"):
        load_model(cfg)
    cfg.allow_untrusted_types = True
    model = load_model(cfg)
    assert isinstance(model.head.payload_, Payload)
    assert "WARNING" in capsys.readouterr().out
    GlobalHydra.instance().clear()


def _ge2e_checkpoint(path: Path) -> Path:
    """A checkpoint of the framework's EmbeddingModule holding the pretrained GE2E weights."""
    from lightning_modules.embedding_module import EmbeddingModule

    module = EmbeddingModule(backbone=dict(GE2E))
    torch.save({"module_class": "lightning_modules.embedding_module.EmbeddingModule",
                "hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    return path


def test_changed_encoder_weights_are_detected(evaluated, tmp_path):
    from lightning_modules.checkpoints import checkpoint_reference
    from tasks.predict import load_model

    out, _ = evaluated
    bundle = tmp_path / "bundle"
    shutil.copytree(out / "model", bundle)
    clip = tmp_path / "a.wav"
    sf.write(str(clip), _noise(1.0), 16000)
    args = [f"ckpt_path={bundle}", f"inputs={clip}"]
    spec = json.loads((bundle / "bundle.json").read_text())
    # a backbone whose weights are not the ones the heads were fitted on
    (bundle / "bundle.json").write_text(json.dumps({**spec, "encoder": {**spec["encoder"], "weights_sha256": "0" * 64}}))
    with pytest.raises(BundleError, match="not the 0{64} the heads were fitted on"):
        load_model(make_cfg("predict.yaml", tmp_path / "r1", args))
    # a checkpoint encoder: loads while its file is unchanged, refused once it changes
    ckpt = _ge2e_checkpoint(tmp_path / "encoder.ckpt")
    spec["encoder"] = checkpoint_reference(ckpt)
    (bundle / "bundle.json").write_text(json.dumps(spec))
    model = load_model(make_cfg("predict.yaml", tmp_path / "r2", args))
    assert model.kind == "bundle" and model.description["encoder"] == str(ckpt.resolve())
    pristine = shutil.copy(ckpt, tmp_path / "moved.ckpt")
    state = torch.load(ckpt, weights_only=True)
    key = next(k for k in state["state_dict"] if k.endswith("weight"))
    state["state_dict"][key] = state["state_dict"][key] + 1e-3
    torch.save(state, ckpt)
    with pytest.raises(BundleError, match=r"encoder checkpoint .*encoder\.ckpt has changed since the heads were fitted"):
        load_model(make_cfg("predict.yaml", tmp_path / "r3", args))
    # a moved checkpoint is found through encoder_ckpt_path, and still checked
    assert load_model(make_cfg("predict.yaml", tmp_path / "r4", args + [f"encoder_ckpt_path={pristine}"])).kind == "bundle"
    ckpt.unlink()
    with pytest.raises(BundleError, match="does not exist; if it was moved, pass encoder_ckpt_path"):
        load_model(make_cfg("predict.yaml", tmp_path / "r5", args))
    GlobalHydra.instance().clear()


def test_sources_that_cannot_give_a_model_export_none_and_say_so(evaluated, tmp_path, capsys, synthetic_cache):
    from tasks.evaluate import evaluate

    out, _ = evaluated
    cfg = make_cfg("evaluate.yaml", tmp_path, [f"embeddings={out / 'embeddings.npz'}", "eval.n_folds=2",
                                               "eval.repeats=1", "eval.heads=[linear]", "eval.verification_analysis=false"])
    results = evaluate(cfg)
    assert "no model is exported from embeddings=" in capsys.readouterr().out
    assert "model" not in results and not (tmp_path / "model").exists()
    # a head without its cross-validated estimate is not exported; an untrained (random) backbone cannot be
    cfg = make_cfg("evaluate.yaml", tmp_path / "b", EVAL_CORPUS + [
        "backbone=deeptalk", "eval.n_folds=2", "eval.repeats=1", "eval.heads=[linear]", "eval.export.heads=[svm,linear]",
        "eval.verification_analysis=false"], synthetic_cache)
    results = evaluate(cfg)
    printed = capsys.readouterr().out
    assert "['svm'] not exported, not in eval.heads=['linear']" in printed
    assert "no model exported: backbone lightning_modules.backbones.deeptalk" in printed and "untrained" in printed
    assert "model" not in results and not (tmp_path / "b" / "model").exists()
    GlobalHydra.instance().clear()


# ----- the SER checkpoint interface (for the coming experiment=ser_finetune) -----
class TinySER(L.LightningModule):
    """Stand-in for a fine-tuned SER model: meets the interface of tasks/predict.py and nothing more."""

    def __init__(self, class_names: tuple[str, ...] = ("calm", "excited"), sample_rate: int = 16000):
        super().__init__()
        self.save_hyperparameters()
        self.linear = torch.nn.Linear(2, len(class_names))

    @staticmethod
    def features(wavs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([torch.stack([w.pow(2).mean().clamp_min(1e-10).log10(), w.abs().max()]) for w in wavs])

    def predict_proba(self, wavs: list[torch.Tensor]) -> torch.Tensor:
        return self.linear(self.features(wavs).to(self.linear.weight.device)).softmax(dim=-1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.linear(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["module_class"] = f"{type(self).__module__}.{type(self).__qualname__}"


def test_ser_checkpoint_with_class_names_and_predict_proba_is_applied_directly(tmp_path, capsys):
    from datamodules.audio import load_audio

    x = torch.randn(32, 2)
    data = torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long())
    model = TinySER()
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=8))
    ckpt = tmp_path / "ser.ckpt"
    trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=True)
    state["datamodule_hyper_parameters"] = {"trim_silence": False, "normalize_loudness": True}  # as training records it
    torch.save(state, ckpt)
    clips = tmp_path / "clips"
    clips.mkdir()
    for k, amplitude in enumerate((0.02, 0.1, 0.5)):
        sf.write(str(clips / f"c{k}.wav"), _noise(1.0, amplitude=amplitude, seed=k), 16000, subtype="PCM_16")
    sf.write(str(clips / "silent.wav"), np.zeros(8000, dtype="float32"), 16000, subtype="PCM_16")
    csv_path, summary = _predict(tmp_path / "run", f"ckpt_path={ckpt}", f"inputs={clips}")
    rows = _rows(csv_path)
    assert list(next(iter(rows.values()))) == ["path", "status", "predicted", "p_calm", "p_excited", "flags", "detail"]
    assert rows["silent.wav"]["status"] == "digital_silence"
    model.eval()
    for k in range(3):
        wav = load_audio(clips / f"c{k}.wav", 16000, normalize_loudness=True)  # the checkpoint's pipeline: no trim
        expected = model.predict_proba([wav])[0].detach().numpy()
        got = [float(rows[f"c{k}.wav"][c]) for c in ("p_calm", "p_excited")]
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert rows[f"c{k}.wav"]["predicted"] == ("calm", "excited")[int(expected.argmax())]
    assert summary["model"]["kind"] == "checkpoint" and summary["model"]["classes"] == ["calm", "excited"]
    # an embedding checkpoint has no classes: predict says how to get a model from it
    with pytest.raises(ConfigError, match=r"no `class_names` hyper-parameter.*python evaluate.py ckpt_path="):
        _predict(tmp_path / "run2", f"ckpt_path={_ge2e_checkpoint(tmp_path / 'emb.ckpt')}", f"inputs={clips}")


def test_predict_config_screens_with_the_training_quality_defaults():
    import yaml

    predict_cfg = yaml.safe_load((ROOT / "configs" / "predict.yaml").read_text())
    data_cfg = yaml.safe_load((ROOT / "configs" / "data" / "base.yaml").read_text())
    assert predict_cfg["quality"] == data_cfg["quality"]


def test_inputs_and_model_are_checked_before_anything_runs(tmp_path):
    from tasks.predict import predict

    (tmp_path / "empty_dir").mkdir()
    for overrides, message in (
        ([f"ckpt_path={tmp_path}", "inputs=/no/such/folder"], r"inputs: /no/such/folder do\(es\) not exist"),
        ([f"ckpt_path={tmp_path}"], "predict.py needs inputs="),
        ([f"inputs={tmp_path}"], "predict.py needs ckpt_path="),
        ([f"ckpt_path={tmp_path / 'empty_dir'}", f"inputs={tmp_path}"], "a folder without a model bundle"),
    ):
        with pytest.raises(ConfigError, match=message):
            predict(make_cfg("predict.yaml", tmp_path / "run", overrides))
    GlobalHydra.instance().clear()
