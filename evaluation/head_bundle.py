"""A model a user can apply: a frozen encoder plus heads fitted on its embeddings, as one folder.

evaluate.py writes it (`<run>/model/`), predict.py reads it. Layout:

    model/bundle.json        what the heads need to be applied again exactly as they were fitted:
                             the encoder (checkpoint path + SHA-256 of the file, or the backbone config
                             + SHA-256 of its weights), the audio pipeline (sample rate, trimming,
                             loudness normalisation, the quality policy of the evaluated corpus), the
                             feature type (`features.output`, a `lightning_modules.clip_embedding`
                             output: "embedding" or "layer_stats" with the layers kept and all the
                             backbone's, evaluation/layer_features.py), the class order, and per head its file, classes
                             and the cross-validated figures of the same head type
    model/heads/<name>.skops each fitted head, serialised with skops (no pickle)

Safety: a head file is read with `skops.io.load` and an explicit list of trusted types (the project's
head classes and the scikit-learn types they are made of, `TRUSTED_TYPES`); a file holding any other
type is refused with those types named, unless the caller opts in (`allow_untrusted=True`, printed
as a warning). Checkpoints are read with `torch.load(weights_only=True)`. A checkpoint or backbone
whose weights no longer hash to the recorded value is refused: the heads were fitted on embeddings
of the recorded weights, and would silently mis-label the embeddings of others.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

BUNDLE_FILE = "bundle.json"
BUNDLE_FORMAT = "ser-speaker-embeddings/head-bundle"
BUNDLE_VERSION = 1
DEPLOYMENT_NOTE = ("heads refit on every evaluated clip: the model to apply. How well it does on new speakers is "
                   "estimated by the cross-validated figures (metrics.json, `cross_validated` per head), not by "
                   "anything this model scores on its own training clips")


class BundleError(ValueError):
    """A bundle that cannot be applied as it is (missing or changed files, unknown format)."""


class UntrustedHeadError(BundleError):
    """A head file holds types outside the trusted list."""


def _trusted_classes() -> tuple[type, ...]:
    from sklearn.calibration import CalibratedClassifierCV, _CalibratedClassifier, _SigmoidCalibration
    from sklearn.kernel_approximation import Nystroem
    from sklearn.linear_model import LogisticRegression, RidgeClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import LabelEncoder, StandardScaler
    from sklearn.svm import SVC, LinearSVC

    from evaluation.heads import DetectionHead, LinearProbeHead, SadFirstHead, SVMHead, WeightedLayersHead

    return (SVMHead, SadFirstHead, LinearProbeHead, DetectionHead, WeightedLayersHead, Pipeline, StandardScaler, LogisticRegression,
            SVC, LinearSVC, RidgeClassifier, Nystroem, CalibratedClassifierCV, _CalibratedClassifier,
            _SigmoidCalibration, LabelEncoder)


def trusted_types() -> list[str]:
    """Type names (as skops reports them) a head file may contain: our heads and what they are built of."""
    return sorted(f"{c.__module__}.{c.__qualname__}" for c in _trusted_classes())


# ----- hashes -----
def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def weights_sha256(module: nn.Module) -> str:
    """Hash of every parameter and buffer (names, dtypes, shapes, bytes): equal iff the weights are."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ----- encoder description -----
def backbone_encoder(backbone_cfg: Mapping[str, Any], module: nn.Module) -> dict:
    """A pretrained backbone built from its config (e.g. GE2E's weights from the resemblyzer wheel)."""
    backbone = getattr(module, "backbone", module)
    return {"kind": "backbone", "backbone": dict(backbone_cfg), "weights_sha256": weights_sha256(backbone)}


