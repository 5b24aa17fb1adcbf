"""Builds a backbone from its config so that checkpoints carry everything needed to rebuild them."""
from __future__ import annotations

from typing import Any, Mapping

from lightning_modules.backbones.base import Backbone


def build_backbone(spec: Backbone | Mapping[str, Any]) -> Backbone:
    if isinstance(spec, Backbone):
        return spec
    if not isinstance(spec, Mapping) or "_target_" not in spec:
        raise ValueError(f"backbone must be a Backbone or a config with _target_, got {type(spec).__name__}: {spec!r}")
    from hydra.utils import instantiate

    backbone = instantiate(dict(spec), _convert_="all")
    if not isinstance(backbone, Backbone):
        raise TypeError(f"backbone config {spec['_target_']} built a {type(backbone).__name__}, not a Backbone")
    return backbone
