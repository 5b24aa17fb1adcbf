"""The one checkpoint reader: a checkpoint file becomes a module, its config and its provenance, read once.

`read_checkpoint(path)` loads the file with `torch.load(weights_only=True)` (no pickle), memory-mapped, and
keeps it by (path, size, mtime), so evaluate.py, predict.py, crossval.py, cluster analysis and warm starts
that ask for the same file in one process read it once; a file rewritten since (a resumed run's last.ckpt)
is read again. From it: `.module()` (the objective rebuilt from the class and hyper-parameters it records,
its weights loaded), `.backbone_config`, `.provenance` (evaluation/provenance.py) and `.chain()` (it and
every checkpoint its weights were warm-started from).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from common.errors import ConfigError
from evaluation.provenance import UNKNOWN_FROM_KEY, Provenance, checkpoint_provenance

_CACHE: dict[tuple, "Checkpoint"] = {}
_CACHE_SIZE = 8


@dataclass
class Checkpoint:
    path: Path
    raw: dict = field(repr=False)
    _module: Any = field(default=None, repr=False)

    @property
    def hyper_parameters(self) -> dict:
        return dict(self.raw.get("hyper_parameters") or {})

    @property
    def backbone_config(self) -> dict:
        backbone = self.hyper_parameters.get("backbone")
        if not isinstance(backbone, Mapping) or "_target_" not in backbone:
            raise ConfigError(f"{self.path} has no backbone config in hyper_parameters: not a checkpoint of this "
                              "framework (or an older one)")
        return dict(backbone)

    @property
    def module_class(self) -> str | None:
        return self.raw.get("module_class")

    @property
    def provenance(self) -> Provenance:
        return checkpoint_provenance(self.raw, self.path)

    @property
    def warm_started_from(self) -> str | None:
        return self.raw.get("warm_started_from") or self.hyper_parameters.get("init_from")

    def module(self):
        """The objective this checkpoint was written by, rebuilt and loaded (eval mode); built once."""
        if self._module is None:
            target = self.module_class
            if not target:
                raise ConfigError(f"{self.path} has no 'module_class' entry: not a checkpoint written by this framework")
            module_name, _, name = target.rpartition(".")
            cls = getattr(importlib.import_module(module_name), name)
            model = cls(**self.hyper_parameters)
            model.load_state_dict(self.raw["state_dict"])
            model.on_load_checkpoint(self.raw)
            self._module = model.eval()
        return self._module

    def chain(self) -> list[dict]:
        """It and every checkpoint its weights were warm-started from, with the speakers each records (None:
        not recorded); a file in the chain that is gone is listed as missing (it cannot be checked)."""
        out, ckpt, visited = [], self, set()
        while True:
            visited.add(str(ckpt.path))
            seen = ckpt.raw.get("seen_speakers")
            out.append({"path": str(ckpt.path), "missing": False, "seen": None if seen is None else sorted(seen),
                        "unknown_from": list(ckpt.raw.get(UNKNOWN_FROM_KEY) or [])})
            nxt = ckpt.warm_started_from
            if not nxt or str(nxt) in visited:
                return out
            if not Path(nxt).is_file():
                out.append({"path": str(nxt), "missing": True, "seen": None, "unknown_from": []})
                return out
            ckpt = read_checkpoint(nxt)


def read_checkpoint(path: str | Path) -> Checkpoint:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _CACHE:
        try:
            raw = torch.load(str(p), map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # not a torch file, or one that needs pickle
            raise ConfigError(f"{p}: cannot read it as a checkpoint with torch.load(weights_only=True): {e}") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: a checkpoint is a dict of weights and settings, this file holds a {type(raw).__name__}")
        while len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = Checkpoint(p.resolve(), raw)
    return _CACHE[key]


def load_embedding_module(ckpt_path: str | Path, map_location: str = "cpu"):
    """Any of our objectives rebuilt from its checkpoint (`read_checkpoint(path).module()`)."""
    return read_checkpoint(ckpt_path).module()


def bundle_encoder(encoder: Mapping[str, Any], checkpoint_override: str | Path | None = None):
    """The EmbeddingModule a head bundle's heads were fitted on, after checking its weights are the recorded ones."""
    from evaluation.head_bundle import BundleError, file_sha256, weights_sha256
    from lightning_modules.embedding_module import EmbeddingModule

    kind = encoder.get("kind")
    if kind == "checkpoint":
        path = Path(checkpoint_override or encoder["checkpoint"]).expanduser()
        if not path.is_file():
            raise BundleError(f"the bundle's encoder checkpoint {path} does not exist; if it was moved, pass "
                              "encoder_ckpt_path=<its new location> (its SHA-256 is checked)")
        actual = file_sha256(path)
        if actual != encoder["sha256"]:
            raise BundleError(f"encoder checkpoint {path} has changed since the heads were fitted: SHA-256 {actual} "
                              f"!= {encoder['sha256']} recorded in the bundle (was training resumed into it?). The "
                              "heads would label embeddings of other weights: re-run evaluate.py ckpt_path=<the "
                              "checkpoint> to fit and export heads for it")
        return read_checkpoint(path).module()
    if kind == "backbone":
        module = EmbeddingModule(backbone=dict(encoder["backbone"])).eval()
        actual = weights_sha256(module.backbone)
        if actual != encoder["weights_sha256"]:
            raise BundleError(f"backbone {encoder['backbone'].get('_target_')} builds weights with SHA-256 {actual}, "
                              f"not the {encoder['weights_sha256']} the heads were fitted on (another weights file "
                              "or package version?); re-run evaluate.py with this backbone to export new heads")
        return module
    raise BundleError(f"bundle encoder kind {kind!r}: expected 'checkpoint' or 'backbone'")


def checkpoint_reference(ckpt_path: str | Path) -> dict:
    """What a head bundle records of the checkpoint its encoder comes from."""
    from evaluation.head_bundle import file_sha256

    ckpt = read_checkpoint(ckpt_path)
    return {"kind": "checkpoint", "checkpoint": str(ckpt.path), "sha256": file_sha256(ckpt.path),
            "size_bytes": ckpt.path.stat().st_size, "module_class": ckpt.module_class,
            "backbone": ckpt.hyper_parameters.get("backbone")}