# ----- writing -----
def save_bundle(out_dir: str | Path, *, encoder: dict, audio: dict, features: dict, classes: list[str],
                heads: Mapping[str, Any], head_info: Mapping[str, dict], training: dict,
                label_field: str | None = None) -> Path:
    """Write the bundle folder (replacing an older one atomically); returns its path."""
    import skops
    import skops.io as sio
    import sklearn

    out_dir = Path(out_dir)
    if not heads:
        raise ValueError("save_bundle: no heads to save")
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "heads").mkdir(parents=True)
    head_entries = {}
    for name, head in heads.items():
        rel = f"heads/{name}.skops"
        sio.dump(head, tmp / rel)
        head_entries[name] = {"file": rel, "class": f"{type(head).__module__}.{type(head).__qualname__}",
                              "classes": [str(c) for c in head.classes_], "output": "probability",
                              **dict(head_info.get(name, {}))}
    spec = {
        "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "note": DEPLOYMENT_NOTE,
        "encoder": encoder, "audio": audio, "features": features,
        "label_field": label_field, "classes": [str(c) for c in classes],
        "default_head": next(iter(heads)), "heads": head_entries, "training": training,
        "versions": {"scikit-learn": sklearn.__version__, "skops": skops.__version__, "torch": torch.__version__},
    }
    (tmp / BUNDLE_FILE).write_text(json.dumps(spec, indent=2, default=str) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


# ----- reading -----
def find_bundle(path: str | Path) -> Path | None:
    """The bundle folder `path` names (the folder, its bundle.json, or an evaluate run folder holding model/)."""
    p = Path(path).expanduser()
    for candidate in (p, p / "model"):
        if candidate.is_dir() and (candidate / BUNDLE_FILE).is_file():
            return candidate
    if p.is_file() and p.name == BUNDLE_FILE:
        return p.parent
    return None


def read_spec(bundle_dir: str | Path) -> dict:
    path = Path(bundle_dir) / BUNDLE_FILE
    try:
        spec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: cannot read the bundle description: {e}") from e
    if spec.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: not a head bundle (format {spec.get('format')!r}, expected {BUNDLE_FORMAT!r})")
    if int(spec.get("version", 0)) > BUNDLE_VERSION:
        raise BundleError(f"{path}: bundle version {spec.get('version')} is newer than this code reads "
                          f"({BUNDLE_VERSION}); update the framework")
    for key in ("encoder", "audio", "features", "heads", "classes"):
        if key not in spec:
            raise BundleError(f"{path}: bundle description has no '{key}' entry")
    return spec


def choose_head(spec: Mapping[str, Any], name: str | None) -> str:
    exported = list(spec["heads"])
    if name is None:
        return str(spec.get("default_head") or exported[0])
    if name not in exported:
        raise BundleError(f"head={name!r} is not in this bundle; it holds {exported} (evaluate.py exports the heads "
                          "listed in eval.export.heads)")
    return name


def load_head(bundle_dir: str | Path, spec: Mapping[str, Any], name: str, allow_untrusted: bool = False):
    """The fitted head `name`, read with skops from the trusted types only (see the module docstring)."""
    import skops.io as sio

    from evaluation.heads import HEADS

    entry = spec["heads"][name]
    path = Path(bundle_dir) / entry["file"]
    if not path.is_file():
        raise BundleError(f"head file {path} is missing from the bundle")
    try:
        found = sio.get_untrusted_types(file=path)
    except Exception as e:  # skops raises several types on a file that is not a skops archive
        raise BundleError(f"{path}: not a readable skops file: {e}") from e
    trusted = set(trusted_types())
    unexpected = sorted(set(found) - trusted)
    if unexpected and not allow_untrusted:
        raise UntrustedHeadError(
            f"{path} holds type(s) outside the trusted list: {', '.join(unexpected)}. Loading them could run code "
            "that file brings along. If you made this file yourself or trust its source, pass "
            "allow_untrusted_types=true")
    if unexpected:
        log.warning("loading %s with UNTRUSTED type(s) %s because allow_untrusted_types=true", path, unexpected)
        print(f"WARNING: {path} holds untrusted type(s) {', '.join(unexpected)}; loaded because "
              "allow_untrusted_types=true")
    head = sio.load(path, trusted=sorted(set(found)))
    if not isinstance(head, tuple(HEADS.values())):
        if not allow_untrusted:
            raise UntrustedHeadError(f"{path} holds a {type(head).__name__}, not one of the heads {sorted(HEADS)}")
        log.warning("%s holds a %s, not one of the project's heads", path, type(head).__name__)
    classes = [str(c) for c in getattr(head, "classes_", [])]
    if classes != list(entry["classes"]):
        raise BundleError(f"{path}: head classes {classes} differ from the bundle's {entry['classes']}")
    return head


def head_outputs(head, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(predicted labels, (N, C) probabilities in `head.classes_` order): the head's own decision, which is
    what the cross-validated figures measured, and its probabilities."""
    X = np.asarray(X)
    if len(X) == 0:
        return np.zeros(0, dtype=str), np.zeros((0, len(head.classes_)))
    return np.asarray(head.predict(X)).astype(str), np.asarray(head.predict_proba(X), dtype=np.float64)
